"""The first migration creates every table, and the schema matches the models; a database
at the previous revision, with data, is upgraded and reads back the same."""
import secrets
import socket
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.fernet import Fernet
from sqlalchemy import inspect
from sqlmodel import SQLModel, select

from webapp import checks, create_app, db
from webapp.credentials import unseal
from webapp.crypto import SecretBox
from webapp.mail.auth import NoAuth, PasswordAuth
from webapp.mailservers import servers_of, settings_of
from webapp.models import AuditEvent, Credential, MailServer, Membership, Portal, User

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"
OLD_SERVER_COLUMNS = {"host", "port", "security", "verify_cert", "ca_cert", "auth_type", "username",
                      "password_secret", "auth_mechanism"}
CA_CERT = """-----BEGIN CERTIFICATE-----
MIIBszCCAVmgAwIBAgIUJ3nS1m4z0Xl3kP6H9qf1n8Fh0c8wCgYIKoZIzj0EAwIw
FzEVMBMGA1UEAwwMQ29ycCBSb290IENBMB4XDTI2MDEwMTAwMDAwMFoXDTM2MDEw
-----END CERTIFICATE-----
"""


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


# --- a database at 0001, with data, upgraded to head -------------------------------------------

def _postgres_listens() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path):
    """The URL of an empty database of its own: a file in tmp_path, or a new PostgreSQL
    database (never `test`, which the main suite uses) dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.sqlite3'}"
        return
    if not _postgres_listens():
        pytest.skip("no PostgreSQL listens on 127.0.0.1:5432")
    name = f"mailroom_migration_{secrets.token_hex(6)}"
    server = sa.create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with server.connect() as connection:
            connection.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                       "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        server.dispose()


def _at(day: int, hour: int = 9) -> datetime:
    return datetime(2026, 11, day, hour, 30, 15, 123456, tzinfo=UTC)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite gives timestamps back without their zone (they were written in UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# The tables as revision 0001 made them (not the models: they describe the newest schema).
PORTAL = sa.table("portal", sa.column("id"), sa.column("slug"), sa.column("name"), sa.column("base_url"),
                  sa.column("created_at", sa.DateTime(timezone=True)))
USER = sa.table("user", sa.column("id"), sa.column("email"), sa.column("name"), sa.column("password_hash"),
                sa.column("is_superadmin", sa.Boolean), sa.column("is_active", sa.Boolean),
                sa.column("created_at", sa.DateTime(timezone=True)))
MEMBERSHIP = sa.table("membership", sa.column("id"), sa.column("user_id"), sa.column("portal_id"), sa.column("role"))
AUDIT_EVENT = sa.table("audit_event", sa.column("id"), sa.column("portal_id"), sa.column("actor_id"),
                       sa.column("actor"), sa.column("at", sa.DateTime(timezone=True)), sa.column("action"),
                       sa.column("subject"), sa.column("changes", sa.JSON))
MAIL_SERVER = sa.table(
    "mail_server", sa.column("id"),
    *[sa.column(name) for name in (
        "portal_id", "position", "version", "description", "protocol", "host", "port", "security", "ca_cert",
        "timeout", "auth_type", "username", "password_secret", "auth_mechanism", "from_address", "sender_name",
        "reply_to", "admin_address", "max_connections", "last_check_summary")],
    *[sa.column(name, sa.Boolean) for name in ("enabled", "verify_cert", "last_check_ok")],
    *[sa.column(name, sa.DateTime(timezone=True)) for name in ("last_check_at", "created_at", "updated_at")])


def _insert(connection, table, row: dict) -> dict:
    """Insert one row; the row with its new id."""
    new_id = connection.execute(table.insert().values(**row).returning(table.c.id)).scalar_one()
    return {**row, "id": new_id}


def _server(portal: dict, position: int, **values) -> dict:
    """A mail_server row as the app before 0002 saved it."""
    row = dict(portal_id=portal["id"], position=position, enabled=True, version=1, description="", protocol="smtp",
               host="smtp.example.com", port=None, security="starttls", verify_cert=True, ca_cert="", timeout=10,
               auth_type="none", username="", password_secret=None, auth_mechanism="auto",
               from_address=f"{portal['slug']}@example.com", sender_name=portal["name"], reply_to="",
               admin_address="", max_connections=5, last_check_at=None, last_check_ok=None,
               last_check_summary="", created_at=_at(2), updated_at=_at(3))
    return {**row, **values}


def write_0001_rows(connection, box: SecretBox) -> dict:
    """Realistic rows at revision 0001; what was written, with the plain passwords beside it
    (`passwords`: server id -> password) and each portal's servers in their old order."""
    help_desk = _insert(connection, PORTAL, dict(slug="help", name="Help Desk", base_url="https://help.example.com",
                                                 created_at=_at(1)))
    sales = _insert(connection, PORTAL, dict(slug="sales", name="Sales – Europe", base_url="", created_at=_at(1, 10)))
    users = [_insert(connection, USER, dict(email=email, name=name, password_hash=f"$argon2id$v=19$m=65536$x${email}",
                                            is_superadmin=superadmin, is_active=active, created_at=_at(1, hour)))
             for email, name, superadmin, active, hour in [
                 ("root@example.com", "Root", True, True, 8),
                 ("admin@example.com", "Ada Admin", False, True, 11),
                 ("staff@example.com", "Stan Staff", False, False, 12)]]
    root, admin, staff = users
    memberships = [_insert(connection, MEMBERSHIP, dict(user_id=user["id"], portal_id=portal["id"], role=role))
                   for user, portal, role in [(admin, help_desk, "admin"), (staff, help_desk, "staff"),
                                              (admin, sales, "admin")]]

    passwords = {}

    def server(portal, position, password=None, **values):
        if password is not None:
            values.update(auth_type="basic", password_secret=box.encrypt(password))
        row = _insert(connection, MAIL_SERVER, _server(portal, position, **values))
        if password is not None:
            passwords[row["id"]] = password
        return row

    # inserted out of order and interleaved by portal; positions with duplicates and gaps
    primary = server(help_desk, 5, "pässwörd with spaces & \"quotes\"", description="Primary relay",
                     username="helpdesk@example.com", last_check_at=_at(4), last_check_ok=True,
                     last_check_summary="Connected, STARTTLS, signed in")
    sales_backup = server(sales, 7, description="Sales backup", host="backup.sales.example", port=10465,
                          security="tls", enabled=False, version=4)
    office = server(help_desk, 2, "o365-Secret!", description="", host=" Mail.Example.COM ", security="tls",
                    username="relay@example.onmicrosoft.com", auth_mechanism="LOGIN", version=3)
    plain = server(help_desk, 2, "plain:text", description="Old relay", host="10.0.0.25", security="none",
                   username="relay", auth_mechanism="PLAIN", last_check_at=_at(4, 10), last_check_ok=False,
                   last_check_summary="Connection refused")
    sales_primary = server(sales, 3, "sales-pw", description="Sales primary", host="smtp.sales.example", port=587,
                           username="sales", auth_mechanism="CRAM-MD5")
    internal = server(help_desk, 9, "cram-me", description="Internal (private CA)", host="mx.corp.internal",
                      port=2525, security="auto", ca_cert=CA_CERT, verify_cert=False, username="corp\\helpdesk",
                      auth_mechanism="CRAM-MD5")
    # auth switched off after a password had been saved: the old app kept username and token
    no_auth = server(help_desk, 9, description="Anonymous relay", host="relay.example.net", security="auto",
                     username="left-over", password_secret=box.encrypt("left-over"))
    # Basic chosen, password never saved
    sales_unset = server(sales, 3, description="Sales, no password yet", host="smtp2.sales.example",
                         auth_type="basic", username="sales2")

    events = [_insert(connection, AUDIT_EVENT, dict(portal_id=portal_id, actor_id=actor_id, actor=actor, at=at,
                                                    action=action, subject=subject, changes=changes))
              for portal_id, actor_id, actor, at, action, subject, changes in [
                  (None, root["id"], "root@example.com", _at(1, 11), "user.created", "admin@example.com",
                   {"name": [None, "Ada Admin"], "is_superadmin": [None, False]}),
                  (help_desk["id"], admin["id"], "admin@example.com", _at(2), "server.created", "“Primary relay”",
                   {"host": [None, "smtp.example.com"], "port": [None, None], "password": [None, "(set)"]}),
                  (help_desk["id"], None, "gone@example.com", _at(3), "server.reordered", "“Old relay”",
                   {"order": ["Old relay", "Primary relay", "Ünïcödé ✓"]}),
                  (sales["id"], admin["id"], "admin@example.com", _at(4), "server.updated", "“Sales backup”",
                   {"enabled": [True, False], "nested": {"a": [1, 2.5, None]}}),
                  (sales["id"], admin["id"], "admin@example.com", _at(5), "server.updated", "“Sales primary”", {})]]

    return dict(portals=[help_desk, sales], users=users, memberships=memberships, events=events,
                passwords=passwords,
                order={help_desk["id"]: [office, plain, primary, internal, no_auth],
                       sales["id"]: [sales_primary, sales_unset, sales_backup]})


