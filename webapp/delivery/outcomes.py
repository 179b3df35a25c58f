"""Writing down what happened to a claimed message, in one short transaction after the
send: the row's new state, each recipient's outcome and one attempt per server tried.

Only the worker that holds the claim writes, except for "sent": a message the server took
is recorded as sent even when the claim ran out meanwhile (a worker paused past its lease,
and the sweep gave the message back): it went out, and that must not be sent again.

A delivery run writes its outcomes on a database connection of its own (Writer), held for the
run: Core statements on it, no ORM session, no connection taken from the pool and given back
for each message; still one transaction per message.
"""
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from sqlalchemy import Connection, bindparam, insert, update
from sqlalchemy.exc import InternalError, OperationalError

from .. import db
from ..models import DeliveryAttempt, MailState, OutboundMail, utcnow
from ..one_writer import one_writer

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


def finish(mail: OutboundMail, owner: str, tried: list[Tried], writer: "Writer | None" = None, **values) -> bool:
    """Record the outcome (`values`: the row's new columns, with its state) through `writer` (else
    the session); False when another worker has the message now and this outcome was not written.
    A database too busy to write is tried again a few times: the outcome of a send is not to be
    lost lightly."""
    for pause in (*WRITE_RETRIES, None):
        try:
            if writer is None:
                return _finish(db.session(), mail, owner, tried, dict(values))
            return writer.finish(mail, owner, tried, dict(values))
        except (OperationalError, InternalError):
            db.session().rollback()  # (the writer rolled its own back)
            if pause is None:
                raise
            log.warning("mail %s: the database refused the outcome, trying again in %s s", mail.id, pause)
            time.sleep(pause)


WRITE_RETRIES = (1, 3, 10)  # seconds between tries, after SQLite's own busy timeout


class Writer:
    """A run's own database connection for its outcomes, taken at the first one; close() gives it
    back. The session holds no write while it is used (it commits before any network I/O), and on
    SQLite the process's writers take turns on a lock (one_writer) rather than on SQLite's busy
    handler."""

    def __init__(self):
        self._connection: Connection | None = None

    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = db.engine().connect()
        return self._connection

    def finish(self, mail: OutboundMail, owner: str, tried: list[Tried], values: dict) -> bool:
        db.release()  # a write of the session's would wait for this one, and this one for it
        connection = self.connection()
        with one_writer(connection.engine):
            try:
                return _finish(connection, mail, owner, tried, values)
            except BaseException:
                connection.rollback()  # never left holding the write lock, whatever went wrong
                raise

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _finish(on, mail: OutboundMail, owner: str, tried: list[Tried], values: dict) -> bool:
    """The row, its attempts and the commit, on a session or a connection."""
    now = utcnow()
    values.update(lease_owner="", lease_until=None, updated_at=now)
    if mail.purge_when_done and values.get("state") in (MailState.SENT, MailState.FAILED):
        values.update(raw=None, purged_at=now)  # it carried a secret (a recovery link): not kept a moment longer
    columns = tuple(sorted(values))
    parameters = {"outcome_id": mail.id, "outcome_owner": owner,
                  **{f"new_{name}": value for name, value in values.items()}}
    written = on.execute(_by_its_worker(columns), parameters).rowcount == 1
    if not written and values.get("state") == MailState.SENT:
        written = on.execute(_sent_all_the_same(columns), parameters).rowcount == 1
    for each in tried:
        _attempt(on, each, mail.id, owner)
    on.commit()
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


def _attempt(on, tried: Tried, mail_id: int, owner: str) -> None:
    columns = dict(outcome=tried.outcome, code=tried.code, reply=tried.reply[:1000], elapsed=round(tried.elapsed, 3))
    if tried.reservation is not None:
        on.execute(update(_attempts).where(_attempts.c.id == tried.reservation).values(**columns))
        return
    on.execute(_NEW_ATTEMPT, dict(mail_id=mail_id, at=tried.at, server_id=tried.server_id,
                                  server_label=tried.server_label[:200], worker=owner, **columns))


_attempts = DeliveryAttempt.__table__
_NEW_ATTEMPT = insert(_attempts)  # one INSERT, no unit of work: nothing reads the object back


def recipients_pending(mail: OutboundMail) -> list[str]:
    return [r["address"] for r in mail.recipients if r.get("state", PENDING) == PENDING]
