"""The sweep, every DELIVERY_SWEEP_SECONDS and when a worker starts: what no job will do by
itself.

- messages whose worker died (their claim's lease ran out) are queued again, the attempt counted;
- held mail past its lifetime fails (with a notice; a body that carries a secret is purged);
- expired connection leases are dropped;
- a portal in failover whose primary works again (checked, disabled, moved) gets it back;
- failing servers due for a probe get one (a job each);
- due messages without a job get one: as many jobs as due messages (at most WAKE_MAX) beyond
  those already waiting in Huey's queue;
- password-recovery requests still there (their job was lost, or no system mail could go out) are
  answered (recovery.answer_waiting).
"""
import logging
from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, or_, select, update

from .. import db, recovery
from ..models import MailServer, MailState, OutboundMail, Portal, utcnow
from . import capacity, claims, health, notices

log = logging.getLogger(__name__)


def sweep(queue, now: datetime | None = None) -> dict:
    settings = queue.settings
    now = now or utcnow()
    rescued = claims.rescue_expired(now)
    if rescued:
        log.warning("%d message(s) of stopped workers queued again: %s", len(rescued), rescued[:20])
    expired = expire_held(settings.lifetime, now)
    capacity.drop_expired(now)
    session = db.session()
    for portal in session.execute(select(Portal).where(Portal.failover_since.is_not(None))).scalars().all():
        health.end_failover_if_primary_works(portal)
    due_probes = list(session.execute(select(MailServer.id).where(
        MailServer.enabled.is_(True), MailServer.failing_since.is_not(None), MailServer.held_since.is_(None),
        or_(MailServer.last_check_at.is_(None),
            MailServer.last_check_at < now - timedelta(seconds=settings.probe)))).scalars())
    session.commit()
    for server_id in due_probes:
        queue.probe(server_id)
    due = claims.due_count(now)
    jobs = max(0, min(due, queue.WAKE_MAX) - queue.waiting())
    queue.wake([None] * jobs)
    recovery_requests = recovery.answer_waiting()
    return {"rescued": len(rescued), "expired": expired, "probes": len(due_probes), "due": due, "jobs": jobs,
            "recovery_requests": recovery_requests}


def expire_held(lifetime: timedelta, now: datetime) -> int:
    """Held mail past its lifetime fails; each portal's admin is told how many."""
    session = db.session()
    gone = session.execute(update(OutboundMail).where(
        OutboundMail.state == MailState.HELD,
        or_(OutboundMail.expires_at < now,
            and_(OutboundMail.expires_at.is_(None), OutboundMail.created_at < now - lifetime)))
        .values(state=MailState.FAILED, updated_at=now,
                last_error=func.substr("held until the end of its lifetime: " + OutboundMail.last_error, 1, 1000),
                raw=case((OutboundMail.purge_when_done, None), else_=OutboundMail.raw),
                purged_at=case((OutboundMail.purge_when_done, now), else_=OutboundMail.purged_at))
        .returning(OutboundMail.portal_id).execution_options(synchronize_session=False)).scalars().all()
    session.commit()
    for portal_id, count in Counter(gone).items():
        portal = session.get(Portal, portal_id)
        if portal is not None:
            notices.held_expired(portal, count, lifetime)
    return len(gone)
