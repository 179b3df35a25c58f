"""The engine, one session per request, and the migrations entry."""
import os
import re
from functools import cache
from pathlib import Path

from flask import current_app, g
from sqlalchemy import event, make_url, text
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlmodel import Session, create_engine

from .instance import locked

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def init_app(app) -> None:
    engine = make_engine(app.config["DATABASE_URL"], app.config["DATABASE_BUSY_TIMEOUT"])
    app.extensions["mailroom.engine"] = engine
    app.teardown_appcontext(_close_session)
    if app.config["AUTO_MIGRATE"] and not at_head(engine):
        with locked(Path(app.instance_path) / "migrate.lock"):
            upgrade(engine)


def make_engine(url: str, busy_timeout: float = 30):
    """`busy_timeout`: how long SQLite waits for another writer before giving up (then a 503)."""
    if url.startswith("sqlite"):
        path = make_url(url).database
        _private_file(path)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout})
        event.listen(engine, "connect", _sqlite_pragmas)
        if path and path != ":memory:":
            ReadOnlyConnections(path).watch(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _private_file(path: str | None) -> None:
    """The database file readable by its owner only (SQLite gives its -wal and -shm files the same mode)."""
    if path and path != ":memory:" and not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: safe from corruption; a crash may lose the last commits
    cursor.close()


SQLITE_READONLY = 8  # the primary result code; the extended ones (READONLY_DIRECTORY, ...) carry it in the low byte


class ReadOnlyConnections:
    """SQLite opens a file it may not write (read-only for a moment: its mode, its folder, a
    remount) read-only, and that connection stays read-only when the file is writable again: kept
    in the pool, it answered 503 until the process restarted. Such a connection is marked when it
    is opened (the file cannot be opened for writing, the test SQLite itself makes) and replaced at
    checkout once the file can be written; a write it refuses meanwhile discards the pool's
    connections, as a lost connection does."""

    def __init__(self, path: str):
        self.path = path

    def watch(self, engine) -> None:
        event.listen(engine, "connect", self.mark)
        event.listen(engine, "checkout", self.replace_when_writable)
        event.listen(engine, "handle_error", self.refused_write)

    def writable(self) -> bool:
        # access(), not open() and close(): closing any descriptor of the file drops every POSIX
        # lock this process holds on it, SQLite's included (https://www.sqlite.org/howtocorrupt.html 2.2)
        return os.access(self.path, os.W_OK)

    def mark(self, _dbapi_connection, record) -> None:
        record.info["read_only"] = not self.writable()

    def replace_when_writable(self, _dbapi_connection, record, _proxy) -> None:
        if record.info.get("read_only") and self.writable():
            raise DisconnectionError("opened read-only; the database can be written again")

    @staticmethod
    def refused_write(context) -> None:
        code = getattr(context.original_exception, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == SQLITE_READONLY:
            context.is_disconnect = True


def forget_connections(app) -> None:
    """Close the connections the start-up opened (the migration check, the secrets check): gunicorn
    --preload forks the workers after create_app, and a connection used by two processes corrupts
    both sides' conversation with the database. Each worker opens its own on first use. (An
    in-memory SQLite database lives only in its connection: that one is kept.)"""
    engine_ = app.extensions["mailroom.engine"]
    if engine_.url.database not in (None, "", ":memory:"):
        engine_.dispose()


def engine():
    return current_app.extensions["mailroom.engine"]


def session() -> Session:
    if "db_session" not in g:
        g.db_session = Session(engine(), expire_on_commit=False)
    return g.db_session


def _close_session(_exc=None):
    db_session = g.pop("db_session", None)
    if db_session is not None:
        db_session.close()


def alembic_config(engine_):
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine_
    return config


def upgrade(engine_, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(engine_), revision)


def at_head(engine_) -> bool:
    """Whether the database is at the newest migration, without loading alembic or the migrations
    (a start of the app or of a command pays only one query). False when unsure: then upgrade()."""
    head = _head_revision()
    if head is None:
        return False
    try:
        with engine_.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except SQLAlchemyError:  # no alembic_version yet: a new database
        return False
    return versions == [head]


_REVISION = re.compile(r"^revision\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)


@cache
def _head_revision() -> str | None:
    """The one revision no other revises (the migrations are a linear chain); None if that is not
    clear from the files (then alembic decides)."""
    revisions, revised = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        found = _REVISION.search(source)
        if found is None:
            return None
        revisions.add(found.group(1))
        revised.update(_DOWN_REVISION.findall(source))
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def lock_portal(portal) -> None:
    """Serialize the writers of one portal until the next commit: decisions made after this
    (a new position, "a portal keeps an admin") see every write committed before.

    Ends the current transaction first (objects stay loaded: expire_on_commit is off), then
    takes the lock as the new transaction's first statement: on PostgreSQL the portal's row
    (SELECT ... FOR UPDATE), on SQLite the database's write lock (a write that changes nothing).
    """
    from sqlmodel import select, update

    from .models import Portal

    db_session = session()
    db_session.commit()
    if db_session.get_bind().dialect.name == "sqlite":
        db_session.execute(update(Portal).where(Portal.id == portal.id).values(id=Portal.id)
                           .execution_options(synchronize_session=False))
    else:
        db_session.execute(select(Portal.id).where(Portal.id == portal.id).with_for_update())


def release() -> None:
    """End the transaction and give the connection back before network I/O (loaded objects stay);
    nothing to do when there is none and no change waits to be written."""
    db_session = session()
    if db_session.in_transaction() or db_session.dirty:
        db_session.commit()


LOCK_ALL_KEY = 0x4D61696C726F6F6D  # "Mailroom": the advisory lock of lock_all on PostgreSQL


def lock_all() -> None:
    """As lock_portal, for a change that concerns every portal and the super-admins (disabling
    or removing a user): on PostgreSQL an advisory lock (held even when there is no portal
    to lock) and every portal's row in id order; on SQLite the database's write lock."""
    from sqlalchemy import text
    from sqlmodel import select, update

    from .models import Portal

    db_session = session()
    db_session.commit()
    if db_session.get_bind().dialect.name == "sqlite":
        db_session.execute(update(Portal).where(Portal.id == -1).values(id=Portal.id)  # no row: just the lock
                           .execution_options(synchronize_session=False))
    else:
        db_session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_ALL_KEY})
        db_session.execute(select(Portal.id).order_by(Portal.id).with_for_update())
