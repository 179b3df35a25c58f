"""Sessions that end: a signed-in browser is a record on the server, not a cookie alone.

Before sign-in the session is Flask's signed cookie (it holds the sign-in form's CSRF
token and flashed messages). Signing in starts a new server-side session with a fresh
random token (the old cookie and its CSRF token stop meaning anything); the cookie then
holds only "s1:<token>", and the record (its sha256) holds the data. Signing out deletes
the record, so a copied cookie is worth nothing afterwards; a password change ends the
user's other sessions, a reset, disabling or removing the user ends all of them. A
session ends after SESSION_IDLE_MINUTES without a request and SESSION_MAX_HOURS after
sign-in, whichever comes first.

Records live in the app's database (table user_session), or in Redis when REDIS_URL is
configured (several hosts then share them either way).
"""
import hashlib
import json
import logging
import secrets
from datetime import datetime, timedelta

from flask import current_app, g, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from sqlalchemy import bindparam, delete, update
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from . import db
from .models import User, UserSession, utcnow

PREFIX = "s1:"
SESSIONLESS_PATH = "/api/"  # requests here carry their own credentials (an API key): no session, no cookie
TOUCH_EVERY = timedelta(seconds=60)  # last_seen is written at most this often
log = logging.getLogger(__name__)


class Session(SecureCookieSession):
    """Flask's session dict, plus the server-side record it belongs to (if signed in)."""

    sid: str | None = None  # sha256 of the token; None: an anonymous, cookie-only session
    token: str | None = None  # set when a new record was made in this request: the cookie to send
    last_seen: datetime | None = None
    unread: bool = False  # the record could not be read (no database): the cookie is left as it is


def sessionless(request) -> bool:
    """Decided by the path alone: the session is opened before the request is routed."""
    return request.path.startswith(SESSIONLESS_PATH)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _store():
    return current_app.extensions["mailroom.session_store"]


def _lifetimes():
    config = current_app.config
    return timedelta(minutes=config["SESSION_IDLE_MINUTES"]), timedelta(hours=config["SESSION_MAX_HOURS"])


def _alive(created: datetime, last_seen: datetime) -> bool:
    idle, most = _lifetimes()
    now = utcnow()
    return now - last_seen.replace(tzinfo=last_seen.tzinfo or now.tzinfo) < idle and \
        now - created.replace(tzinfo=created.tzinfo or now.tzinfo) < most


class SessionInterface(SecureCookieSessionInterface):
    session_class = Session

    def get_cookie_secure(self, app) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)

    def open_session(self, app, request):
        if sessionless(request):  # no cookie is read, and none is set (Flask saves no null session)
            return self.make_null_session(app)
        value = request.cookies.get(self.get_cookie_name(app)) or ""
        if not value.startswith(PREFIX):
            return super().open_session(app, request)
        sid = _hash(value[len(PREFIX):])
        try:
            found = _store().load(sid)
        except OperationalError as error:  # no database at all right now (e.g. its folder is read-only):
            g.session_unreadable = error  # said by the 503 handler once the request runs
            session = Session()
            session.unread = True
            return session
        if found is None:
            session = Session()
            session.modified = True  # the cookie goes: it names no live session
            return session
        user, data, created, last_seen = found
        if not _alive(created, last_seen):
            _store().delete(sid)
            session = Session()
            session.modified = True
            return session
        session = Session(data)
        session.sid, session.last_seen = sid, last_seen
        if user is not None:
            g.session_user = user  # the user loader takes it from here: one query for both
        return session

    def save_session(self, app, session: Session, response) -> None:
        if session.unread:  # the browser keeps its sign-in for when the database is back
            return
        if session.sid is None:
            return super().save_session(app, session, response)
        response.vary.add("Cookie")
        try:
            if session.modified:
                _store().save(session.sid, dict(session))
            elif session.last_seen is None or utcnow() - _aware(session.last_seen) > TOUCH_EVERY:
                _store().touch(session.sid)
        except OperationalError:
            log.warning("could not write the session record (the database refused the write)")
        if session.token:
            response.set_cookie(self.get_cookie_name(app), PREFIX + session.token, httponly=True,
                                domain=self.get_cookie_domain(app), path=self.get_cookie_path(app),
                                secure=self.get_cookie_secure(app), samesite=self.get_cookie_samesite(app))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


def sign_in(session: Session, user: User) -> None:
    """A new session for `user`: nothing of the anonymous one is kept but its flashed
    messages; a new token, a new CSRF token."""
    flashes = session.get("_flashes")
    if session.sid:
        _store().delete(session.sid)
    session.clear()
    if flashes:
        session["_flashes"] = flashes
    token = secrets.token_urlsafe(32)
    session.sid, session.token, session.last_seen = _hash(token), token, utcnow()
    _store().purge()
    _store().create(session.sid, user.id, dict(session))
    g.pop("csrf_token", None)  # Flask-WTF's cached token belongs to the old session


