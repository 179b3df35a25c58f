"""A worker recovers when its SQLite database was read-only or locked for a moment: the pages
say so with a 503 meanwhile, and the same app (the same pool of connections) writes again as
soon as the file allows it, without a restart.

SQLite opens a file it may not write read-only, and that connection stays read-only after the
file is writable again; a pool keeping it answered 503 until the process restarted. Each case
uses its own database file, so that no other connection in this process has the file open (SQLite
would otherwise share that connection's writable file descriptor with a new one).

Read-only: the mode bits for an ordinary user; for root, whom mode bits do not stop, the
immutable attribute (chattr +i) where the file system has it.
"""
import os
import shutil
import sqlite3
import subprocess

import pytest
from sqlmodel import select

from tests.conftest import SECRET_KEYS, Client, Factory
from webapp import create_app, db
from webapp.models import Portal


def read_only(path: str):
    """Make `path` unwritable for this process; returns how to undo it (None: cannot here)."""
    if os.geteuid() != 0:
        mode = os.stat(path).st_mode
        os.chmod(path, 0o444 if os.path.isfile(path) else 0o555)
        return lambda: os.chmod(path, mode)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", path], capture_output=True).returncode == 0:
        return lambda: subprocess.run(["chattr", "-i", path], check=True)
    return None


@pytest.fixture
def own_database(tmp_path):
    path = tmp_path / "alone" / "mailroom.sqlite3"
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{path}", "AUTO_MIGRATE": True,
                      "DATABASE_BUSY_TIMEOUT": 0.3, "SECRET_KEY": "test-secret-key", "SECRET_KEYS": SECRET_KEYS},
                     instance_path=str(tmp_path / "instance"))
    Factory(app).user("root@example.com", superadmin=True)
    yield app, str(path)
    app.extensions["mailroom.engine"].dispose()


def new_portal(client: Client, slug: str):
    return client.post("/portals/new", {"name": f"Portal {slug}", "slug": slug, "base_url": ""})


def portals(app) -> list[str]:
    with app.app_context():
        return sorted(db.session().exec(select(Portal.slug)).all())


@pytest.mark.parametrize("what", ["file", "folder"])
def test_after_the_database_was_read_only_the_same_app_writes_again(own_database, what):
    app, path = own_database
    root = Client(app).login("root@example.com")
    root.csrf_token()
    app.extensions["mailroom.engine"].dispose()  # the pool opens its connections while the file is read-only
    undo = read_only(path if what == "file" else os.path.dirname(path))
    if undo is None:
        pytest.skip("cannot make a file read-only for root here (no chattr +i)")
    try:
        refused = new_portal(root, "during")
        page = root.get("/")
    finally:
        undo()
    assert refused.status_code == 503 and "cannot use its database right now" in refused.text
    # a read-only file can still be read; in a read-only folder SQLite cannot open it at all (503, not 500)
    assert page.status_code == (200 if what == "file" else 503)
    assert new_portal(root, "after").status_code == 303
    assert new_portal(root, "again").status_code == 303
    assert portals(app) == ["after", "again"]


def test_after_the_database_was_locked_the_same_app_writes_again(own_database):
    app, path = own_database
    root = Client(app).login("root@example.com")
    root.csrf_token()
    blocker = sqlite3.connect(path)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        refused = new_portal(root, "during")
    finally:
        blocker.rollback()
        blocker.close()
    assert refused.status_code == 503
    assert new_portal(root, "after").status_code == 303
    assert portals(app) == ["after"]
