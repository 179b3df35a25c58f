"""Password recovery by mail (Enterprise Recon's "password recovery emails"): "Forgot your password?"
sends a link that sets a new password, once, within PASSWORD_RESET_MINUTES.

- The request does the same work for every address (ask): it records the address and queues a job
  of the delivery queue; the job (answer) looks the user up, makes the link and queues its mail.
  So neither the answer nor the time it takes tells whether an account has the address; the
  view's rate limits count per address and per client either way.
- The link is MAILROOM_PUBLIC_URL + /password/reset/<token>: never the address the request came
  to (a Host header is the client's to choose). Without PUBLIC_URL nothing is sent.
- The mail goes through the system-mail server (systemmail.py) via the outbox: accepted is committed,
  the worker delivers and retries it; its lifetime ends with the link's, and its body (the link) is
  purged as soon as it is sent or failed.
- Only the token's SHA-256 is stored. Using it sets the password (the same rules as a password
  change), ends every session of the user, and uses up every other link of theirs.
"""
import hashlib
import logging
import secrets
from datetime import timedelta

from flask import current_app
from sqlalchemy import delete, update
from sqlmodel import select

from . import audit, db, delivery, people, sessions, systemmail
from .audit import Actor
from .models import PasswordReset, RecoveryRequest, User, utcnow
from .security import hash_password
from .systemmail import Unavailable  # noqa: F401  (what the views catch)

log = logging.getLogger(__name__)
RESET_PATH = "/password/reset/"
SUBJECT = "Reset your Mailroom password"
WAITING_BATCH = 100  # requests the sweep answers at most at once


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def lifetime() -> timedelta:
    return timedelta(minutes=current_app.config["PASSWORD_RESET_MINUTES"])


def available() -> list[str]:
    """Why recovery mail cannot be sent now (empty: it can): for the super-admin's page; users hear less."""
    return systemmail.problems()


def ask(email: str, client: str) -> None:
    """Record that a link was asked for this address (committed) and queue the job that answers it: the
    same work whether an account has the address or not. Unavailable when no recovery mail can go out."""
    reasons = available()
    if reasons:
        raise systemmail.Unavailable(reasons[0])
    request = RecoveryRequest(email=email[:320], client_address=client[:64], asked_at=utcnow())
    db.session().add(request)
    db.session().commit()
    delivery.recover(request.id)


def answer(request_id: int) -> None:
    """The job: if an active user has the address, a new link, stored hashed, and its mail queued, in
    the transaction that takes the request (so a request is answered once); nothing for an unknown or
    disabled address, or a request older than a link's lifetime. When no recovery mail can go out now,
    the request waits for the sweep."""
    session = db.session()
    asked = session.execute(delete(RecoveryRequest).where(RecoveryRequest.id == request_id).returning(
        RecoveryRequest.email, RecoveryRequest.client_address, RecoveryRequest.asked_at)).first()
    if asked is None:  # answered already (by the sweep, or by this job before)
        session.rollback()
        return
    email, client, asked_at = asked
    user = people.find_user(email)
    if user is None or not user.is_active or _aware(asked_at) <= utcnow() - lifetime():
        session.commit()
        log.info("password recovery asked for %s from %s: no active account or too old, nothing sent", email,
                 client)
        return
    reasons = available()
    if reasons:
        session.rollback()
        log.warning("password recovery asked for %s: %s; the sweep tries again", email, reasons[0])
        return
    token = secrets.token_urlsafe(32)
    expires = utcnow() + lifetime()
    session.add(PasswordReset(id=_hash(token), user_id=user.id, created_at=utcnow(), expires_at=expires,
                              client_address=client))
    link = current_app.config["PUBLIC_URL"] + RESET_PATH + token
    minutes = current_app.config["PASSWORD_RESET_MINUTES"]
    text = (f"Hello,\n\nsomeone (from the address {client or 'unknown'}) asked to reset the Mailroom password of "
            f"{user.email}. To choose a new password, open this link within {minutes} minutes:\n\n  {link}\n\n"
            "The link works once. If you did not ask for it, ignore this mail: your password stays as it is.\n")
    mail = systemmail.queue(user.email, SUBJECT, text, expires_at=expires, secret=True)
    audit.record(Actor(client or "unknown client"), "user.password_recovery_sent", user.email)
    session.commit()
    delivery.wake([mail.id])
    log.info("password recovery for %s from %s: link sent as mail %s", user.email, client, mail.id)


def answer_waiting() -> int:
    """For the sweep: answer the requests whose job was lost (a worker killed, the queue unreachable)
    or that waited for the system-mail server."""
    ids = list(db.session().exec(select(RecoveryRequest.id).order_by(RecoveryRequest.id).limit(WAITING_BATCH)))
    db.session().commit()
    for request_id in ids:
        answer(request_id)
    return len(ids)


def _aware(moment):
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


def _usable(token: str):
    if not token or len(token) > 200:
        return None
    reset = db.session().get(PasswordReset, _hash(token))
    if reset is None or reset.used_at is not None:
        return None
    if _aware(reset.expires_at) <= utcnow():
        return None
    user = db.session().get(User, reset.user_id)
    return (reset, user) if user is not None and user.is_active else None


def valid(token: str) -> User | None:
    """The user whose link this is, while it can be used; None otherwise."""
    found = _usable(token)
    return found[1] if found else None


def set_password(token: str, password: str) -> User | None:
    """Use the link: the new password, every session of the user ended, every link of theirs used up.
    None when the link cannot be used (unknown, used, expired, a disabled user): nothing changes then."""
    found = _usable(token)
    if found is None:
        return None
    reset, user = found
    now = utcnow()
    taken = db.session().execute(update(PasswordReset).where(
        PasswordReset.id == reset.id, PasswordReset.used_at.is_(None)).values(used_at=now)).rowcount
    if taken != 1:  # used at the same moment by another request
        db.session().rollback()
        return None
    db.session().execute(update(PasswordReset).where(
        PasswordReset.user_id == user.id, PasswordReset.used_at.is_(None)).values(used_at=now))
    user.password_hash = hash_password(password)
    user.must_change_password = False
    db.session().add(user)
    audit.record(Actor(user.email, user.id), "user.password_recovered", user.email)
    db.session().commit()
    sessions.end_sessions_of(user)
    return user
