"""Delivering claimed messages: the one place where queued mail leaves Mailroom.

One delivery job (a Run) claims a batch of due messages of one portal (its message first; 1, 4,
16, ... up to CLAIM_BATCH in one statement), sends each and records its outcome, and goes on with the next
batch of the same portal over the connections it opened, up to DELIVERY_BATCH messages:
consecutive messages to a server share one connection, and so do the thread's consecutive jobs
(kept.py: its connections are kept for its next job, a few seconds). The portal and its servers
are read once per batch. Messages claimed and not tried when the run ends early (stopping, no connection left
open) are given back at once; while they wait, their lease is renewed.

For each message, the servers of its route (routing.py) are tried in order, within the same
attempt, until one takes it:

- the server took it: it is marked sent at once (recipients it refused for now stay pending
  and are retried alone, with the same bytes; those it refused for good are failed);
- a temporary failure (connection, TLS, timeout, 421, 4xx, throttling): the next server; a
  failure of the server itself (not of this message, not throttling) marks it failing;
- the credentials were refused: the server is held, the next server;
- a permanent refusal of the message (5xx to MAIL FROM, RCPT TO, DATA): it fails at once with
  the server's words, no other server is tried;
- no free connection or send rate (capacity.py): failover waits for a slot of its primary,
  spread tries the next server.

When no server took it, the message is deferred (backoff.py, never sooner than the service
asked, never past its lifetime), waits for a slot, waits for a failing server's probe, or is
held (attempts not counted) until the credentials are fixed. Past its lifetime it fails.

Nothing is sent inside a database transaction, and nothing is sent without the claim: the
claim is confirmed before each server is tried (extended when it might not outlast the send),
and a message whose claim was lost is left to the worker that has it now.
"""
import logging
import os
import re
import socket
import threading
from datetime import datetime, timedelta
from time import monotonic

from flask import current_app
from sqlalchemy import select

from .. import db
from ..checks import config_for
from ..credentials import SecretUnreadable
from ..mail.envelope import Envelope
from ..mail.report import DeliveryError, Receipt
from ..mail.transport import open_connection
from ..models import DeliveryPolicy, MailServer, MailState, OutboundMail, Portal, utcnow
from . import capacity, claims, health, notices, outcomes
from .backoff import retry_delay
from .capacity import Busy
from .kept import KeptConnections, OpenConnection, close
from .outcomes import FAILED, PENDING, SENT, Tried
from .routing import Route, held_reason, is_held, route
from .settings import DeliverySettings
from .times import aware

log = logging.getLogger(__name__)

CLAIM_BATCH = 50  # messages a run claims in one statement (their lease renewed while they wait)
CLAIM_GROWTH = 4  # each batch of a run this many times the one before, up to CLAIM_BATCH
MESSAGE_STEPS = frozenset({"Message", "MAIL FROM", "RCPT TO", "DATA"})  # failures there concern the message
UNREADABLE = "the stored secret cannot be read with the configured keys: enter it again and save"


