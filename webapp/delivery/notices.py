"""Admin notices: mail to the portal's admin address (Portal.admin_address) when failover
starts and ends, when mail is held, when an OAuth grant needs re-authorization, when held
mail expires, and a daily summary of failed mail.

At most one notice of each kind per portal per DELIVERY_NOTICE_MINUTES (decided under the
portal's lock, so two workers do not both send one). A notice is itself an outbox row
(source "notice") that the worker delivers like any mail, and so never through a server that
is failing or held: the worker uses neither. A portal without an admin address gets no
notice (the log still says what happened). When none of the portal's servers can send (all held,
failing or disabled), the notice goes through the system-mail server (systemmail.py), pinned to it.

Call these after committing: they commit their own work.
"""
import logging
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import func, select

from .. import db
from ..mail.config import Sender
from ..mail.envelope import Envelope
from ..mail.message import build_message
from ..models import DeliveryNotice, MailServer, MailState, NoticeKind, OutboundMail, Portal, utcnow
from .routing import route
from .settings import DeliverySettings
from .times import aware

log = logging.getLogger(__name__)
SUBJECT = "[Mailroom] {portal}: {what}"
SUMMARY_LINES = 20


def failover_started(portal: Portal, primary: str, via: str, reason: str) -> None:
    _notify(portal, NoticeKind.FAILOVER_STARTED, f"mail goes via the alternate server “{via}”",
            f"The primary mail server “{primary}” of {portal.name} does not work:\n\n  {reason}\n\n"
            f"Mail goes via “{via}” meanwhile. Mailroom checks “{primary}” regularly and takes it back as soon "
            "as it works again; you will get a notice then.")


def failover_ended(portal: Portal, primary: str) -> None:
    _notify(portal, NoticeKind.FAILOVER_ENDED, f"mail goes via “{primary}” again",
            f"The primary mail server “{primary}” of {portal.name} works again: mail goes through it again.")


def held(portal: Portal, what: str, reason: str) -> None:
    _notify(portal, NoticeKind.HELD, what,
            f"Mail of {portal.name} cannot go through one of its servers:\n\n  {reason}\n\n"
            "Where another server works, the mail goes through it; otherwise it is held, nothing is lost. Held "
            "mail goes out by itself once the server is fixed: save its settings with the right credentials, "
            "authorize again (OAuth), or run Validate. Held mail fails when it reaches the end of its lifetime.")


def reauthorization_needed(server_id: int, reason: str) -> None:
    """Hook for grants.mark_needs_reauthorization: a grant only a person can renew."""
    server = db.session().get(MailServer, server_id)
    portal = db.session().get(Portal, server.portal_id) if server else None
    if portal is None:
        return
    _notify(portal, NoticeKind.REAUTHORIZATION, f"“{server.label}” needs a new OAuth authorization",
            f"The OAuth authorization of the mail server “{server.label}” of {portal.name} no longer works:\n\n"
            f"  {reason}\n\nOpen the server in Mailroom and click Authorize (or send the mailbox owner a consent "
            "link). Its mail is held or goes via another server until then.")


def held_expired(portal: Portal, count: int, lifetime: timedelta) -> None:
    _notify(portal, NoticeKind.HELD_EXPIRED, f"{count} held message(s) failed",
            f"{count} message(s) of {portal.name} were held for {_duration(lifetime)}, the longest Mailroom keeps "
            "mail, and failed. The Mail Queue shows them; they can be requeued once the server is fixed.")


def daily_summary(settings: DeliverySettings, now: datetime | None = None) -> int:
    """For each portal with failed mail since its last summary (at most a day back): a summary. How many."""
    now = now or utcnow()
    session = db.session()
    portal_ids = session.execute(select(OutboundMail.portal_id).where(
        OutboundMail.state == MailState.FAILED, OutboundMail.updated_at >= now - timedelta(days=1),
        OutboundMail.source != "notice").distinct()).scalars().all()
    session.commit()
    sent = 0
    for portal_id in portal_ids:
        portal = session.get(Portal, portal_id)
        if portal is not None and portal.admin_address and _summary(portal, now):
            sent += 1
    return sent


