"""Flask-Limiter's counters in the database, for an installation without Redis: every worker
process of every host counts together (in memory, each of N workers allowed the limit again,
so a flood of wrong passwords had N times the tries).

Registered with the `limits` library under the scheme `mailroom+database://`, the storage
`limits.init_app` configures when REDIS_URL is not set. Fixed windows, as Flask-Limiter's
default strategy uses them: a key's count lives until its window ends. A key names an account
or an address, so only its sha256 is stored. Each call is a short transaction of its own on the
engine of the app handling the request, never the request's session.
"""
import hashlib
import logging
import time

from limits.storage import Storage
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from . import db
from .models import RateCount

log = logging.getLogger(__name__)
TABLE = RateCount.__table__
INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


class DatabaseStorage(Storage):
    STORAGE_SCHEME = ["mailroom+database"]

    @property
    def base_exceptions(self) -> type[Exception]:
        return SQLAlchemyError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Count `amount` more in the key's window (a new window of `expiry` seconds if it has none).
        A database that refuses the write (locked, read-only) costs the count, not the request."""
        now = time.time()
        try:
            with db.engine().begin() as connection:
                connection.execute(delete(TABLE).where(TABLE.c.expires_at <= now))  # every ended window
                insert = INSERTS[connection.dialect.name](TABLE).values(key=_hashed(key), count=amount,
                                                                        expires_at=now + expiry)
                upsert = insert.on_conflict_do_update(index_elements=[TABLE.c.key],
                                                      set_={"count": TABLE.c.count + amount})
                return connection.execute(upsert.returning(TABLE.c.count)).scalar_one()
        except OperationalError as error:
            log.warning("a rate limit could not be counted (the database refused the write): %s",
                        str(error.orig).splitlines()[0] if error.orig else error)
            return 0

    def get(self, key: str) -> int:
        row = self._row(key)
        return row.count if row else 0

    def get_expiry(self, key: str) -> float:
        row = self._row(key)
        return row.expires_at if row else time.time()

    def _row(self, key: str):
        with db.engine().connect() as connection:
            return connection.execute(select(TABLE.c.count, TABLE.c.expires_at).where(
                TABLE.c.key == _hashed(key), TABLE.c.expires_at > time.time())).first()

    def check(self) -> bool:
        try:
            with db.engine().connect() as connection:
                connection.execute(select(1))
        except SQLAlchemyError:
            return False
        return True

    def reset(self) -> int | None:
        with db.engine().begin() as connection:
            return connection.execute(delete(TABLE)).rowcount

    def clear(self, key: str) -> None:
        with db.engine().begin() as connection:
            connection.execute(delete(TABLE).where(TABLE.c.key == _hashed(key)))


def _hashed(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
