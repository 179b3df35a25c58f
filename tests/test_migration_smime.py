"""Migration 0013 (S/MIME): a database at the previous head (0012) with servers in place gains the
S/MIME column (empty: no S/MIME) and the recipients' certificate table; downgrading drops them and
keeps every server."""
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from sqlalchemy import inspect

from webapp import db


def _server_rows(connection) -> list:
    return connection.execute(sa.text("SELECT id, description FROM mail_server ORDER BY id")).all()


def test_0013_upgrades_a_database_with_servers_and_downgrades_again(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'at-0012.sqlite3'}")
    try:
        db.upgrade(engine, "0012")
        now = datetime(2026, 12, 1, tzinfo=UTC)
        with engine.begin() as connection:
            portal_id = connection.execute(sa.text(
                "INSERT INTO portal (slug, name, base_url, egress_allow, egress_deny, delivery_policy, admin_address, "
                "created_at) VALUES ('help', 'Help', 'https://help.example', '', '', 'failover', '', :now) RETURNING id"),
                {"now": now}).scalar_one()
            table = sa.Table("mail_server", sa.MetaData(), autoload_with=connection)
            values = {"portal_id": portal_id, "position": 1, "enabled": True, "version": 1, "description": "Relay",
                      "protocol": "smtp", "settings": {"host": "smtp.example.com"}, "timeout": 10,
                      "max_connections": 5, "from_address": "a@example.com", "sender_name": "", "reply_to": "",
                      "admin_address": "", "failing_reason": "", "held_reason": "", "last_check_kind": "",
                      "last_check_summary": "", "created_at": now, "updated_at": now, "proxy": {}, "receiver": {}, "options": {}}
            connection.execute(table.insert().values(**{k: v for k, v in values.items() if k in table.c}))
            before = _server_rows(connection)

        db.upgrade(engine)
        inspector = inspect(engine)
        assert "smime" in {c["name"] for c in inspector.get_columns("mail_server")}
        assert {c["name"] for c in inspector.get_columns("smime_certificate")} >= {
            "portal_id", "address", "der", "subject", "issuer", "not_after"}
        with engine.connect() as connection:
            assert _server_rows(connection) == before
            assert connection.execute(sa.text("SELECT smime FROM mail_server")).scalar_one() == "{}"

        command.downgrade(db.alembic_config(engine), "0012")
        inspector = inspect(engine)
        assert "smime" not in {c["name"] for c in inspector.get_columns("mail_server")}
        assert "smime_certificate" not in inspector.get_table_names()
        with engine.connect() as connection:
            assert _server_rows(connection) == before
    finally:
        engine.dispose()
