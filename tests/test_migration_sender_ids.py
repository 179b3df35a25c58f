"""Migration 0015 (sender IDs, credential owners, pinned mail, recovery links): a database at 0014 with
data is upgraded (the rows read back, the new columns empty), matches the models, and goes back down."""
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from sqlalchemy import inspect

from webapp import db

from .test_migrations import _differences, empty_database  # noqa: F401  (fixture)

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
PORTAL = sa.table("portal", sa.column("id"), sa.column("slug"), sa.column("name"), sa.column("base_url"),
                  sa.column("egress_allow"), sa.column("egress_deny"), sa.column("created_at"),
                  sa.column("delivery_policy"), sa.column("admin_address"), sa.column("failover_reason"))
USER = sa.table("user", sa.column("id"), sa.column("email"), sa.column("name"), sa.column("password_hash"),
                sa.column("is_superadmin"), sa.column("is_active"), sa.column("must_change_password"),
                sa.column("created_at"))
MEMBERSHIP = sa.table("membership", sa.column("id"), sa.column("user_id"), sa.column("portal_id"), sa.column("role"))
CREDENTIAL = sa.table("smtp_credential", *[sa.column(name) for name in (
    "id", "portal_id", "name", "username", "password_hash", "from_policy", "from_addresses", "client_networks",
    "plain_networks", "max_message_bytes", "minute_window", "minute_count", "day_window", "day_count", "created_by",
    "created_at", "last_client")])


def test_0014_with_data_goes_up_to_0015_and_back(empty_database):
    engine = db.make_engine(empty_database)
    try:
        db.upgrade(engine, "0014")
        with engine.begin() as connection:
            portal = connection.execute(PORTAL.insert().values(
                slug="help", name="Help", base_url="", egress_allow="", egress_deny="", created_at=NOW,
                delivery_policy="failover", admin_address="", failover_reason="").returning(PORTAL.c.id)).scalar_one()
            user = connection.execute(USER.insert().values(
                email="ann@example.com", name="", password_hash="x", is_superadmin=False, is_active=True,
                must_change_password=False, created_at=NOW).returning(USER.c.id)).scalar_one()
            connection.execute(MEMBERSHIP.insert().values(user_id=user, portal_id=portal, role="admin"))
            connection.execute(CREDENTIAL.insert().values(
                portal_id=portal, name="Scanner", username="help-1", password_hash="x", from_policy="listed",
                from_addresses="scanner@example.com", client_networks="", plain_networks="",
                max_message_bytes=1024, minute_window=0, minute_count=0, day_window=0, day_count=0,
                created_by="ann@example.com", created_at=NOW, last_client=""))

        db.upgrade(engine)
        assert _differences(engine) == []
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT role, sender_id FROM membership")).one() == ("admin", None)
            assert connection.execute(sa.text("SELECT username, owner_id FROM smtp_credential")).one() == ("help-1",
                                                                                                           None)
            connection.execute(sa.text("INSERT INTO sender_id (portal_id, address, created_by, created_at) "
                                       "VALUES (:p, 'alerts@example.com', '', :now)"), {"p": portal, "now": NOW})
            connection.commit()
            with_id = connection.execute(sa.text("SELECT id FROM sender_id")).scalar_one()
            connection.execute(sa.text("UPDATE membership SET sender_id = :s"), {"s": with_id})
            connection.commit()
        if engine.dialect.name == "sqlite":
            with engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []

        command.downgrade(db.alembic_config(engine), "0014")
        tables = set(inspect(engine).get_table_names())
        assert "sender_id" not in tables and "password_reset" not in tables
        assert "sender_id" not in {c["name"] for c in inspect(engine).get_columns("membership")}
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT role FROM membership")).scalar_one() == "admin"
            assert connection.execute(sa.text("SELECT username FROM smtp_credential")).scalar_one() == "help-1"
        db.upgrade(engine)
        assert _differences(engine) == []
    finally:
        engine.dispose()
