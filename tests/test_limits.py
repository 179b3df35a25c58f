"""Slow servers cannot starve the app: checks and sample mails are bounded per portal, per
server and per process, answered "busy" at once beyond that, and hold no database connection
while they wait; sample mails are limited per user; a database that refuses writes is a 503.
Rate limits hold across worker processes: two app processes sharing the database (or Redis)
count failed sign-ins together."""
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import requests

import pytest
from sqlmodel import select

from tests.conftest import Client
from webapp import create_app, db
from webapp.models import AuditEvent, MailServer

from .test_server_checks import peer_form, saved_server


def hanging_checks(app, server_ids, email="staff@example.com"):
    """Start a check of each server in its own thread (each its own browser); returns the threads."""
    threads = []
    for server_id in server_ids:
        client = Client(app).login(email)
        thread = threading.Thread(target=client.post, args=(f"/p/help/servers/{server_id}/check",),
                                  kwargs={"htmx": True}, daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def wait_for(condition, seconds=10.0):
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "the hanging checks did not start"
        time.sleep(0.02)


@pytest.fixture
def silent_servers(app, make, portal, smtp_peer):
    peer = smtp_peer("silent")
    servers = [make.server(portal, description=f"Silent {n}", timeout=4,
                           settings={"host": "127.0.0.1", "port": peer.port, "security": "tls"})
               for n in range(3)]
    return peer, servers


def test_a_portal_gets_two_checks_at_once_and_busy_beyond(app, staff, silent_servers):
    peer, servers = silent_servers
    threads = hanging_checks(app, [s.id for s in servers[:2]])
    wait_for(lambda: len(peer.connections) >= 2)
    third = staff.post(f"/p/help/servers/{servers[2].id}/check", htmx=True)
    assert third.status_code == 429
    assert "Busy: try again in a moment." in third.text
    assert "This portal already has 2 checks or sample mails running" in third.text
    assert app.extensions["mailroom.engine"].pool.checkedout() == 0  # no connection held while they wait
    listing = staff.get("/p/help/servers/")  # pages are served meanwhile
    assert listing.status_code == 200 and "Silent 0" in listing.text
    assert all(thread.is_alive() for thread in threads)  # the two are still waiting on the silent server
    for thread in threads:
        thread.join(15)


def test_a_server_gets_no_more_connections_than_its_limit(app, staff, silent_servers):
    peer, servers = silent_servers
    with app.app_context():
        db.session().get(MailServer, servers[0].id).max_connections = 1
        db.session().commit()
    threads = hanging_checks(app, [servers[0].id])
    wait_for(lambda: len(peer.connections) >= 1)
    again = staff.post(f"/p/help/servers/{servers[0].id}/check", htmx=True)
    assert again.status_code == 429
    assert "its “Max. concurrent connections”" in again.text
    for thread in threads:
        thread.join(15)


def test_the_form_says_what_max_concurrent_connections_limits(admin):
    form = admin.get("/p/help/servers/new").text
    help_text = re.search(r'<small id="max_connections-help"[^>]*>([^<]*)</small>', form).group(1)
    assert "Validate and sample mails" in help_text  # what it limits
    assert "in each app process (gunicorn worker)" in help_text  # where checks count them
    assert "Delivery counts them across every worker on every host" in help_text
    assert "busy, try" in help_text  # what happens beyond it


def test_the_process_limit_holds_across_portals(app, make, portal, smtp_peer):
    app.extensions["mailroom.slots"].per_process = 2
    peer = smtp_peer("silent")
    other = make.portal(slug="other", name="Other")
    make.member(portal, "staff@example.com", "staff")
    first = make.server(portal, timeout=4, settings={"host": "127.0.0.1", "port": peer.port, "security": "tls"})
    second = make.server(portal, timeout=4, settings={"host": "127.0.0.1", "port": peer.port, "security": "tls"})
    third = make.server(other, timeout=4, settings={"host": "127.0.0.1", "port": peer.port, "security": "tls"})
    threads = hanging_checks(app, [first.id, second.id])
    wait_for(lambda: len(peer.connections) >= 2)
    make.member(other, "elsewhere@example.com", "staff")
    answer = Client(app).login("elsewhere@example.com").post(f"/p/other/servers/{third.id}/check", htmx=True)
    assert answer.status_code == 429 and "Mailroom is already talking to 2 mail servers" in answer.text
    for thread in threads:
        thread.join(15)


def test_sample_mails_are_limited_per_user(app, admin, staff, smtp_peer):
    peer = smtp_peer("plain")
    server = saved_server(app, admin, peer_form(peer, security="none", auth_type="none"))
    answers = [staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.test"}, htmx=True)
               for _ in range(11)]
    assert [a.status_code for a in answers] == [200] * 10 + [429]
    assert "Too many requests (10 per 1 minute)" in answers[-1].text
    assert len(peer.messages) == 10
    assert admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.test"},
                      htmx=True).status_code == 200  # another user has their own count


