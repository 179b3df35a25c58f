"""A server's delivery health and the portal's failover, written by the worker without
touching the server's version (an open edit form does not become stale):

- failing (failing_since, failing_reason): it failed temporarily (connection, TLS, timeout,
  421, a server-side 4xx). Mail skips it; a probe (Validate's check) tries it every
  DELIVERY_PROBE_SECONDS and takes it back when it passes; mail that waited for it is due at once.
- held (held_since, held_reason): it refused its credentials. Mail skips it, and is held
  when no other server can take it, until release_held(): credentials saved, a new consent,
  or a check that passed.
- failover (Portal.failover_since, failover_reason): mail goes via an alternate because the
  primary (the first enabled server) is failing or held; ends when the primary works again.
"""
import logging
from datetime import timedelta

from flask import current_app
from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.orm.attributes import set_committed_value

from .. import db
from ..models import MailServer, MailState, OutboundMail, Portal, utcnow
from . import capacity, notices
from .capacity import Busy
from .routing import is_held, route

log = logging.getLogger(__name__)


def mark_failing(server: MailServer, reason: str) -> None:
    session = db.session()
    now = utcnow()
    session.execute(update(MailServer).where(MailServer.id == server.id).values(
        failing_since=func.coalesce(MailServer.failing_since, now), failing_reason=reason[:500])
        .execution_options(synchronize_session=False))
    session.commit()
    if server.failing_since is None:
        log.warning("server %s (%s) is failing: %s", server.id, server.label, reason)
    _known(server, failing_since=server.failing_since or now, failing_reason=reason[:500])


def hold(server: MailServer, portal: Portal, reason: str) -> None:
    """The server refused its credentials: it takes no mail until an admin fixes them."""
    session = db.session()
    newly = session.execute(update(MailServer).where(MailServer.id == server.id, MailServer.held_since.is_(None))
                            .values(held_since=utcnow(), held_reason=reason[:500])
                            .execution_options(synchronize_session=False)).rowcount == 1
    session.commit()
    _known(server, held_since=server.held_since or utcnow(), held_reason=server.held_reason or reason[:500])
    if newly:
        log.warning("server %s (%s) is held: %s", server.id, server.label, reason)
        notices.held(portal, f"“{server.label}” refuses its credentials",
                     f"“{server.label}” refuses its credentials: {reason}")


def start_failover(portal: Portal, primary: MailServer, via: MailServer, reason: str) -> None:
    session = db.session()
    newly = session.execute(update(Portal).where(Portal.id == portal.id, Portal.failover_since.is_(None)).values(
        failover_since=utcnow(), failover_reason=f"“{primary.label}”: {reason}"[:500])
        .execution_options(synchronize_session=False)).rowcount == 1
    session.commit()
    if newly:
        log.warning("portal %s: failover to %s (%s)", portal.slug, via.label, reason)
        notices.failover_started(portal, primary.label, via.label, reason)


def end_failover_if_primary_works(portal: Portal) -> bool:
    """Take the primary back when it is usable again (or no alternate is used any more)."""
    session = db.session()
    servers = _servers(portal)
    primary = route(portal.delivery_policy, servers).primary
    if primary is not None and (is_held(primary) or primary.failing_since is not None):
        session.commit()
        return False
    ended = session.execute(update(Portal).where(Portal.id == portal.id, Portal.failover_since.is_not(None))
                            .values(failover_since=None, failover_reason="")
                            .execution_options(synchronize_session=False)).rowcount == 1
    session.commit()
    if ended and primary is not None:
        log.info("portal %s: back to the primary %s", portal.slug, primary.label)
        notices.failover_ended(portal, primary.label)
    return ended


def probe(server_id: int, owner: str, settings) -> bool | None:
    """Check a failing server (as Validate does, nothing sent); take it back when it passes.
    None when it was not probed (not failing any more, probed lately by another worker, busy)."""
    from ..checks import config_for, remember
    from ..credentials import SecretUnreadable
    from ..mail.transport import transport_for

    session = db.session()
    now = utcnow()
    claimed = session.execute(update(MailServer).where(
        MailServer.id == server_id, MailServer.enabled.is_(True), MailServer.failing_since.is_not(None),
        MailServer.held_since.is_(None),
        or_(MailServer.last_check_at.is_(None), MailServer.last_check_at < now - timedelta(seconds=settings.probe / 2)))
        .values(last_check_at=now).execution_options(synchronize_session=False)).rowcount == 1
    session.commit()
    if not claimed:
        return None
    server = session.get(MailServer, server_id, populate_existing=True)
    portal = session.get(Portal, server.portal_id)
    lease = capacity.take_connection(server, owner, capacity.lease_seconds(server, settings.lease),
                                     settings.busy_retry)
    if isinstance(lease, Busy):
        return None
    try:
        try:
            config = config_for(portal, server)
        except SecretUnreadable:
            hold(server, portal, "the stored secret cannot be read with the configured keys")
            return False
        db.release()
        report = transport_for(server.protocol).check(config)
    finally:
        capacity.give_back(lease)
    remember(server, report, "probe")
    failure = report.failure
    if failure is not None:
        if failure.credentials:
            hold(server, portal, f"{failure.name}: {failure.summary}")
        else:
            mark_failing(server, f"{failure.name}: {failure.summary}")
        return False
    recovered(server, portal)
    return True


