"""Claiming outbox rows. The row is the record; Huey only wakes workers up.

A worker claims a batch of due messages of one portal in one short transaction: the rows go from
queued to sending, with the worker's name and a lease (PostgreSQL: the candidate rows locked FOR
UPDATE SKIP LOCKED, so two workers never wait for or take the same row; SQLite: one UPDATE ...
WHERE id IN (SELECT ... LIMIT n), which runs under the database's write lock). Nothing is sent
inside a transaction. Of two jobs for the same message only one gets it: duplicate wake-ups are
harmless. The run keeps the lease of the messages waiting in its batch (extend_all) and gives
back at once those it did not try (give_back).

Order: new mail (no attempt yet) before retries, except every RETRY_TURN-th claim, which looks
at retries first, so that a stream of new mail cannot starve them.

A worker that dies leaves its messages in sending; when their lease runs out, the sweep gives
them back (counting the attempt): they are sent again, at least once in all.
"""
import itertools
from functools import cache
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm.attributes import set_committed_value

from .. import db
from ..models import DeliveryAttempt, MailState, OutboundMail, utcnow
from .times import aware

RETRY_TURN = 4
_turns = itertools.count(1)
_outbox = OutboundMail.__table__
_candidate = _outbox.alias("candidate")

INTERRUPTED = ("the worker {owner} stopped during the attempt (its lease ran out): the message is sent again, "
               "so the recipients may get it twice if the server had taken it")


def claim(owner: str, lease_seconds: float, mail_id: int | None = None,
          portal_id: int | None = None) -> OutboundMail | None:
    """Claim `mail_id` if it is due, else the next due message (of `portal_id`, if given)."""
    taken = claim_batch(owner, lease_seconds, 1, mail_id, portal_id)
    return taken[0] if taken else None


def claim_batch(owner: str, lease_seconds: float, size: int, mail_id: int | None = None,
                portal_id: int | None = None) -> list[OutboundMail]:
    """Claim up to `size` due messages of one portal in one transaction, in the order they are to
    go: `mail_id` first if it is due, then the portal's (that of `mail_id`, or `portal_id`, or that
    of the next due message of any portal) next due ones, new mail or retries first as the turn says."""
    now = utcnow()
    session = db.session()
    # (the names of bound parameters are not columns: in an UPDATE, such a parameter would be written)
    values = {"claim_now": now, "claim_owner": owner, "claim_until": now + timedelta(seconds=lease_seconds)}
    claimed: list[OutboundMail] = []
    if mail_id is not None:
        claimed += session.execute(_BY_ID, {**values, "claim_id": mail_id}).scalars().all()
    if claimed:
        portal_id = claimed[0].portal_id
    lanes = (True, False) if next(_turns) % RETRY_TURN else (False, True)
    for fresh in lanes:
        if portal_id is None:  # the next due message of any portal says which portal
            first = session.execute(_next_due(fresh, False), {**values, "claim_limit": 1}).scalars().all()
            if not first:
                continue
            claimed += first
            portal_id = first[0].portal_id
        if len(claimed) >= size:
            break
        taken = session.execute(_next_due(fresh, True), {**values, "claim_portal": portal_id,
                                                         "claim_limit": size - len(claimed)}).scalars().all()
        claimed += sorted(taken, key=lambda mail: (aware(mail.next_attempt_at), mail.id))
    session.commit()
    return claimed


# The claim's statements are built once, with bound parameters: a worker runs one per batch.
def _claim_statement(which):
    return (update(OutboundMail).where(which, OutboundMail.state == MailState.QUEUED,
                                       OutboundMail.next_attempt_at <= bindparam("claim_now"))
            .values(state=MailState.SENDING, lease_owner=bindparam("claim_owner"), lease_until=bindparam("claim_until"),
                    updated_at=bindparam("claim_now"))
            .returning(OutboundMail).execution_options(synchronize_session=False, populate_existing=True))


_BY_ID = _claim_statement(OutboundMail.id == bindparam("claim_id"))


@cache
def _next_due(fresh: bool, of_portal: bool):
    """The oldest due messages (up to claim_limit), new mail (no attempt yet) or retries, of one portal or any."""
    conditions = [_candidate.c.state == MailState.QUEUED, _candidate.c.next_attempt_at <= bindparam("claim_now"),
                  _candidate.c.attempts == 0 if fresh else _candidate.c.attempts > 0]
    if of_portal:
        conditions.append(_candidate.c.portal_id == bindparam("claim_portal"))
    # Chosen once, before the UPDATE (PostgreSQL may run an IN (subquery) again for each row it looks at,
    # locking and so claiming more than the limit): a CTE materialized
    candidates = (select(_candidate.c.id).where(*conditions).order_by(_candidate.c.next_attempt_at)
                  .limit(bindparam("claim_limit")).with_for_update(skip_locked=True)
                  .cte("candidates").prefix_with("MATERIALIZED", dialect="postgresql"))
    return _claim_statement(OutboundMail.id.in_(select(candidates.c.id)))