@pytest.fixture
def quick_to_give_up(app, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("holds SQLite's write lock; on PostgreSQL the same handler answers (tested on SQLite)")
    return create_app({**app.config, "DATABASE_BUSY_TIMEOUT": 0.3}, instance_path=app.instance_path)


def test_a_sample_that_went_out_says_so_even_when_history_cannot_be_written(app, admin, smtp_peer, caplog,
                                                                           quick_to_give_up):
    peer = smtp_peer("plain")
    server = saved_server(app, admin, peer_form(peer, security="none", auth_type="none"))
    staff = Client(quick_to_give_up).login("admin@example.com")
    staff.csrf_token()  # stored in the session before the database is locked
    blocker = sqlite3.connect(app.config["DATABASE_URL"].removeprefix("sqlite:///"))
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        answer = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.test"}, htmx=True)
        saved = staff.post(f"/p/help/servers/{server.id}/edit",
                           peer_form(peer, security="none", auth_type="none", version=str(server.version),
                                     description="Renamed while locked"))
    finally:
        blocker.rollback()
        blocker.close()
    assert answer.status_code == 200
    assert "Email server accepted mail for delivery." in answer.text
    assert "could not write it into History" in answer.text
    assert len(peer.messages) == 1
    assert "but the database refused to record it" in caplog.text
    assert saved.status_code == 503 and "cannot use its database right now" in saved.text
    with app.app_context():
        assert db.session().exec(select(AuditEvent).where(AuditEvent.action == "server.sample_sent")).first() is None
        assert db.session().get(MailServer, server.id).description == "Office relay"


# -- rate limits hold across processes ---------------------------------------------------------------

SERVE = "from webapp import create_app; from werkzeug.serving import run_simple; " \
        "run_simple('127.0.0.1', {port}, create_app(), threaded=True)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_processes(tmp_path, request):
    """Start two app processes on one SQLite file (and, for "redis", one Redis); yields their URLs."""
    from tests.conftest import SECRET_KEYS, Factory

    store = request.param
    if store == "redis":
        from tests.test_sessions import REDIS, redis_answers
        if not redis_answers():
            pytest.fail("no Redis on 127.0.0.1:6379: the suite needs one (make test and CI run with it)")
    path = tmp_path / "shared.sqlite3"
    env = {**os.environ, "MAILROOM_DATABASE_URL": f"sqlite:///{path}", "MAILROOM_SECRET_KEY": "two-processes",
           "MAILROOM_SECRET_KEYS": SECRET_KEYS, "MAILROOM_INSTANCE_PATH": str(tmp_path / "instance"),
           "MAILROOM_LOG_LEVEL": "WARNING", "MAILROOM_RATELIMIT_KEY_PREFIX": f"mailroom-test-{uuid.uuid4().hex}"}
    if store == "redis":
        env["MAILROOM_REDIS_URL"] = f"redis://{REDIS[0]}:{REDIS[1]}/15"
    first = create_app({"DATABASE_URL": env["MAILROOM_DATABASE_URL"], "SECRET_KEY": "two-processes",
                        "SECRET_KEYS": SECRET_KEYS}, instance_path=env["MAILROOM_INSTANCE_PATH"])  # migrates
    Factory(first).user("someone@example.com")
    first.extensions["mailroom.engine"].dispose()
    ports = [free_port(), free_port()]
    processes = [subprocess.Popen([sys.executable, "-c", SERVE.format(port=port)], env=env, cwd=os.getcwd(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, process in zip(urls, processes):
            end = time.monotonic() + 30
            while True:
                assert process.poll() is None, process.stderr.read().decode()[-2000:]
                try:
                    if requests.get(url + "/login", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < end, "an app process did not start"
                time.sleep(0.1)
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


def failed_sign_in(browser: requests.Session, url: str) -> int:
    page = browser.get(url + "/login").text
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
    return browser.post(url + "/login", data={"email": "someone@example.com", "password": "wrong",
                                              "csrf_token": token}, allow_redirects=False).status_code


@pytest.mark.parametrize("two_processes", ["database", "redis"], indirect=True)
def test_failed_sign_ins_are_counted_by_every_process_together(two_processes):
    browser = requests.Session()  # the same attacker, alternating between the two processes
    answers = [failed_sign_in(browser, two_processes[n % 2]) for n in range(12)]
    assert answers[:10] == [422] * 10 and answers[10:] == [429, 429]


class Clock:
    """limit_storage's clock, moved on by the test."""

    def __init__(self):
        self.now = time.time()

    def time(self) -> float:
        return self.now


@pytest.fixture
def storage(app, monkeypatch):
    from webapp import limit_storage

    clock = Clock()
    monkeypatch.setattr(limit_storage, "time", clock)
    with app.app_context():
        limit_storage.DatabaseStorage().reset()
        yield limit_storage.DatabaseStorage(), clock


def test_a_counted_window_ends_and_the_next_hit_starts_it_anew(storage):
    store, clock = storage
    started = clock.now
    assert [store.incr("sample:1", 60) for _ in range(3)] == [1, 2, 3]
    assert (store.get("sample:1"), store.get_expiry("sample:1")) == (3, started + 60)
    clock.now += 61
    assert (store.get("sample:1"), store.get_expiry("sample:1")) == (0, clock.now)
    assert store.incr("sample:1", 60) == 1
    assert store.get_expiry("sample:1") == clock.now + 60


def test_ended_windows_are_cleared_away_when_a_key_starts_one(app, storage):
    from webapp.models import RateCount

    store, clock = storage
    store.incr("sign-in:a", 60)
    store.incr("sign-in:b", 600)
    clock.now += 61
    store.incr("sign-in:b", 600)  # a window under way: nothing is cleared
    assert len(db.session().exec(select(RateCount)).all()) == 2
    store.incr("sign-in:c", 60)
    assert len(db.session().exec(select(RateCount)).all()) == 2  # "a" went, "b" and "c" are left


def test_a_request_reads_what_it_counted_without_asking_the_database(app, storage):
    from sqlalchemy import event

    store, _ = storage
    store.incr("user:7", 60)  # another request's hit
    statements = []
    engine = db.engine()
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        with app.test_request_context("/"):
            count = store.incr("user:7", 60)
            windows = [(store.get("user:7"), store.get_expiry("user:7")) for _ in range(2)]
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert count == 2 and windows[0] == windows[1] and windows[0][0] == 2
    assert len(statements) == 1  # the upsert alone