def recovered(server: MailServer, portal: Portal) -> None:
    """The server works again: clear its marks, send what waited for it, end the failover.
    Reads first and writes only what changes (this runs after every save of a server)."""
    session = db.session()
    marks = session.execute(select(MailServer.failing_since, MailServer.held_since).where(
        MailServer.id == server.id)).first()
    woken = []
    if marks is not None and (marks.failing_since is not None or marks.held_since is not None):
        now = utcnow()
        session.execute(update(MailServer).where(MailServer.id == server.id).values(
            failing_since=None, failing_reason="", held_since=None, held_reason="")
            .execution_options(synchronize_session=False))
        woken = list(session.execute(update(OutboundMail).where(
            OutboundMail.portal_id == portal.id, OutboundMail.state == MailState.QUEUED,
            OutboundMail.server_id == server.id, OutboundMail.next_attempt_at > now,
            or_(OutboundMail.last_code.is_(None), OutboundMail.last_code == 421))
            .values(next_attempt_at=now).returning(OutboundMail.id).execution_options(synchronize_session=False))
            .scalars())
        log.info("server %s (%s) works again; %d message(s) that waited for it are due", server.id, server.label,
                 len(woken))
    in_failover = session.execute(select(Portal.failover_since).where(Portal.id == portal.id)).scalar()
    session.commit()
    _known(server, failing_since=None, failing_reason="", held_since=None, held_reason="")
    if in_failover is not None:
        end_failover_if_primary_works(portal)
    current_app.extensions["mailroom.delivery"].wake(woken)


# Whether release_held(server) would change anything, as columns of any statement on the server's row:
# the server marked failing or held, the portal in failover, held mail in the portal.
RELEASE_STATE = (MailServer.failing_since, MailServer.held_since,
                 select(Portal.failover_since).where(Portal.id == MailServer.portal_id).scalar_subquery()
                 .label("failover_since"),
                 select(OutboundMail.id).where(OutboundMail.portal_id == MailServer.portal_id,
                                               OutboundMail.state == MailState.HELD).exists().label("held"))


def anything_to_release(row) -> bool:
    """`row`: RELEASE_STATE read with the server's row (checks.remember reads it in the UPDATE that
    keeps a check's outcome: one statement before the one commit); None: the row is gone."""
    return row is None or row.failing_since is not None or row.held_since is not None \
        or row.failover_since is not None or bool(row.held)


def release_held(server: MailServer, why: str) -> list[int]:
    """Give `server` another go and send the portal's held mail again: its credentials were
    saved, its OAuth grant renewed, or a check of its saved settings passed. Mail that still
    cannot go is held again without an attempt counted. Call it after committing. The ids released."""
    session = db.session()
    portal = session.get(Portal, server.portal_id)
    if portal is None:
        return []
    held = _any_held(portal)
    released = []
    if held:
        now = utcnow()
        released = list(session.execute(update(OutboundMail).where(
            OutboundMail.portal_id == portal.id, OutboundMail.state == MailState.HELD)
            .values(state=MailState.QUEUED, next_attempt_at=now, updated_at=now)
            .returning(OutboundMail.id).execution_options(synchronize_session=False)).scalars())
        log.info("server %s (%s): %s; %d held message(s) released", server.id, server.label, why, len(released))
    session.commit()
    recovered(server, portal)
    current_app.extensions["mailroom.delivery"].wake(released)
    return released


def _any_held(portal: Portal) -> bool:
    return db.session().execute(select(OutboundMail.id).where(
        OutboundMail.portal_id == portal.id, OutboundMail.state == MailState.HELD).limit(1)).first() is not None


def _known(server: MailServer, **values) -> None:
    """What was just written, on the loaded object too, without making it a change to write
    again later (that could undo what another worker wrote meanwhile)."""
    for name, value in values.items():
        set_committed_value(server, name, value)


def _servers(portal: Portal) -> list[MailServer]:
    return list(db.session().execute(select(MailServer).where(MailServer.portal_id == portal.id)
                                     .order_by(MailServer.position, MailServer.id)
                                     .execution_options(populate_existing=True)).unique().scalars())