def extend(mail: OutboundMail, owner: str, until: datetime) -> bool:
    """Keep the claim until `until` (before a send that might outlast it); False when it is lost."""
    session = db.session()
    kept = session.execute(
        update(OutboundMail).where(OutboundMail.id == mail.id, OutboundMail.state == MailState.SENDING,
                                   OutboundMail.lease_owner == owner)
        .values(lease_until=until).execution_options(synchronize_session=False)).rowcount == 1
    session.commit()
    if kept:
        set_committed_value(mail, "lease_until", until)  # known, not a change to write again
    return kept


def put_back(mail: OutboundMail, owner: str, at: datetime, **values) -> bool:
    """Give the message back untried (no attempt counted): due again at `at`."""
    session = db.session()
    done = session.execute(
        update(OutboundMail).where(OutboundMail.id == mail.id, OutboundMail.state == MailState.SENDING,
                                   OutboundMail.lease_owner == owner)
        .values(state=MailState.QUEUED, lease_owner="", lease_until=None, next_attempt_at=at, updated_at=utcnow(),
                **values).execution_options(synchronize_session=False)).rowcount == 1
    session.commit()
    return done


def extend_all(mails: list[OutboundMail], owner: str, until: datetime) -> list[OutboundMail]:
    """Keep the claims of messages waiting in a run's batch until `until`; those still held."""
    session = db.session()
    kept = set(session.execute(
        update(_outbox).where(_outbox.c.id.in_([mail.id for mail in mails]), _outbox.c.state == MailState.SENDING,
                              _outbox.c.lease_owner == owner)
        .values(lease_until=until).returning(_outbox.c.id)).scalars())
    session.commit()
    for mail in mails:
        if mail.id in kept:
            set_committed_value(mail, "lease_until", until)
    return [mail for mail in mails if mail.id in kept]


def give_back(mails: list[OutboundMail], owner: str) -> None:
    """Messages a run claimed and did not try (it stopped, or its batch ended early): queued again
    at once, as they were (no attempt counted, due as before), for the next job to take."""
    if not mails:
        return
    session = db.session()
    session.execute(update(_outbox).where(_outbox.c.id.in_([mail.id for mail in mails]),
                                          _outbox.c.state == MailState.SENDING, _outbox.c.lease_owner == owner)
                    .values(state=MailState.QUEUED, lease_owner="", lease_until=None, updated_at=utcnow()))
    session.commit()


def rescue_expired(now: datetime | None = None) -> list[int]:
    """Messages whose worker died (their lease ran out) are queued again, the attempt counted."""
    session = db.session()
    now = now or utcnow()
    stale = session.execute(select(OutboundMail.id, OutboundMail.lease_owner, OutboundMail.server_id).where(
        OutboundMail.state == MailState.SENDING, OutboundMail.lease_until < now)).all()
    rescued = []
    for mail_id, owner, server_id in stale:
        words = INTERRUPTED.format(owner=owner or "(unknown)")
        done = session.execute(
            update(OutboundMail).where(OutboundMail.id == mail_id, OutboundMail.state == MailState.SENDING,
                                       OutboundMail.lease_owner == owner, OutboundMail.lease_until < now)
            .values(state=MailState.QUEUED, attempts=OutboundMail.attempts + 1, lease_owner="", lease_until=None,
                    next_attempt_at=now, last_attempt_at=now, last_error=words, last_code=None, updated_at=now)
            .execution_options(synchronize_session=False)).rowcount == 1
        if not done:
            continue
        rescued.append(mail_id)
        reserved = session.execute(
            update(DeliveryAttempt).where(DeliveryAttempt.mail_id == mail_id, DeliveryAttempt.outcome == "sending")
            .values(outcome="deferred", reply=words).execution_options(synchronize_session=False)).rowcount
        if not reserved:
            session.add(DeliveryAttempt(mail_id=mail_id, at=now, server_id=server_id, outcome="deferred", reply=words,
                                        worker=owner))
    session.commit()
    return rescued


def due_count(now: datetime | None = None) -> int:
    from sqlalchemy import func

    session = db.session()
    count = session.execute(select(func.count()).select_from(OutboundMail).where(
        OutboundMail.state == MailState.QUEUED, OutboundMail.next_attempt_at <= (now or utcnow()))).scalar_one()
    session.commit()
    return count
