"""Fixtures: an app on a migrated database (SQLite, or TEST_DATABASE_URL), factories, signed-in clients."""
import os
import re

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlmodel import SQLModel

from webapp import create_app, db
from webapp.models import MailServer, Membership, Portal, Role, User
from webapp.security import hash_password

pytest_plugins = ["tests.peers.network", "tests.peers.smtp"]

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


@pytest.fixture
def app(migrated, database_url, tmp_path):
    app = create_app({
        "TESTING": True,
        "DATABASE_URL": database_url,
        "AUTO_MIGRATE": False,
        "SECRET_KEY": "test-secret-key",
        "SECRET_KEYS": SECRET_KEYS,
    }, instance_path=str(tmp_path / "instance"))
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

    def user(self, email="someone@example.com", superadmin=False) -> User:
        return self._add(User(email=email, password_hash=hash_password(PASSWORD), is_superadmin=superadmin))

    def portal(self, slug="help", name="Help Desk", base_url="https://help.example.com") -> Portal:
        return self._add(Portal(slug=slug, name=name, base_url=base_url))

    def member(self, portal, email, role=Role.ADMIN) -> User:
        user = self.user(email)
        self._add(Membership(user_id=user.id, portal_id=portal.id, role=role))
        return user

    def server(self, portal, **values) -> MailServer:
        defaults = dict(portal_id=portal.id, description="Relay", host="127.0.0.1", port=25, security="none",
                        from_address="helpdesk@example.com", sender_name="Help Desk", position=1)
        return self._add(MailServer(**{**defaults, **values}))


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
        return self

    def csrf_token(self) -> str:
        if self._token is None:
            page = self.http.get("/login").text
            self._token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
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
