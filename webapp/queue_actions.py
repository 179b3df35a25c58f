"""An admin's hand on the queue: retry now, release held, requeue failed, delete; for one message,
or for every message a filter selects.

Each change is a compare-and-set on the message's state (a message a worker claimed meanwhile,
or that changed otherwise, is left alone and not counted). A filter's messages change in
batches of BATCH, each batch its own short transaction, so a bulk action over 100,000 messages
never holds the database for long; it covers the messages there were when it started (not those
that arrive while it runs), and History gets one event with the filter and the count.
"""
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import delete, func, update
from sqlmodel import select

from . import audit, db, delivery, mailqueue
from .audit import Actor
from .mailqueue import QueueFilter
from .models import MailState, OutboundMail, Portal

BATCH = 500


class Action(StrEnum):
    RETRY = "retry"  # queued (deferred or waiting) -> due now
    RELEASE = "release"  # held -> queued, due now (its attempts were not counted)
    REQUEUE = "requeue"  # failed -> queued, due now, attempts from 0, a new lifetime
    DELETE = "delete"  # gone, with its attempts (not while a worker is sending it)


@dataclass(frozen=True)
class Kind:
    states: tuple[str, ...]  # what it applies to
    event: str  # History's action
    noun: str  # "12 failed messages"


KINDS = {
    Action.RETRY: Kind((MailState.QUEUED,), "mail.retried", "queued"),
    Action.RELEASE: Kind((MailState.HELD,), "mail.released", "held"),
    Action.REQUEUE: Kind((MailState.FAILED,), "mail.requeued", "failed"),
    Action.DELETE: Kind((MailState.QUEUED, MailState.HELD, MailState.SENT, MailState.FAILED), "mail.deleted", ""),
}


def applies(action: Action, state: str) -> bool:
    return state in KINDS[action].states


def apply(actor: Actor, portal: Portal, mail: OutboundMail, action: Action, now: datetime) -> bool:
    """Do `action` to one message; False when its state no longer allows it (nothing changed)."""
    session = db.session()
    done = _change(portal, action, [mail.id], now)
    if done:
        audit.record(actor, KINDS[action].event, f"message #{mail.id} “{mail.subject[:100]}”", {}, portal.id)
    session.commit()
    if done and action != Action.DELETE:
        delivery.wake([mail.id])  # due now: a worker sends it (after the commit, so it finds the row)
    return bool(done)


def count(portal: Portal, action: Action, chosen: QueueFilter) -> int:
    """How many of the filter's messages the action would change now (for its confirmation)."""
    return db.session().exec(select(func.count()).select_from(OutboundMail).where(
        *mailqueue.conditions(portal, chosen), OutboundMail.state.in_(KINDS[action].states))).one()


def apply_to_filter(actor: Actor, portal: Portal, action: Action, chosen: QueueFilter, described: str,
                    now: datetime) -> int:
    """Do `action` to every message the filter selects (that it applies to), in batches; the count
    done. `described` is the filter in words, for History."""
    session = db.session()
    kind = KINDS[action]
    where = [*mailqueue.conditions(portal, chosen), OutboundMail.state.in_(kind.states)]
    newest = session.exec(select(func.max(OutboundMail.id)).where(OutboundMail.portal_id == portal.id)).one()
    session.commit()
    done, below = 0, (newest or 0) + 1
    while True:
        ids = list(session.exec(select(OutboundMail.id).where(*where, OutboundMail.id < below)
                                .order_by(OutboundMail.id.desc()).limit(BATCH)))
        if not ids:
            break
        done += _change(portal, action, ids, now)
        session.commit()
        if action != Action.DELETE:
            delivery.wake(ids)  # those not changed are claimed by nobody: harmless
        if len(ids) < BATCH:
            break
        below = ids[-1]
    if done:  # nothing changed, nothing to record
        subject = " ".join(filter(None, [f"{done:,}", kind.noun, "message" if done == 1 else "messages"]))
        audit.record(actor, kind.event, subject, {"filter": [None, described], "count": [None, done]}, portal.id)
        session.commit()
    return done


def _change(portal: Portal, action: Action, ids: list[int], now: datetime) -> int:
    """The change itself, in the caller's transaction; how many messages it changed."""
    if action == Action.REQUEUE:
        return sum(_requeue(portal, mail_id, now) for mail_id in ids)
    mine = [OutboundMail.id.in_(ids), OutboundMail.portal_id == portal.id, OutboundMail.state.in_(KINDS[action].states)]
    if action == Action.DELETE:
        statement = delete(OutboundMail).where(*mine)
    elif action == Action.RELEASE:
        statement = update(OutboundMail).where(*mine).values(state=MailState.QUEUED, next_attempt_at=now,
                                                             updated_at=now)
    else:
        statement = update(OutboundMail).where(*mine).values(next_attempt_at=now, updated_at=now)
    return db.session().execute(statement.execution_options(synchronize_session=False)).rowcount


def _requeue(portal: Portal, mail_id: int, now: datetime) -> int:
    """Failed -> queued: attempts from 0, the lifetime it had from now on, and the recipients that
    failed pending again (those that took it keep it: nobody gets it twice). Not a purged message:
    there is nothing left to send."""
    session = db.session()
    row = session.exec(select(OutboundMail.created_at, OutboundMail.expires_at, OutboundMail.recipients).where(
        OutboundMail.id == mail_id, OutboundMail.portal_id == portal.id,
        OutboundMail.state == MailState.FAILED)).first()
    if row is None:
        return 0
    created_at, expires_at, recipients = row
    lifetime = expires_at - created_at if expires_at is not None else None
    pending = [{**r, "state": "pending", "code": None, "reply": ""} if r.get("state") == "failed" else r
               for r in recipients]
    statement = (update(OutboundMail).where(OutboundMail.id == mail_id, OutboundMail.state == MailState.FAILED,
                                            OutboundMail.raw.is_not(None))
                 .values(state=MailState.QUEUED, attempts=0, next_attempt_at=now, updated_at=now,
                         expires_at=now + lifetime if lifetime is not None else None, recipients=pending)
                 .execution_options(synchronize_session=False))
    return session.execute(statement).rowcount
