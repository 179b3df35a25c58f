"""Writing down what happened to a claimed message, in one short transaction after the
send: the row's new state, each recipient's outcome and one attempt per server tried.

Only the worker that holds the claim writes, except for "sent": a message the server took
is recorded as sent even when the claim ran out meanwhile (a worker paused past its lease,
and the sweep gave the message back): it went out, and that must not be sent again.
"""
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from sqlalchemy import bindparam, insert, update
from sqlalchemy.exc import InternalError, OperationalError

from .. import db
from ..models import DeliveryAttempt, MailState, OutboundMail, utcnow

log = logging.getLogger(__name__)
PENDING, SENT, FAILED = "pending", "sent", "failed"  # a recipient's state


@dataclass
class Tried:
    """One server tried for one message."""
    server_id: int
    server_label: str
    at: datetime
    elapsed: float
    outcome: str  # sent | deferred | failed | held
    code: int | None
    reply: str
    reservation: int | None = None  # the "sending" attempt a server with a send rate reserved


def finish(mail: OutboundMail, owner: str, tried: list[Tried], **values) -> bool:
    """Record the outcome (`values`: the row's new columns, with its state); False when
    another worker has the message now and this outcome was not written. A database too busy
    to write is tried again a few times: the outcome of a send is not to be lost lightly."""
    for pause in (*WRITE_RETRIES, None):
        try:
            return _finish(mail, owner, tried, dict(values))
        except (OperationalError, InternalError):
            db.session().rollback()
            if pause is None:
                raise
            log.warning("mail %s: the database refused the outcome, trying again in %s s", mail.id, pause)
            time.sleep(pause)


WRITE_RETRIES = (1, 3, 10)  # seconds between tries, after SQLite's own busy timeout


def _finish(mail: OutboundMail, owner: str, tried: list[Tried], values: dict) -> bool:
    session = db.session()
    now = utcnow()
    values.update(lease_owner="", lease_until=None, updated_at=now)
    if mail.purge_when_done and values.get("state") in (MailState.SENT, MailState.FAILED):
        values.update(raw=None, purged_at=now)  # it carried a secret (a recovery link): not kept a moment longer
    columns = tuple(sorted(values))
    parameters = {"outcome_id": mail.id, "outcome_owner": owner,
                  **{f"new_{name}": value for name, value in values.items()}}
    written = session.execute(_by_its_worker(columns), parameters).rowcount == 1
    if not written and values.get("state") == MailState.SENT:
        written = session.execute(_sent_all_the_same(columns), parameters).rowcount == 1
    for each in tried:
        _attempt(each, mail.id, owner)
    session.commit()
    return written


# Built once per set of columns written, with bound parameters, on the table (Core: no ORM bookkeeping
# for a row nobody reads back here): a worker writes one outcome per message.
_outbox = OutboundMail.__table__


def _outcome_statement(columns: tuple[str, ...], *where):
    return (update(_outbox).where(_outbox.c.id == bindparam("outcome_id"), *where)
            .values({name: bindparam(f"new_{name}") for name in columns}))


@cache
def _by_its_worker(columns: tuple[str, ...]):
    return _outcome_statement(columns, _outbox.c.state == MailState.SENDING,
                              _outbox.c.lease_owner == bindparam("outcome_owner"))


@cache
def _sent_all_the_same(columns: tuple[str, ...]):
    return _outcome_statement(columns, _outbox.c.state.in_((MailState.QUEUED, MailState.SENDING, MailState.HELD)))


def _attempt(tried: Tried, mail_id: int, owner: str) -> None:
    session = db.session()
    columns = dict(outcome=tried.outcome, code=tried.code, reply=tried.reply[:1000], elapsed=round(tried.elapsed, 3))
    if tried.reservation is not None:
        session.execute(update(DeliveryAttempt).where(DeliveryAttempt.id == tried.reservation).values(**columns)
                        .execution_options(synchronize_session=False))
        return
    session.execute(_NEW_ATTEMPT, dict(mail_id=mail_id, at=tried.at, server_id=tried.server_id,
                                       server_label=tried.server_label[:200], worker=owner, **columns))


_NEW_ATTEMPT = insert(DeliveryAttempt.__table__)  # one INSERT, no unit of work: nothing reads the object back


def recipients_pending(mail: OutboundMail) -> list[str]:
    return [r["address"] for r in mail.recipients if r.get("state", PENDING) == PENDING]
