"""Message options: a server's Organization, receipts, priority, sensitivity, importance and custom
headers (mail_server.options). Microsoft Graph servers kept an importance and X- headers in their
settings: those move into the options, which every protocol now has.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""
import json
import re

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

SERVERS = sa.table("mail_server", sa.column("id"), sa.column("protocol"), sa.column("settings", sa.JSON),
                   sa.column("options", sa.JSON))
HEADER_LINE = re.compile(r"^(X-[A-Za-z0-9-]+):[ \t]*(.*)$", re.IGNORECASE)


def upgrade() -> None:
    with op.batch_alter_table("mail_server", schema=None) as batch_op:
        batch_op.add_column(sa.Column("options", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    connection = op.get_bind()
    for server_id, settings in connection.execute(
            sa.select(SERVERS.c.id, SERVERS.c.settings).where(SERVERS.c.protocol == "graph")).all():
        settings = _loaded(settings)
        importance = settings.pop("importance", "normal")
        lines = (settings.pop("headers", "") or "").splitlines()
        headers = [{"name": m.group(1), "value": m.group(2).strip()}
                   for m in (HEADER_LINE.match(line.strip()) for line in lines) if m]
        options = {}
        if importance in ("high", "low") or headers:
            options = {"organization": "", "read_receipt_to": "", "return_receipt_to": "", "priority": "",
                       "sensitivity": "", "importance": importance if importance in ("high", "low") else "",
                       "headers": headers}
        connection.execute(SERVERS.update().where(SERVERS.c.id == server_id).values(settings=settings,
                                                                                     options=options))


def downgrade() -> None:
    connection = op.get_bind()
    for server_id, settings, options in connection.execute(
            sa.select(SERVERS.c.id, SERVERS.c.settings, SERVERS.c.options).where(SERVERS.c.protocol == "graph")).all():
        settings, options = _loaded(settings), _loaded(options)
        settings["importance"] = options.get("importance") if options.get("importance") in ("high", "low") \
            else "normal"
        settings["headers"] = "".join(f"{h['name']}: {h['value']}\n" for h in options.get("headers") or ()
                                      if str(h.get("name", "")).lower().startswith("x-"))
        connection.execute(SERVERS.update().where(SERVERS.c.id == server_id).values(settings=settings))
    with op.batch_alter_table("mail_server", schema=None) as batch_op:
        batch_op.drop_column("options")


def _loaded(value) -> dict:
    if isinstance(value, str):
        value = json.loads(value or "{}")
    return dict(value or {})
