"""Huey's SQLite storage for the delivery jobs (imported when the queue is first used, as Huey is)."""
from huey import SqliteHuey as HueySqliteHuey
from huey.storage import SqliteStorage


class _JobStorage(SqliteStorage):
    """Huey's SQLite storage as the app's database is set up (db.py): WAL with synchronous=NORMAL.
    Huey's default (synchronous=FULL) waits for the disk at every commit, holding the file's write
    lock meanwhile, so every message handed in and every job taken waited for an fsync and all of
    them queued behind each other (bench/README.md, the API and the drain). A crash may lose the
    last jobs, never the file; jobs only wake workers up, the outbox row is the record, and the
    sweep makes a job for due mail that has none."""

    def _create_connection(self):
        connection = super()._create_connection()
        connection.execute("pragma synchronous=NORMAL")
        return connection


class SqliteHuey(HueySqliteHuey):
    storage_class = _JobStorage