def check_migrated_rows(old: dict, engine) -> None:
    """Everything written at 0001 reads back the same through the models and the app's functions."""
    session = db.session()

    def same(rows, models, names):
        assert [{n: getattr(m, n) for n in names} for m in models] == [{n: r[n] for n in names} for r in rows]

    portals = session.exec(select(Portal).order_by(Portal.id)).all()
    same(old["portals"], portals, ("id", "slug", "name", "base_url"))
    assert [_utc(p.created_at) for p in portals] == [p["created_at"] for p in old["portals"]]

    users = session.exec(select(User).order_by(User.id)).all()
    same(old["users"], users, ("id", "email", "name", "password_hash", "is_superadmin", "is_active"))
    assert [_utc(u.created_at) for u in users] == [u["created_at"] for u in old["users"]]
    assert [u.must_change_password for u in users] == [False] * len(users)

    memberships = session.exec(select(Membership).order_by(Membership.id)).all()
    same(old["memberships"], memberships, ("id", "user_id", "portal_id", "role"))

    events = session.exec(select(AuditEvent).order_by(AuditEvent.id)).all()
    same(old["events"], events, ("id", "portal_id", "actor_id", "actor", "action", "subject", "changes"))
    assert [_utc(e.at) for e in events] == [e["at"] for e in old["events"]]

    for portal in portals:
        servers = servers_of(portal)
        expected = old["order"][portal.id]
        assert [s.id for s in servers] == [row["id"] for row in expected], "the old order, by position then id"
        assert [s.position for s in servers] == list(range(1, len(expected) + 1))
        for server, row in zip(servers, expected):
            _check_server(portal, server, row, old["passwords"].get(row["id"]))

    assert session.exec(select(sa.func.count()).select_from(Credential)).one() == sum(map(len, old["order"].values()))
    columns = {column["name"] for column in inspect(engine).get_columns("mail_server")}
    assert not columns & OLD_SERVER_COLUMNS
    assert {"settings", "last_check_kind"} <= columns