def sign_out(session: Session) -> None:
    if session.sid:
        _store().delete(session.sid)
    session.sid = None
    session.clear()


def end_sessions_of(user: User, keep: str | None = None) -> None:
    """End every session of `user` (but `keep`, the one acting, when it changes its own password)."""
    _store().delete_user(user.id, keep)


_SESSION_AND_USER = select(UserSession, User).join(User).where(UserSession.id == bindparam("sid"))  # built once


class DatabaseStore:
    def load(self, sid: str):
        row = db.session().exec(_SESSION_AND_USER, params={"sid": sid}).first()
        if row is None:
            return None
        record, user = row
        return user, dict(record.data), record.created_at, record.last_seen_at

    def create(self, sid: str, user_id: int, data: dict) -> None:
        now = utcnow()
        db.session().add(UserSession(id=sid, user_id=user_id, data=data, created_at=now, last_seen_at=now))
        db.session().commit()

    def save(self, sid: str, data: dict) -> None:
        self._write(update(UserSession).where(UserSession.id == sid).values(data=data, last_seen_at=utcnow()))

    def touch(self, sid: str) -> None:
        self._write(update(UserSession).where(UserSession.id == sid).values(last_seen_at=utcnow()))

    def delete(self, sid: str) -> None:
        self._write(delete(UserSession).where(UserSession.id == sid))

    def delete_user(self, user_id: int, keep: str | None = None) -> None:
        statement = delete(UserSession).where(UserSession.user_id == user_id)
        self._write(statement.where(UserSession.id != keep) if keep else statement)

    def purge(self) -> None:
        """Forget sessions that ended by time (done at each sign-in: cheap, and enough)."""
        idle, most = _lifetimes()
        now = utcnow()
        self._write(delete(UserSession).where(
            (UserSession.last_seen_at < now - idle) | (UserSession.created_at < now - most)))

    @staticmethod
    def _write(statement) -> None:
        """A short transaction of its own, whatever the request's session is doing."""
        with db.engine().begin() as connection:
            connection.execute(statement)


class RedisStore:
    """mailroom:session:<sid> -> JSON, expiring after the idle time; mailroom:user-sessions:<id>
    -> the set of a user's sids, to end them all."""

    def __init__(self, url: str):
        import redis

        self.redis = redis.Redis.from_url(url)

    def _key(self, sid: str) -> str:
        return f"mailroom:session:{sid}"

    def _ttl(self) -> int:
        return int(_lifetimes()[0].total_seconds())

    def load(self, sid: str):
        raw = self.redis.get(self._key(sid))
        if raw is None:
            return None
        record = json.loads(raw)
        user = db.session().get(User, record["user_id"])
        if user is None:
            return None
        return (user, record["data"], datetime.fromisoformat(record["created_at"]),
                datetime.fromisoformat(record["last_seen_at"]))

    def create(self, sid: str, user_id: int, data: dict) -> None:
        now = utcnow().isoformat()
        self._put(sid, {"user_id": user_id, "data": data, "created_at": now, "last_seen_at": now})
        self.redis.sadd(f"mailroom:user-sessions:{user_id}", sid)

    def save(self, sid: str, data: dict) -> None:
        self._update(sid, data=data)

    def touch(self, sid: str) -> None:
        self._update(sid)

    def _update(self, sid: str, **changes) -> None:
        raw = self.redis.get(self._key(sid))
        if raw is not None:
            self._put(sid, {**json.loads(raw), **changes, "last_seen_at": utcnow().isoformat()})

    def _put(self, sid: str, record: dict) -> None:
        self.redis.set(self._key(sid), json.dumps(record), ex=self._ttl())

    def delete(self, sid: str) -> None:
        self.redis.delete(self._key(sid))

    def purge(self) -> None:
        """Redis forgets idle sessions by itself (their keys expire)."""

    def delete_user(self, user_id: int, keep: str | None = None) -> None:
        members = f"mailroom:user-sessions:{user_id}"
        sids = [m.decode() for m in self.redis.smembers(members) if m.decode() != keep]
        if sids:
            self.redis.delete(*[self._key(sid) for sid in sids])
            self.redis.srem(members, *sids)


def init_app(app) -> None:
    url = app.config.get("REDIS_URL")
    app.extensions["mailroom.session_store"] = RedisStore(url) if url else DatabaseStore()
    app.session_interface = SessionInterface()
    app.before_request_funcs.setdefault(None, []).insert(0, _session_unreadable)  # before the CSRF check


def _session_unreadable() -> None:
    """An error while the session was opened (before any handler could answer it) is raised here."""
    error = g.pop("session_unreadable", None)
    if error is not None:
        raise error
