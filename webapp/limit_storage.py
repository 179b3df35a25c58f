"""Flask-Limiter's counters in the database, for an installation without Redis: every worker
process of every host counts together (in memory, each of N workers allowed the limit again,
so a flood of wrong passwords had N times the tries).

Registered with the `limits` library under the scheme `mailroom+database://`, the storage
`limits.init_app` configures when REDIS_URL is not set. Fixed windows, as Flask-Limiter's
default strategy uses them: a key's count lives until its window ends. A key names an account
or an address, so only its sha256 is stored. Each call is a short transaction of its own on the
engine of the app handling the request, never the request's session: one statement (the
count and its window's end, an ended window started anew), and the clearing away of every ended
window only when a key starts a new one. What a request counted answers the same request's reads
(the limiter reads the count and the window's end again for its headers) without a query.
"""
import hashlib
import importlib
import logging
import time
from functools import cache

from flask import has_request_context, request
from limits.storage import Storage
from sqlalchemy import bindparam, case, delete, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from . import db
from .models import RateCount

log = logging.getLogger(__name__)
TABLE = RateCount.__table__


class DatabaseStorage(Storage):
    STORAGE_SCHEME = ["mailroom+database"]

    @property
    def base_exceptions(self) -> type[Exception]:
        return SQLAlchemyError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Count `amount` more in the key's window (a new window of `expiry` seconds if it has none
        or its window ended). A database that refuses the write (locked, read-only) costs the count,
        not the request."""
        now = time.time()
        try:
            with db.engine().begin() as connection:
                count, expires_at = connection.execute(_upsert(connection.dialect.name), {
                    "rate_key": _hashed(key), "rate_amount": amount, "rate_now": now,
                    "rate_until": now + expiry}).one()
                if count == amount:  # this key starts a window: the moment to clear away every ended one
                    connection.execute(_CLEAR_ENDED, {"rate_now": now})
        except OperationalError as error:
            log.warning("a rate limit could not be counted (the database refused the write): %s",
                        str(error.orig).splitlines()[0] if error.orig else error)
            return 0
        _counted_in_this_request()[key] = (count, expires_at)
        return count

    def get(self, key: str) -> int:
        return self._window(key)[0]

    def get_expiry(self, key: str) -> float:
        return self._window(key)[1] or time.time()

    def _window(self, key: str) -> tuple[int, float]:
        """(count, window's end) as this request counted it, else as stored; (0, 0.0): no window."""
        counted = _counted_in_this_request().get(key)
        if counted is not None:
            return counted
        with db.engine().connect() as connection:
            row = connection.execute(select(TABLE.c.count, TABLE.c.expires_at).where(
                TABLE.c.key == _hashed(key), TABLE.c.expires_at > time.time())).first()
        return (row.count, row.expires_at) if row else (0, 0.0)

    def check(self) -> bool:
        try:
            with db.engine().connect() as connection:
                connection.execute(select(1))
        except SQLAlchemyError:
            return False
        return True

    def reset(self) -> int | None:
        _counted_in_this_request().clear()
        with db.engine().begin() as connection:
            return connection.execute(delete(TABLE)).rowcount

    def clear(self, key: str) -> None:
        _counted_in_this_request().pop(key, None)
        with db.engine().begin() as connection:
            connection.execute(delete(TABLE).where(TABLE.c.key == _hashed(key)))


def _counted_in_this_request() -> dict[str, tuple[int, float]]:
    """The keys this request counted, kept with the request itself (outside one, nothing is kept)."""
    if not has_request_context():
        return {}
    return request.environ.setdefault("mailroom.rate_counts", {})


def _hashed(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@cache
def _upsert(dialect: str):
    """The count and its window's end, an ended window started anew: one statement, built once per dialect
    (building it took about 1 ms a request). The INSERT that can say ON CONFLICT is SQLite's or PostgreSQL's,
    from the dialect the engine already loaded (importing PostgreSQL's package, with every driver's dialect,
    cost a SQLite worker 50 ms and 2 MiB)."""
    # (bound parameters are named apart from the columns: in an INSERT, such a parameter would be written)
    amount, now, until = bindparam("rate_amount"), bindparam("rate_now"), bindparam("rate_until")
    insert = importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert(TABLE).values(
        key=bindparam("rate_key"), count=amount, expires_at=until)
    ended = TABLE.c.expires_at <= now
    return insert.on_conflict_do_update(index_elements=[TABLE.c.key], set_={
        "count": case((ended, amount), else_=TABLE.c.count + amount),
        "expires_at": case((ended, until), else_=TABLE.c.expires_at)}).returning(TABLE.c.count, TABLE.c.expires_at)


_CLEAR_ENDED = delete(TABLE).where(TABLE.c.expires_at <= bindparam("rate_now"))
