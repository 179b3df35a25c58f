"""Fixtures: an app on a migrated database (SQLite, or TEST_DATABASE_URL), factories, signed-in clients."""
import logging
import os
import re
import socket
import threading

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlmodel import SQLModel, select
from werkzeug.serving import make_server

from webapp import create_app, db
from webapp.models import AppSetting, Credential, MailServer, Membership, Portal, Role, User
from webapp.security import hash_password

pytest_plugins = ["tests.peers.network", "tests.peers.tls", "tests.peers.smtp", "tests.peers.echo", "tests.peers.proxies", "tests.peers.dovecot",
                  "tests.peers.oauth", "tests.peers.xoauth2", "tests.peers.graph", "tests.peers.gmail",
                  "tests.peers.ews", "tests.peers.dns"]

PASSWORD = "correct horse battery"
SECRET_KEYS = Fernet.generate_key().decode()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"
    engine = db.make_engine(url)
    with engine.begin() as connection:  # start from an empty schema, as a fresh install does
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def migrated(database_url):
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


class _AppTracebacks(logging.Handler):
    """Collects the tracebacks the app logged: ERROR or worse, with exc_info, from Mailroom,
    Flask or Werkzeug (aiosmtpd's own tracebacks about its clients are not the app's)."""

    SOURCES = ("webapp", "flask", "werkzeug")

    def __init__(self):
        super().__init__(logging.ERROR)
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.name.startswith(self.SOURCES):
            self.messages.append(self.format(record))


@pytest.fixture(autouse=True)
def no_server_errors():
    """Fails the test when the app logged a traceback (a 500 behind a page that looked fine)."""
    handler = _AppTracebacks()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
    if handler.messages:
        pytest.fail("the app logged a traceback:\n\n" + "\n\n".join(handler.messages), pytrace=False)


LOOPBACK = "127.0.0.0/8\n::1"  # the test peers listen there; the egress policy refuses it by default


@pytest.fixture
def app(migrated, database_url, tmp_path, test_ca_file, dns_zone):
    app = create_app({
        "TESTING": True,
        "DATABASE_URL": database_url,
        "AUTO_MIGRATE": False,
        "SECRET_KEY": "test-secret-key",
        "SECRET_KEYS": SECRET_KEYS,
        "EXTRA_CA_CERTS": test_ca_file,
        "DNS_RESOLVER": dns_zone.address,  # the loopback DNS server: no lookup leaves this machine
    }, instance_path=str(tmp_path / "instance"))
    with app.app_context():
        db.session().add(AppSetting(name="egress", value={"allow": LOOPBACK, "deny": ""}))
        db.session().commit()
    yield app
    app.extensions["mailroom.engine"].dispose()
    with migrated.begin() as connection:
        for table in reversed(SQLModel.metadata.sorted_tables):
            connection.execute(table.delete())


@pytest.fixture
def session(app):
    with app.app_context():
        yield db.session()


class Factory:
    def __init__(self, app):
        self.app = app

    def _add(self, row):
        with self.app.app_context():
            db.session().add(row)
            db.session().commit()
            return row

    def user(self, email="someone@example.com", superadmin=False, **values) -> User:
        return self._add(User(email=email, password_hash=hash_password(PASSWORD), is_superadmin=superadmin,
                              **values))

    def portal(self, slug="help", name="Help Desk", base_url="https://help.example.com") -> Portal:
        return self._add(Portal(slug=slug, name=name, base_url=base_url))

    def member(self, portal, email, role=Role.ADMIN) -> User:
        user = self.user(email)
        self._add(Membership(user_id=user.id, portal_id=portal.id, role=role))
        return user

    def server(self, portal, settings=None, credential=None, **values) -> MailServer:
        """A saved server (SMTP, no authentication, 127.0.0.1:25 unless `settings` says otherwise)."""
        with self.app.app_context():
            taken = db.session().exec(select(MailServer).where(MailServer.portal_id == portal.id)).unique().all()
        defaults = dict(portal_id=portal.id, description="Relay", from_address="helpdesk@example.com",
                        sender_name="Help Desk", position=len(taken) + 1)
        server = MailServer(**{**defaults, **values})
        server.settings = {"host": "127.0.0.1", "port": 25, "security": "none", "verify_cert": True, "ca_cert": "",
                           "local_hostname": "", "plaintext_auth": False, **(settings or {})}
        server.credential = Credential(**(credential or {}))
        return self._add(server)


@pytest.fixture
def make(app) -> Factory:
    return Factory(app)


class Client:
    """A test client that signs in and sends the CSRF token the way the pages do."""

    def __init__(self, app):
        self.http = app.test_client()
        self._token = None

    def login(self, email, password=PASSWORD):
        response = self.http.post("/login", data={"email": email, "password": password,
                                                  "csrf_token": self.csrf_token()})
        assert response.status_code == 303, response.text
        self._token = None  # a new session, a new token
        return self

    def csrf_token(self) -> str:
        if self._token is None:
            page = self.http.get("/login").text
            self._token = csrf_token_in(page)
        return self._token

    def get(self, url, **kwargs):
        return self.http.get(url, **kwargs)

    def post(self, url, data=None, htmx=False, csrf=True, **kwargs):
        data = dict(data or {})
        headers = dict(kwargs.pop("headers", {}))
        if csrf:
            data.setdefault("csrf_token", self.csrf_token())
        if htmx:
            headers["HX-Request"] = "true"
        return self.http.post(url, data=data, headers=headers, **kwargs)


def csrf_token_in(page: str) -> str:
    return re.search(r'<input[^>]*name="csrf_token"[^>]*value="([^"]+)"', page).group(1)


@pytest.fixture
def client(app) -> Client:
    return Client(app)


@pytest.fixture
def portal(make) -> Portal:
    return make.portal()


@pytest.fixture
def admin(make, portal, client) -> Client:
    make.member(portal, "admin@example.com", Role.ADMIN)
    return client.login("admin@example.com")


@pytest.fixture
def staff(make, portal, app) -> Client:
    make.member(portal, "staff@example.com", Role.STAFF)
    return Client(app).login("staff@example.com")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_url(app):
    """The app on http://127.0.0.1:<port>, served by werkzeug in a thread until the test ends
    (the `app` fixture is per test): for browsers and concurrent clients."""
    server = make_server("127.0.0.1", _free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