def _summary(portal: Portal, now: datetime) -> bool:
    session = db.session()
    since = session.execute(select(func.max(DeliveryNotice.at)).where(
        DeliveryNotice.portal_id == portal.id, DeliveryNotice.kind == NoticeKind.SUMMARY)).scalar()
    since = max(aware(since) if since else now - timedelta(days=1), now - timedelta(days=1))
    failed = session.execute(select(OutboundMail).where(
        OutboundMail.portal_id == portal.id, OutboundMail.state == MailState.FAILED,
        OutboundMail.updated_at >= since, OutboundMail.source != "notice").order_by(OutboundMail.id)).scalars().all()
    session.commit()
    if not failed:
        return False
    lines = [f"  {aware(m.updated_at):%Y-%m-%d %H:%M} UTC  to {m.to_summary or '?'}  “{m.subject}”\n"
             f"      {m.last_error or 'no reason recorded'}" for m in failed[:SUMMARY_LINES]]
    more = f"\n  … and {len(failed) - SUMMARY_LINES} more (see the Mail Queue)" if len(failed) > SUMMARY_LINES else ""
    return _notify(portal, NoticeKind.SUMMARY, f"{len(failed)} message(s) failed",
                   f"{len(failed)} message(s) of {portal.name} failed since {since:%Y-%m-%d %H:%M} UTC:\n\n"
                   + "\n".join(lines) + more + "\n", now=now) is not None


def _notify(portal: Portal, kind: NoticeKind, what: str, text: str, now: datetime | None = None) -> int | None:
    """Queue the notice unless one of its kind went out lately; the new message's id, or None."""
    if not portal.admin_address:
        log.info("portal %s has no admin address for the notice: %s", portal.slug, what)
        return None
    settings: DeliverySettings = current_app.extensions["mailroom.delivery"].settings
    session = db.session()
    now = now or utcnow()
    db.lock_portal(portal)
    latest = session.execute(select(func.max(DeliveryNotice.at)).where(
        DeliveryNotice.portal_id == portal.id, DeliveryNotice.kind == kind)).scalar()
    if latest is not None and aware(latest) > now - settings.notice_interval:
        session.commit()
        return None
    subject = SUBJECT.format(portal=portal.name, what=what)
    system = _system_server(portal)
    sender = Sender(system.from_address, "Mailroom") if system else _sender(portal)
    try:
        mail = accept_notice(portal, sender, subject, text + FOOTER, settings, now)
        if system:
            mail.pinned_server_id = system.id
    except ValueError as error:  # an admin address that is not one (saved before it was checked)
        session.rollback()
        log.warning("notice portal=%s %s not sent: %s", portal.slug, kind, error)
        return None
    session.add(DeliveryNotice(portal_id=portal.id, kind=kind, at=now, mail_id=mail.id, subject=subject[:300]))
    session.commit()
    log.info("notice to the admins of %s: %s (mail %s)", portal.slug, what, mail.id)
    current_app.extensions["mailroom.delivery"].wake([mail.id])
    return mail.id


FOOTER = "\n-- \nMailroom sends this to the portal's admin address (portal Settings).\n"


def accept_notice(portal: Portal, sender: Sender, subject: str, text: str, settings: DeliverySettings,
                  now: datetime) -> OutboundMail:
    """The notice as an outbox row, added to the session (flushed, not committed). Stands in
    for outbox.accept, the single way into the outbox, until that exists."""
    envelope = Envelope.of(build_message(sender, [portal.admin_address], subject, text, now=now))
    mail = OutboundMail(
        portal_id=portal.id, state=MailState.QUEUED, source="notice", submitted_by="Mailroom",
        message_id=envelope.message_id, mail_from=envelope.mail_from,
        recipients=[{"address": r, "state": "pending", "code": None, "reply": ""} for r in envelope.recipients],
        subject=subject[:300], to_summary=", ".join(envelope.recipients)[:500], size=len(envelope.raw),
        raw=envelope.raw, created_at=now, updated_at=now, next_attempt_at=now, expires_at=now + settings.lifetime)
    db.session().add(mail)
    db.session().flush()
    return mail


def _system_server(portal: Portal) -> MailServer | None:
    """The system-mail server, when none of the portal's own servers can send now."""
    from .. import systemmail  # systemmail builds on the outbox, which imports this package

    servers = list(db.session().execute(select(MailServer).where(MailServer.portal_id == portal.id)
                                        .order_by(MailServer.position, MailServer.id)).unique().scalars())
    return systemmail.fallback_for(portal, route(portal.delivery_policy, servers).candidates)


def _sender(portal: Portal) -> Sender:
    """From the server most likely to carry the notice (its relay may accept only its own address)."""
    servers = list(db.session().execute(select(MailServer).where(MailServer.portal_id == portal.id)
                                        .order_by(MailServer.position, MailServer.id)).unique().scalars())
    way = route(portal.delivery_policy, servers)
    server = next(iter(way.candidates), None) or way.primary or next(iter(servers), None)
    if server is None or not server.from_address:
        return Sender(portal.admin_address, "Mailroom")
    return Sender(server.from_address, "Mailroom")


def _duration(lifetime: timedelta) -> str:
    hours = lifetime.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} hours"
