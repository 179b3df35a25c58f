"""The engine, one session per request, and the migrations entry."""
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from flask import current_app, g
from sqlalchemy import event
from sqlmodel import Session, create_engine

from .instance import locked

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def init_app(app) -> None:
    engine = make_engine(app.config["DATABASE_URL"])
    app.extensions["mailroom.engine"] = engine
    app.teardown_appcontext(_close_session)
    if app.config["AUTO_MIGRATE"]:
        with locked(Path(app.instance_path) / "migrate.lock"):
            upgrade(engine)


def make_engine(url: str):
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


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


def alembic_config(engine_) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine_
    return config


def upgrade(engine_, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine_), revision)
