"""Validate and sample mails: the service the views, the command line and the worker call.

No database transaction or connection is held while a transport talks to a server:
everything is read first, the connection goes back to the pool (db.release), and the
outcome is written in a new, short transaction.
"""
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from flask import current_app
from sqlalchemy import bindparam
from sqlalchemy.exc import InternalError, OperationalError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import select, update

from . import audit, db, delivery, network, senders
from .slots import Busy, slots  # noqa: F401  (Busy: what the views catch)
from .audit import Actor
from .delivery.health import RELEASE_STATE, anything_to_release
from .credentials import (CredentialValues, SecretUnreadable, SidePassword, auth_for, client_cert_from, destination_for,
                          saved_client_cert, saved_receiver, side_password)
from .addresses import normalize_address
from .mail import arrival, destinations, presets
from .mail.deadline import Deadline
from .mail.dns import Resolver
from .mail.config import Sender, ServerConfig
from .mail.envelope import sample_envelope
from .mail.proxy import Proxy, ProxySettings
from .mail.transcripts import TranscriptLog, log_path
from .mail.receiver import Receiver, ReceiverSettings
from .mail.report import DeliveryError, Outcome, Receipt, Report, Step
from .mail.options import MessageOptions
from .mail.transport import send_message, transport_for
from .mailservers import same_credential, settings_of
from .models import MailServer, Portal, SecretPurpose, SenderId, utcnow
from .smime_settings import saved_smime

log = logging.getLogger(__name__)

UNREADABLE = Step("Credentials", Outcome.FAILED,
                  "the stored secret cannot be read with the configured keys",
                  hint="enter the password (or secret) again and save; or restore the key that encrypted it "
                       "(instance/secret-keys or MAILROOM_SECRET_KEYS, newest first)")


@dataclass
class SampleResult:
    receipt: Receipt | None = None
    error: DeliveryError | None = None
    recorded: bool = True  # False: the outcome could not be written (the log has it)


def config_for(portal: Portal, server: MailServer) -> ServerConfig:
    """The saved settings as the transport needs them; SecretUnreadable when the keys cannot read the secret."""
    net = network.for_server(portal, server)
    receiver = saved_receiver(server, server.settings.get("ca_cert", ""))
    config = _config(server, server.protocol, _columns(server), server.settings,
                     auth_for(server.credential, network=net), net, receiver, saved_client_cert(server),
                     transcripts_of(server.id) if server.transcripts else None)
    return replace(config, smime=saved_smime(portal, server))


def draft_config(portal: Portal, server: MailServer | None, columns: dict, settings: dict,
                 credential: CredentialValues, side: list[SidePassword] = ()) -> ServerConfig:
    """Unsaved values: a typed secret, or the stored one where it may serve them
    (credentials.SecretNeeded otherwise; SecretUnreadable when it cannot be read); the same for the
    proxy's and the mail receiver's passwords (`side`)."""
    typed = settings_of(columns["protocol"], settings)
    passwords = {value.purpose: side_password(server, value) for value in side}
    proxy_settings = ProxySettings.from_dict(columns.get("proxy"))
    proxy = Proxy(proxy_settings, passwords.get(SecretPurpose.PROXY, "")) if proxy_settings.enabled else None
    net = replace(network.for_portal(portal), proxy=proxy)
    receiver_settings = ReceiverSettings.from_dict(columns.get("receiver"))
    receiver = Receiver(receiver_settings, passwords.get(SecretPurpose.RECEIVER, ""), settings.get("ca_cert", "")) \
        if receiver_settings.enabled and columns["protocol"] == "smtp" else None
    auth = auth_for(server.credential if server else None, credential, destination_for(typed, credential), net)
    keep = columns.get("transcripts") and server is not None
    return _config(server, columns["protocol"], columns, typed.to_dict(), auth, net, receiver,
                   client_cert_from(passwords.get(SecretPurpose.CLIENT_CERT, "")),
                   transcripts_of(server.id) if keep else None)


def _config(server, protocol, columns, settings, auth, net, receiver=None, client_cert=None,
            transcripts=None) -> ServerConfig:
    sender = Sender(columns["from_address"], columns.get("sender_name", ""), columns.get("reply_to", ""))
    label = columns.get("description") or settings.get("host") or (server.label if server else "")
    smtp = protocol == "smtp"
    return ServerConfig(protocol=protocol, sender=sender, settings=settings_of(protocol, settings),
                        network=net, auth=auth, timeout=float(columns["timeout"]), label=label, receiver=receiver,
                        options=MessageOptions.from_dict(columns.get("options")),
                        client_cert=client_cert if smtp else None, transcripts=transcripts if smtp else None)


def transcripts_of(server_id: int) -> TranscriptLog:
    """Where a server's SMTP transcripts are kept: instance/logs/smtp-server-<id>.log and its rotations."""
    return TranscriptLog(log_path(Path(current_app.instance_path) / "logs", server_id))