def worker_name() -> str:
    """Who holds a claim or a connection: host, process and thread."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{threading.current_thread().name}"[:100]


def server_failed(error: DeliveryError) -> bool:
    """Whether a temporary failure says the server is out of order, rather than that this
    message may go later (a 4xx to it) or that the service asks to slow down (throttling)."""
    if error.throttled or error.retry_after is not None:
        return False
    return error.step not in MESSAGE_STEPS or error.code == 421


class Run:
    def __init__(self, settings: DeliverySettings, owner: str | None = None, stopping: threading.Event | None = None,
                 kept: KeptConnections | None = None):
        self.settings = settings
        self.owner = owner or worker_name()
        self.stopping = stopping
        self.kept = kept  # where the connections go when the run ends (None: closed)
        self.idle: dict[int, OpenConnection] = kept.take() if kept is not None else {}  # kept, not used yet
        self.open: dict[int, OpenConnection] = {}  # server id -> its connection
        self.waiting: list[OutboundMail] = []  # claimed in the current batch, not tried yet
        self.claimed_at = 0.0  # monotonic(): when the waiting messages' lease was last written
        self.claim_size = 1  # grows by CLAIM_GROWTH at each batch up to CLAIM_BATCH
        self.servers: dict[tuple, tuple[Portal, list[MailServer]]] = {}  # read once per batch
        self.writer = outcomes.Writer()  # the run's outcomes go through a connection of its own

    def run(self, mail_id: int | None = None) -> bool:
        """Deliver `mail_id` (or else the next due message), then more of its portal over the
        same connections, claimed in batches of 1, 4, 16, ... up to CLAIM_BATCH (so that a few
        messages due at once are shared among the worker's threads, and a long drain costs one
        claim per CLAIM_BATCH). True when the run's DELIVERY_BATCH was full (more may be due: go
        on in a new job)."""
        self._claim(self.settings.batch, mail_id=mail_id)
        done = 0
        try:
            while self.waiting:
                mail = self.waiting.pop(0)
                self.deliver(mail)
                done += 1
                if not self.open or (self.stopping is not None and self.stopping.is_set()):
                    return False
                if done >= self.settings.batch:
                    return True
                if self.waiting:
                    self._keep_waiting()
                else:
                    self._claim(self.settings.batch - done, portal_id=mail.portal_id)
        finally:
            if self.waiting:
                db.session().rollback()  # what an error left half done (every outcome commits where it is written)
                claims.give_back(self.waiting, self.owner)
                self.waiting = []
            self.writer.close()
            self._let_go()
        return False

    def _claim(self, room: int, mail_id: int | None = None, portal_id: int | None = None) -> None:
        """The next batch: its messages, and the portal and its servers read again for it (an
        admin's change to them takes effect here, or at a connection's version check)."""
        self.waiting = claims.claim_batch(self.owner, self.settings.lease, min(self.claim_size, room), mail_id,
                                          portal_id)
        self.claimed_at = monotonic()
        self.claim_size = min(self.claim_size * CLAIM_GROWTH, CLAIM_BATCH)
        self.servers.clear()

    def _keep_waiting(self) -> None:
        """Renew the lease of the messages waiting in the batch before a third of it has passed, so
        that no sweep takes them from a worker that is alive."""
        if monotonic() - self.claimed_at < self.settings.lease / 3:
            return
        self.waiting = claims.extend_all(self.waiting, self.owner, utcnow() + timedelta(seconds=self.settings.lease))
        self.claimed_at = monotonic()

    def close(self) -> None:
        self.writer.close()
        for server_id in list(self.open):
            self._drop(server_id)
        for server_id in list(self.idle):
            close(self.idle.pop(server_id))

    def _let_go(self) -> None:
        """The run ends: its connections are kept for the thread's next run (their leases renewed
        when a third has passed), or closed when nothing keeps them or the worker stops."""
        if self.kept is None or (self.stopping is not None and self.stopping.is_set()):
            return self.close()
        for server_id, opened in list(self.open.items()):
            if monotonic() - opened.renewed > opened.lease_seconds / 3:
                if not capacity.renew_connection(opened.lease_id, opened.lease_seconds):
                    self._drop(server_id)
                    continue
                opened.renewed = monotonic()
        self.kept.keep(self.idle | self.open)
        self.idle, self.open = {}, {}

    def deliver(self, mail: OutboundMail) -> None:
        """One attempt for one claimed message: its outcome is recorded before this returns."""
        attempt = _Attempt(mail, self.settings, self.writer)
        if mail.raw is None:
            return attempt.fail(self.owner, "the message's body was deleted (retention) before it could be sent")
        if attempt.now >= attempt.expires:
            return attempt.fail(self.owner, f"its lifetime of {_words(self.settings.lifetime)} ran out"
                                + (f"; the last error: {mail.last_error}" if mail.last_error else ""))
        portal, servers = self._servers_for(mail)
        way = route(portal.delivery_policy, servers, turn=mail.id)
        if not way.candidates:
            return self._wait(attempt, portal, way)
        for server in way.candidates:
            if not attempt.pending():
                break
            if not self._keep_claim(mail, server):
                log.warning("mail %s: the claim was lost to another worker; leaving it", mail.id)
                return
            accepted = self._try(attempt, portal, server)
            if accepted is not None or attempt.final:
                break
            if attempt.busy and portal.delivery_policy != DeliveryPolicy.SPREAD:
                break  # failover waits for a slot of its server rather than moving on
        attempt.conclude(self.owner)
        primary = way.primary
        if (attempt.via is not None and portal.delivery_policy != DeliveryPolicy.SPREAD and primary is not None
                and attempt.via.id != primary.id):
            reason = attempt.down.get(primary.id) or _out_of_order(primary)
            if reason:
                health.start_failover(portal, primary, attempt.via, reason)

    def _servers_for(self, mail: OutboundMail) -> tuple[Portal, list[MailServer]]:
        """The message's portal and the servers it may go through, read once per batch (this run's
        own marks, failing or held, are written into them as it makes them: health._known)."""
        key = (mail.portal_id, mail.pinned_server_id)
        if key not in self.servers:
            session = db.session()
            portal = session.get(Portal, mail.portal_id, populate_existing=True)
            which = (MailServer.id == mail.pinned_server_id) if mail.pinned_server_id is not None \
                else (MailServer.portal_id == mail.portal_id)  # system mail: only the system-mail server
            servers = list(session.execute(select(MailServer).where(which)
                                           .order_by(MailServer.position, MailServer.id)
                                           .execution_options(populate_existing=True)).unique().scalars())
            if mail.pinned_server_id is not None and servers and servers[0].portal_id != portal.id:
                portal = session.get(Portal, servers[0].portal_id, populate_existing=True)  # its network, its notices
            db.release()
            self.servers[key] = portal, servers
        return self.servers[key]

    def _try(self, attempt: "_Attempt", portal: Portal, server: MailServer) -> Receipt | None:
        try:
            opened = self._connection(portal, server)
        except SecretUnreadable:
            attempt.credentials_refused(server, UNREADABLE)
            health.hold(server, portal, UNREADABLE)
            return None
        if isinstance(opened, Busy):
            attempt.busy.append(opened)
            return None
        reservation = None
        if capacity.has_rate(server):
            reservation = capacity.reserve_send(server, attempt.mail.id, self.owner)
            if isinstance(reservation, Busy):
                attempt.busy.append(reservation)
                return None
        envelope = attempt.envelope()
        started, clock = utcnow(), monotonic()
        try:
            receipt = opened.connection.send(envelope)
        except DeliveryError as error:
            opened.used = monotonic()
            db.release()  # a token step may have read the credential
            attempt.refused(server, error, started, monotonic() - clock, reservation)
            if error.credentials:
                self._drop(server.id)
                health.hold(server, portal, str(error))
            elif error.temporary and server_failed(error):
                self._drop(server.id)
                health.mark_failing(server, str(error))
            return None
        opened.used = monotonic()
        db.release()
        attempt.accepted(server, receipt, started, monotonic() - clock, reservation)
        return receipt

    def _connection(self, portal: Portal, server: MailServer) -> OpenConnection | Busy:
        version = (server.version, server.credential.revision if server.credential else 0)
        if server.id in self.idle:
            self.open[server.id] = self.idle.pop(server.id)  # kept from the thread's last run
        opened = self.open.get(server.id)
        if opened is not None and opened.version != version:
            self._drop(server.id)  # an admin changed the server meanwhile
            opened = None
        seconds = self._lease_for(server)
        if opened is not None:
            if monotonic() - opened.renewed > seconds / 3:
                if not capacity.renew_connection(opened.lease_id, seconds):
                    self._drop(server.id)
                    return self._connection(portal, server)
                opened.renewed = monotonic()
            return opened
        lease = capacity.take_connection(server, self.owner, seconds, self.settings.busy_retry)
        if isinstance(lease, Busy):
            return lease
        try:
            config = config_for(portal, server)
        except SecretUnreadable:
            capacity.give_back(lease)
            raise
        db.release()
        opened = self.open[server.id] = OpenConnection(open_connection(config), lease, seconds, version)
        return opened

    def _drop(self, server_id: int) -> None:
        opened = self.open.pop(server_id, None)
        if opened is not None:
            close(opened)

    def _keep_claim(self, mail: OutboundMail, server: MailServer) -> bool:
        """Confirm the claim right before a server is tried, and make it outlast the send. A lease
        this run took that outlasts a send to `server` already (the first server of a message
        just claimed) needs no write: nobody takes a message from its worker before the lease
        runs out (the sweep; an admin's actions leave messages being sent alone)."""
        now = utcnow()
        if (mail.lease_owner == self.owner and mail.lease_until is not None
                and aware(mail.lease_until) >= now + timedelta(seconds=server.timeout + capacity.LEASE_MARGIN)):
            return True
        return claims.extend(mail, self.owner, now + timedelta(seconds=self._lease_for(server)))

    def _lease_for(self, server: MailServer) -> float:
        return capacity.lease_seconds(server, self.settings.lease)

    def _wait(self, attempt: "_Attempt", portal: Portal, way: Route) -> None:
        """No server may take mail now: wait for the probe of a failing one, else hold."""
        mail = attempt.mail
        if way.failing:
            server = way.failing[0]
            since = aware(server.failing_since)
            reason = (f"waiting for “{server.label}”, which fails since {since:%Y-%m-%d %H:%M} UTC: "
                      f"{server.failing_reason}; Mailroom checks it every {self.settings.probe:g} s and sends as soon "
                      "as it works")
            at = min(attempt.now + timedelta(seconds=retry_delay(mail.attempts + 1, self.settings)), attempt.expires)
            claims.put_back(mail, self.owner, at, last_error=reason[:1000], server_id=server.id, last_code=None,
                            expires_at=attempt.expires)
            return
        if way.held:
            server = way.held[0]
            reason = f"“{server.label}” refuses its credentials: {held_reason(server)}"
        else:
            server, reason = None, "the portal has no enabled mail server"
        outcomes.finish(mail, self.owner, [], self.writer, state=MailState.HELD,
                        last_error=f"held: {reason}"[:1000], server_id=server.id if server else mail.server_id,
                        expires_at=attempt.expires)
        log.info("mail %s held: %s", mail.id, reason)
        notices.held(portal, "mail is held", reason)


class _Attempt:
    """One attempt of one message: its recipients' outcomes and the servers tried so far."""

    def __init__(self, mail: OutboundMail, settings: DeliverySettings, writer: outcomes.Writer | None = None):
        self.mail, self.settings, self.writer = mail, settings, writer
        self.now = utcnow()
        self.expires = aware(mail.expires_at) or aware(mail.created_at) + settings.lifetime
        self.recipients = [dict(r) for r in mail.recipients]
        self.tried: list[Tried] = []
        self.busy: list[Busy] = []
        self.down: dict[int, str] = {}  # servers found out of order in this attempt: why
        self.deferred: DeliveryError | None = None  # the last temporary failure
        self.held_reason = ""  # the last refusal of credentials
        self.via: MailServer | None = None  # the server that took it
        self.final = False  # failed for good: try no other server

    def pending(self) -> list[str]:
        return [r["address"] for r in self.recipients if r.get("state", PENDING) == PENDING]

    def envelope(self) -> Envelope:
        mail = self.mail
        return Envelope(mail_from=mail.mail_from, recipients=tuple(self.pending()), raw=mail.raw,
                        message_id=mail.message_id)

    def _set(self, address: str, state: str, code: int | None, reply: str) -> None:
        for recipient in self.recipients:
            if recipient["address"] == address and recipient.get("state", PENDING) == PENDING:
                recipient.update(state=state, code=code, reply=reply[:500])

    def accepted(self, server: MailServer, receipt: Receipt, started: datetime, elapsed: float,
                 reservation: int | None) -> None:
        outcomes_ = {r.address: r for r in receipt.recipients}
        for address in self.pending():
            outcome = outcomes_.get(address)
            if outcome is None or outcome.accepted:
                self._set(address, SENT, outcome.code if outcome else _code(receipt.reply), receipt.reply)
            else:
                self._set(address, PENDING if outcome.temporary else FAILED, outcome.code, outcome.reply)
        self.tried.append(Tried(server.id, server.label, started, elapsed, "sent", _code(receipt.reply),
                                receipt.reply, reservation))
        self.via = server

    def refused(self, server: MailServer, error: DeliveryError, started: datetime, elapsed: float,
                reservation: int | None) -> None:
        words = str(error)
        for outcome in error.recipients:
            if not outcome.accepted and not outcome.temporary:
                self._set(outcome.address, FAILED, outcome.code, outcome.reply)
        if error.credentials:
            self.tried.append(Tried(server.id, server.label, started, elapsed, "held", error.code, words, reservation))
            self.held_reason = f"“{server.label}” refuses its credentials: {words}"
            self.down[server.id] = words
            return
        if not error.temporary:
            self.tried.append(Tried(server.id, server.label, started, elapsed, "failed", error.code, words,
                                    reservation))
            for address in self.pending():
                self._set(address, FAILED, error.code, words)
            self.final = True
            return
        self.tried.append(Tried(server.id, server.label, started, elapsed, "deferred", error.code, words,
                                reservation))
        self.deferred = error
        if server_failed(error):
            self.down[server.id] = words

    def credentials_refused(self, server: MailServer, words: str) -> None:
        self.tried.append(Tried(server.id, server.label, utcnow(), 0.0, "held", None, words))
        self.held_reason = f"“{server.label}” refuses its credentials: {words}"
        self.down[server.id] = words

    def fail(self, owner: str, reason: str) -> None:
        for address in self.pending():
            self._set(address, FAILED, None, reason)
        outcomes.finish(self.mail, owner, [], self.writer, state=MailState.FAILED, recipients=self.recipients,
                        last_error=reason[:1000], expires_at=self.expires)
        log.info("mail %s failed: %s", self.mail.id, reason)

    def conclude(self, owner: str) -> None:
        """Write the outcome of the servers tried."""
        mail, now = self.mail, utcnow()
        last = self.tried[-1] if self.tried else None
        values = dict(recipients=self.recipients, expires_at=self.expires)
        if self.tried:
            values.update(attempts=mail.attempts + 1, last_attempt_at=now, server_id=last.server_id)
        if self.via is not None and mail.sent_at is None:
            values["sent_at"] = now
        pending = self.pending()
        states = {r.get("state", PENDING) for r in self.recipients}
        if not pending:
            state = MailState.SENT if SENT in states else MailState.FAILED
            failed = [r for r in self.recipients if r.get("state") == FAILED]
            error = "" if state == MailState.SENT and not failed else (
                f"{len(failed)} recipient(s) refused: {failed[0]['reply']}" if state == MailState.SENT
                else last.reply if last else "the message has no recipients")
            values.update(state=state, last_error=error[:1000], last_code=last.code if last else None)
            outcomes.finish(mail, owner, self.tried, self.writer, **values)
            log.info("mail %s %s via %s: %s", mail.id, state, last.server_label if last else "-",
                     last.reply if last else "")
            return
        if self.via is not None or self.deferred is not None:
            failures = mail.attempts + 1
            retry_after = self.deferred.retry_after if self.deferred is not None else None
            delay = retry_delay(failures, self.settings, retry_after)
            at = min(self.busy_until() or now + timedelta(seconds=delay), self.expires)
            reason = (self._refused_for_now() if self.via is not None else str(self.deferred))
            values.update(state=MailState.QUEUED, next_attempt_at=at, last_error=reason[:1000],
                          last_code=last.code if last else None)
            outcomes.finish(mail, owner, self.tried, self.writer, **values)
            log.info("mail %s deferred until %s: %s", mail.id, at.strftime("%H:%M:%S"), reason)
            return
        if self.busy:
            at = min(self.busy_until(), self.expires)
            if self.tried:  # a server refused the credentials, another one was busy
                values.update(state=MailState.QUEUED, next_attempt_at=at, last_error=self.busy[0].reason)
                waiting = outcomes.finish(mail, owner, self.tried, self.writer, **values)
            else:
                waiting = claims.put_back(mail, owner, at, last_error=f"waiting: {self.busy[0].reason}"[:1000])
            if waiting:  # the runs holding the connections may end before it is due
                delivery_queue().wake_at(mail.id, aware(at))
            return
        reason = self.held_reason or "no server can take it"
        values.pop("attempts", None)  # held mail keeps its attempts
        values.update(state=MailState.HELD, last_error=f"held: {reason}"[:1000], last_code=last.code if last else None)
        outcomes.finish(mail, owner, self.tried, self.writer, **values)
        log.info("mail %s held: %s", mail.id, reason)

    def busy_until(self) -> datetime | None:
        return min((b.until for b in self.busy), default=None)

    def _refused_for_now(self) -> str:
        later = [r for r in self.recipients if r.get("state", PENDING) == PENDING]
        return f"{len(later)} recipient(s) refused for now: {later[0].get('reply', '')}" if later else ""


def delivery_queue():
    return current_app.extensions["mailroom.delivery"]


def _out_of_order(server: MailServer) -> str:
    """Why a server the route skipped takes no mail, or "" when it would."""
    if is_held(server):
        return held_reason(server)
    return server.failing_reason if server.failing_since is not None else ""


def _code(reply: str) -> int | None:
    match = re.match(r"\s*(\d{3})\b", reply or "")
    return int(match.group(1)) if match else None


def _words(period: timedelta) -> str:
    hours = period.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} hours"
