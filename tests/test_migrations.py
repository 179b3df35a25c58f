"""The first migration creates every table, and the schema matches the models."""
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from webapp import db


def _differences(engine):
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)


def test_upgrade_from_empty_on_sqlite(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
    db.upgrade(engine)
    tables = set(inspect(engine).get_table_names())
    assert {table.name for table in SQLModel.metadata.sorted_tables} <= tables
    assert _differences(engine) == []


def test_the_test_database_was_migrated_from_empty_and_matches_the_models(migrated):
    # on PostgreSQL (TEST_DATABASE_URL) the session started from an empty schema
    assert _differences(migrated) == []
