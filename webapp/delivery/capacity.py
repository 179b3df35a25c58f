"""What a server may take at once, across every worker on every host:

- connections: a ConnectionLease row per open connection; a new one is taken only while
  fewer than the server's max_connections live ones exist, decided under the server's lock
  (PostgreSQL: its row FOR UPDATE; SQLite: the write lock). A lease expires unless renewed,
  so a dead worker's connections free themselves.
- send rates: messages per minute and per day, counted from the attempts (index server_id,
  at). A message is counted from the moment its send starts (a "sending" attempt reserved
  under the same lock), so two workers cannot both take the last slot.

When there is no room, the answer is Busy with the moment to come back: mail waits for a
later slot, it does not fail.
"""
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update

from .. import db
from ..models import ConnectionLease, DeliveryAttempt, MailServer, utcnow
from .times import aware

LEASE_MARGIN = 5.0  # seconds a claim or connection lease must outlast a server's timeout
RATE_WINDOWS = (("rate_per_minute", timedelta(minutes=1), "minute"), ("rate_per_day", timedelta(days=1), "day"))
COUNTED = ("sent", "sending")  # what uses up a send rate


@dataclass(frozen=True)
class Busy:
    until: datetime  # when to try again
    reason: str


def lease_seconds(server: MailServer, configured: float) -> float:
    """How long a claim or a connection lease for a send to `server` lasts: the configured time,
    but always longer than the server's timeout (a send cannot outlive it)."""
    return max(configured, server.timeout + LEASE_MARGIN)


def lock_server(server_id: int) -> None:
    """Serialize the writers deciding about one server until the next commit (call first in a transaction)."""
    session = db.session()
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(MailServer).where(MailServer.id == server_id).values(id=MailServer.id)
                        .execution_options(synchronize_session=False))
    else:  # NO KEY UPDATE: attempts referring to the server may still be written meanwhile
        session.execute(select(MailServer.id).where(MailServer.id == server_id).with_for_update(key_share=True))


def take_connection(server: MailServer, owner: str, lease_seconds: float, busy_seconds: float) -> int | Busy:
    """A lease for one more connection to `server` (its id), or Busy when all are in use."""
    session = db.session()
    session.commit()
    now = utcnow()
    lock_server(server.id)
    session.execute(delete(ConnectionLease).where(ConnectionLease.server_id == server.id,
                                                  ConnectionLease.expires_at < now))
    live = session.execute(select(func.count()).select_from(ConnectionLease).where(
        ConnectionLease.server_id == server.id)).scalar_one()
    if live >= server.max_connections:
        session.commit()
        return Busy(now + timedelta(seconds=busy_seconds * random.uniform(0.5, 1.5)),
                    f"all {server.max_connections} connection(s) to “{server.label}” are in use")
    lease = ConnectionLease(server_id=server.id, owner=owner, expires_at=now + timedelta(seconds=lease_seconds))
    session.add(lease)
    session.commit()
    return lease.id


def renew_connection(lease_id: int, lease_seconds: float) -> bool:
    """Keep the lease (False when it expired and was taken away: open a new connection)."""
    session = db.session()
    kept = session.execute(update(ConnectionLease).where(ConnectionLease.id == lease_id).values(
        expires_at=utcnow() + timedelta(seconds=lease_seconds)).execution_options(synchronize_session=False)).rowcount
    session.commit()
    return kept == 1


def give_back(lease_id: int) -> None:
    session = db.session()
    session.execute(delete(ConnectionLease).where(ConnectionLease.id == lease_id))
    session.commit()


def drop_expired(now: datetime | None = None) -> int:
    session = db.session()
    dropped = session.execute(delete(ConnectionLease).where(ConnectionLease.expires_at < (now or utcnow()))).rowcount
    session.commit()
    return dropped


def has_rate(server: MailServer) -> bool:
    return bool(server.rate_per_minute or server.rate_per_day)


def reserve_send(server: MailServer, mail_id: int, owner: str) -> int | Busy:
    """For a server with a send rate: count this message now (a "sending" attempt, whose id is
    returned; the outcome replaces it), or Busy until the window has room."""
    session = db.session()
    session.commit()
    now = utcnow()
    lock_server(server.id)
    for column, window, unit in RATE_WINDOWS:
        limit = getattr(server, column)
        if not limit:
            continue
        counted = (select(DeliveryAttempt.at).where(
            DeliveryAttempt.server_id == server.id, DeliveryAttempt.at >= now - window,
            DeliveryAttempt.outcome.in_(COUNTED)))
        used = session.execute(select(func.count()).select_from(counted.subquery())).scalar_one()
        if used >= limit:
            oldest = session.execute(counted.order_by(DeliveryAttempt.at).offset(used - limit).limit(1)).scalar_one()
            session.commit()
            until = aware(oldest) + window + timedelta(seconds=random.uniform(0, 1))
            return Busy(until, f"“{server.label}” may send {limit} message(s) per {unit}, and that many went out")
    reservation = DeliveryAttempt(mail_id=mail_id, at=now, server_id=server.id, server_label=server.label[:200],
                                  outcome="sending", worker=owner)
    session.add(reservation)
    session.commit()
    return reservation.id