def _columns(server: MailServer) -> dict:
    return {"protocol": server.protocol, "description": server.description, "from_address": server.from_address,
            "sender_name": server.sender_name, "reply_to": server.reply_to, "timeout": server.timeout,
            "options": server.options}


def check(actor: Actor, portal: Portal, server: MailServer) -> Report:
    """Validate the saved settings; the server's row keeps the result."""
    try:
        config = config_for(portal, server)
    except SecretUnreadable:
        report = Report(steps=[UNREADABLE])
    else:
        report = _run_check(config, portal, server.id, server.max_connections,
                            (server.credential.provider if server.credential else {}) or {})
    _note_disabled(report, server.enabled)
    _log_check(actor, portal, server, report)
    remember(server, report, "validate")
    return report


def check_draft(actor: Actor, portal: Portal, server: MailServer | None, columns: dict, settings: dict,
                credential: CredentialValues, side: list[SidePassword] = ()) -> Report:
    """Validate values from the form, saved or not; remembered only when they are exactly the saved ones."""
    try:
        config = draft_config(portal, server, columns, settings, credential, side)
    except SecretUnreadable:
        report = Report(steps=[UNREADABLE])
    else:
        report = _run_check(config, portal, server.id if server else None,
                            server.max_connections if server else columns.get("max_connections", 1),
                            credential.provider or {})
    _note_disabled(report, columns.get("enabled", True))
    _log_check(actor, portal, server, report)
    if server is not None and same_credential(server, credential, side) and _same_as_saved(server, columns, config):
        remember(server, report, "validate")
    return report


def _run_check(config: ServerConfig, portal: Portal, server_id: int | None, limit: int, provider: dict) -> Report:
    """The server's check, with the Deliverability section (DNS lookups) asked at the same time in
    another thread (_meanwhile); when the egress policy refuses several of the settings' destinations,
    one step names them all instead, and nothing is connected to. Busy when too many checks run
    already; no database connection is held meanwhile."""
    with slots().hold(portal.id, server_id, limit):
        addresses = addresses_to_check(portal, config)  # read here: the thread has no database
        db.release()
        deliverability = _meanwhile(_deliverability, config, provider, resolver(), addresses)
        refused = destinations.refused_step(config, Deadline(config.timeout))
        report = Report(steps=[refused]) if refused else transport_for(config.protocol).check(config)
        report.sections.append(deliverability.result())
        return report


def _meanwhile(call, *args) -> Future:
    """`call` run in a thread of this app process's pool while the caller goes on; result() waits for
    it (and raises what it raised). The pool keeps its threads (at most one per check the process may
    run, Slots), so a check starts no thread of its own and does not wait for one to start. Made in
    each process at its first check: a pool's threads do not survive a fork (gunicorn --preload)."""
    with _POOL_LOCK:
        pid, pool = current_app.extensions.get("mailroom.meanwhile", (None, None))
        if pid != os.getpid():
            pool = ThreadPoolExecutor(current_app.config["CHECKS_PER_PROCESS"], "mailroom-deliverability")
            current_app.extensions["mailroom.meanwhile"] = (os.getpid(), pool)
    return pool.submit(call, *args)


_POOL_LOCK = threading.Lock()


DELIVERABILITY_SECONDS = 10  # all the DNS lookups of the deliverability section together


def resolver() -> Resolver:
    """The DNS resolver Find settings and the deliverability checks ask (DNS_RESOLVER)."""
    return Resolver.from_setting(current_app.config.get("DNS_RESOLVER"))


SENDER_IDS_CHECKED = 10  # the first alternative sender IDs (by address) whose domains Validate looks up


_SENDER_IDS = (select(SenderId.address).where(SenderId.portal_id == bindparam("portal_id"))
               .order_by(SenderId.address).limit(SENDER_IDS_CHECKED + 1))


def addresses_to_check(portal: Portal, config: ServerConfig) -> list[tuple[str, str, str]]:
    """(label, address, why it is not an address or "") for each address the server's mail carries or
    that receives the portal's notices, and the portal's first SENDER_IDS_CHECKED alternative sender IDs."""
    found = [("From address", config.sender.address), ("Reply-to address", config.sender.reply_to),
             ("Admin mail address", portal.admin_address)]
    sender_ids = db.session().execute(_SENDER_IDS, {"portal_id": portal.id}).scalars().all()
    found += [("Alternative sender ID", address) for address in sender_ids[:SENDER_IDS_CHECKED]]
    checked = []
    for label, address in found:
        if not address:
            continue
        try:
            checked.append((label, normalize_address(address), ""))
        except ValueError as error:
            checked.append((label, address, str(error)))
    return checked