def _check_server(portal, server: MailServer, row: dict, password: str | None) -> None:
    label = f"server {row['id']} ({row['description'] or row['host']})"
    for name in ("portal_id", "enabled", "version", "description", "protocol", "timeout", "max_connections",
                 "from_address", "sender_name", "reply_to", "admin_address", "last_check_ok", "last_check_summary"):
        assert getattr(server, name) == row[name], f"{label}: {name}"
    for name in ("last_check_at", "created_at", "updated_at"):
        assert _utc(getattr(server, name)) == row[name], f"{label}: {name}"
    assert server.last_check_kind == ""

    basic = row["auth_type"] == "basic"
    assert server.settings == {
        "host": row["host"], "port": row["port"] or {"none": 25, "starttls": 587, "tls": 465, "auto": 587}[
            row["security"]],
        "security": row["security"], "verify_cert": row["verify_cert"], "ca_cert": row["ca_cert"],
        "local_hostname": "", "plaintext_auth": basic and row["security"] in ("none", "auto"),
    }, label

    credential = server.credential
    assert credential is not None, f"{label}: its credential is gone"
    assert (credential.kind, credential.username, credential.mechanism) == (
        ("password", row["username"], row["auth_mechanism"]) if basic else ("none", "", row["auth_mechanism"])), label
    assert (credential.provider, credential.revision, credential.needs_reauthorization) == ({}, 1, False), label
    assert credential.updated_at is not None
    if password is None:
        assert (credential.secret, credential.bound_to) == (None, {}), label
    else:
        assert credential.secret == row["password_secret"], f"{label}: the token is copied as it is"
        assert unseal(credential.secret) == {"password": password}, label
        # bound to the destination the app computes: the stored password keeps working
        assert credential.bound_to == settings_of(server.protocol, server.settings).destination(), label

    auth = checks.config_for(portal, server).auth
    if basic:
        assert auth == PasswordAuth(row["username"], password or "", row["auth_mechanism"]), label
    else:
        assert auth == NoAuth(), label


def test_a_database_at_0001_with_data_is_upgraded_and_reads_back_the_same(empty_database, tmp_path):
    key = Fernet.generate_key().decode()
    engine = db.make_engine(empty_database)
    app = None
    try:
        db.upgrade(engine, "0001")
        with engine.begin() as connection:
            old = write_0001_rows(connection, SecretBox([key]))

        db.upgrade(engine)

        app = create_app({"DATABASE_URL": empty_database, "SECRET_KEYS": key, "AUTO_MIGRATE": False,
                          "TESTING": True}, instance_path=str(tmp_path / "instance"))
        with app.app_context():
            check_migrated_rows(old, engine)
        if engine.dialect.name == "sqlite":
            with engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        assert _differences(engine) == []
    finally:
        if app is not None:
            app.extensions["mailroom.engine"].dispose()
        engine.dispose()