def _deliverability(config: ServerConfig, provider: dict, dns: Resolver,
                    addresses: list[tuple[str, str, str]]) -> tuple[str, list[Step]]:
    """The Deliverability section: what receivers will think of this server's mail (DNS only, nothing
    sent). Runs in another thread (_run_check): no app context, no database."""
    from .mail import deliverability  # checkdmarc, pyspf and dnspython: imported by the first Validate

    host = getattr(config.settings, "host", "") or ""
    preset = presets.for_server(config.protocol, host, provider.get("cloud", ""))
    sending = deliverability.Sending(config.sender.address, config.protocol, host, preset,
                                     preset.service if preset else "")
    steps = deliverability.check(sending, addresses, dns, Deadline(DELIVERABILITY_SECONDS))
    return deliverability.SECTION, steps


def _same_as_saved(server: MailServer, columns: dict, config: ServerConfig) -> bool:
    saved = settings_of(server.protocol, server.settings)
    return (server.protocol == columns["protocol"] and saved == config.settings
            and all(getattr(server, name) == value for name, value in columns.items() if hasattr(server, name))
            and (saved_client_cert(server) is None) == (config.client_cert is None))


def send_sample(actor: Actor, portal: Portal, server: MailServer, recipient: str) -> SampleResult:
    """Send the sample mail through the saved settings at once, from the actor's sender ID if they have
    one in this portal; History and the server's row keep the outcome. When the egress policy refuses
    several of the settings' destinations, one step names them all (as Validate's does) and nothing
    is connected to."""
    result = SampleResult()
    try:
        config = config_for(portal, server)
        own = senders.sender_of(portal, actor.user_id)
        sender = replace(config.sender, address=own) if own else config.sender
        envelope = sample_envelope(sender, recipient, portal.name, server.label, utcnow())
        with slots().hold(portal.id, server.id, server.max_connections):
            db.release()
            refused = destinations.refused_step(config, Deadline(config.timeout))
            if refused:
                raise DeliveryError(Report(steps=[refused]))
            result.receipt = send_message(config, envelope)
    except SecretUnreadable:
        result.error = DeliveryError(Report(steps=[UNREADABLE]))
    except DeliveryError as error:
        result.error = error
    report = (result.receipt or result.error).report
    _note_disabled(report, server.enabled)
    log.info("sample mail portal=%s server=%s to=%s by=%s: %s", portal.slug, server.id, recipient, actor.label,
             result.receipt.reply if result.receipt else result.error)
    try:
        audit.record(actor, "server.sample_sent" if result.receipt else "server.sample_failed",
                     f"“{server.label}”", {"recipient": [None, recipient]}, portal.id)
        remember(server, report, "sample", result.receipt)
    except (OperationalError, InternalError):  # the mail went (or not) all the same: say so
        db.session().rollback()
        result.recorded = False
        log.error("sample mail portal=%s server=%s to=%s: %s, but the database refused to record it",
                  portal.slug, server.id, recipient, "accepted" if result.receipt else "not sent")
    return result


ARRIVAL_SECONDS = 15  # the mail receiver login and reading one header


def read_arrival(portal: Portal, server: MailServer, message_id: str) -> arrival.Arrival | None:
    """How a sample mail arrived in the mailbox of the server's mail receiver login (None: the server
    has none); report.StepFailed in words when the login fails, SecretUnreadable, Busy."""
    config = config_for(portal, server)
    if config.receiver is None:
        return None
    with slots().hold(portal.id, server.id, server.max_connections):
        db.release()
        return arrival.read_back(config.receiver, config.network, Deadline(ARRIVAL_SECONDS), message_id)


_REMEMBER = (update(MailServer).where(MailServer.id == bindparam("server_id"))
             .values({name: bindparam(name) for name in ("last_check_at", "last_check_ok", "last_check_kind",
                                                         "last_check_summary")})
             .returning(*RELEASE_STATE).execution_options(synchronize_session=False))


def remember(server: MailServer, report: Report, kind: str, receipt: Receipt | None = None) -> None:
    """Keep the outcome of a check or sample mail of the saved settings on the server's row."""
    failure = report.failure
    if failure:
        summary = f"{failure.name}: {failure.summary}"
    elif kind == "sample":
        summary = f"Sample mail accepted: {receipt.reply}" if receipt else "Sample mail accepted"
    else:
        summary = "All checks passed"
    values = {"last_check_at": utcnow(), "last_check_ok": report.ok, "last_check_kind": kind,
              "last_check_summary": summary[:500]}
    state = db.session().execute(_REMEMBER, {"server_id": server.id, **values}).first()
    db.session().commit()
    release = report.ok and anything_to_release(state)
    for name, value in values.items():  # known on the loaded row too, not a change to write again
        set_committed_value(server, name, value)
    if release:
        delivery.release_held(server, f"a {kind} of its settings passed")


def _note_disabled(report: Report, enabled: bool) -> None:
    if not enabled:
        report.notes.append("This server is disabled: Validate and sample mails still use it, to try it "
                            "before enabling it.")


def _log_check(actor: Actor, portal: Portal, server: MailServer | None, report: Report) -> None:
    failure = report.failure
    log.info("validate portal=%s server=%s by=%s: %s", portal.slug, server.id if server else "new", actor.label,
             f"failed at {failure.name}: {failure.summary}" if failure else "all checks passed")