# --- 0014 (client certificate, transcripts): upgraded from 0013 with a server in place, and back -----------------------------------

def test_0014_adds_the_client_certificate_and_transcripts_and_goes_back(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'extras.sqlite3'}")
    try:
        db.upgrade(engine, "0013")
        now = datetime(2026, 12, 6, tzinfo=UTC)
        with engine.begin() as connection:
            portal_id = connection.execute(sa.text(
                "INSERT INTO portal (slug, name, base_url, created_at) VALUES ('help', 'Help', "
                "'https://help.example.com', :now) RETURNING id"), {"now": now}).scalar_one()
            server_id = connection.execute(sa.text(
                "INSERT INTO mail_server (portal_id, position, enabled, version, description, protocol, timeout, "
                "from_address, sender_name, reply_to, admin_address, max_connections, last_check_summary, created_at, "
                "updated_at, settings) VALUES (:portal, 1, 1, 3, 'Relay', 'smtp', 10, 'a@example.com', '', '', '', 5, "
                "'', :now, :now, :settings) RETURNING id"),
                {"portal": portal_id, "now": now, "settings": '{"host": "smtp.example.com", "port": 465}'}).scalar_one()

        db.upgrade(engine)
        with engine.begin() as connection:
            row = connection.execute(sa.text("SELECT client_cert, transcripts, version, settings FROM mail_server "
                                             "WHERE id = :id"), {"id": server_id}).one()
            assert (row.client_cert, bool(row.transcripts), row.version) == ("{}", False, 3)
            assert '"smtp.example.com"' in row.settings
            connection.execute(sa.text(
                "INSERT INTO server_secret (server_id, purpose, secret, bound_to, updated_at) VALUES "
                "(:id, 'client_cert', 'sealed', '{}', :now), (:id, 'proxy', 'sealed', '{}', :now)"),
                {"id": server_id, "now": now})
        assert _differences(engine) == []

        command.downgrade(db.alembic_config(engine), "0013")
        columns = {c["name"] for c in inspect(engine).get_columns("mail_server")}
        assert "client_cert" not in columns and "transcripts" not in columns
        with engine.connect() as connection:
            purposes = connection.execute(sa.text("SELECT purpose FROM server_secret")).scalars().all()
            assert purposes == ["proxy"]  # a purpose 0013 does not know is gone with its columns
            assert connection.execute(sa.text("SELECT description FROM mail_server")).scalar_one() == "Relay"
    finally:
        engine.dispose()



# --- 0012: the lists' indexes, added to a database with data and taken away again ----------------

def _indexes(engine, table: str) -> set[str]:
    return {index["name"] for index in inspect(engine).get_indexes(table)}


def test_0016_adds_the_list_indexes_to_a_database_with_data_and_takes_them_away(empty_database):
    engine = db.make_engine(empty_database)
    try:
        db.upgrade(engine, "0015")
        with engine.begin() as connection:
            portal = _insert(connection, PORTAL, dict(slug="help", name="Help Desk", base_url="", created_at=_at(1)))
            events = [_insert(connection, AUDIT_EVENT, dict(portal_id=portal["id"], actor_id=None,
                                                            actor="admin@example.com", at=_at(2, hour),
                                                            action="server.updated", subject=f"“Relay {hour}”",
                                                            changes={"host": ["a", "b"]}))
                      for hour in (9, 10, 11)]
        assert "ix_audit_event_portal_at" not in _indexes(engine, "audit_event")

        db.upgrade(engine)
        assert {"ix_audit_event_portal_at", "ix_audit_event_portal_actor"} <= _indexes(engine, "audit_event")
        assert "ix_portal_name" in _indexes(engine, "portal")
        with engine.connect() as connection:
            rows = connection.execute(sa.select(AUDIT_EVENT.c.id, AUDIT_EVENT.c.subject)
                                      .order_by(AUDIT_EVENT.c.at.desc())).all()
        assert [tuple(row) for row in rows] == [(e["id"], e["subject"]) for e in reversed(events)]
        assert _differences(engine) == []

        command.downgrade(db.alembic_config(engine), "0015")
        assert not {"ix_audit_event_portal_at", "ix_audit_event_portal_actor"} & _indexes(engine, "audit_event")
        assert "ix_portal_name" not in _indexes(engine, "portal")
        with engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(AUDIT_EVENT)).scalar_one() == 3
    finally:
        engine.dispose()
