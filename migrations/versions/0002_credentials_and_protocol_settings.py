"""credentials apart from servers, protocol settings typed per protocol

Every server's SMTP columns become its `settings`; its authentication becomes a row of
`credential`. A server that signed in over an unencrypted connection (security None or
Automatic) gets "Allow sign-in without encryption" ticked, so it keeps working, visibly. Stored password tokens are copied as they are (no key is needed to
migrate): a payload written before this revision is the bare password, which
credentials.py still reads. Positions are renumbered 1..n per portal, then made unique.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
import hashlib
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465, "auto": 587}
OLD_COLUMNS = ("host", "port", "security", "verify_cert", "ca_cert", "auth_type", "username", "password_secret",
               "auth_mechanism")


def upgrade() -> None:
    op.create_table(
        "credential",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("username", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("mechanism", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("provider", sa.JSON(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("bound_to", sa.JSON(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("granted_scopes", sa.Text(), nullable=False),
        sa.Column("consented_by", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("consented_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("needs_reauthorization", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["server_id"], ["mail_server.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("server_id"),
    )
    with op.batch_alter_table("user") as batch:
        batch.add_column(sa.Column("must_change_password", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("mail_server") as batch:
        batch.add_column(sa.Column("settings", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
        batch.add_column(sa.Column("last_check_kind", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False,
                                   server_default=""))

    _carry_servers_over(op.get_bind())

    with op.batch_alter_table("mail_server") as batch:
        for column in OLD_COLUMNS:
            batch.drop_column(column)
        batch.create_unique_constraint("uq_mail_server_portal_id_position", ["portal_id", "position"])


def _carry_servers_over(connection) -> None:
    servers = sa.table(
        "mail_server", sa.column("id"), sa.column("portal_id"), sa.column("position"), sa.column("settings", sa.JSON),
        *[sa.column(name) for name in OLD_COLUMNS])
    credentials = sa.table(
        "credential", *[sa.column(name) for name in (
            "server_id", "kind", "username", "mechanism", "secret", "revision", "granted_scopes", "consented_by",
            "last_error", "needs_reauthorization")],
        sa.column("updated_at", sa.DateTime(timezone=True)), sa.column("provider", sa.JSON),
        sa.column("bound_to", sa.JSON))
    rows = connection.execute(sa.select(servers).order_by(servers.c.portal_id, servers.c.position,
                                                          servers.c.id)).mappings().all()
    positions: dict[int, int] = {}
    now = datetime.now(UTC)
    for row in rows:
        positions[row["portal_id"]] = positions.get(row["portal_id"], 0) + 1
        security = row["security"] or "starttls"
        basic = row["auth_type"] == "basic"
        settings = {"host": row["host"] or "", "port": row["port"] or DEFAULT_PORTS.get(security, 587),
                    "security": security, "verify_cert": bool(row["verify_cert"]), "ca_cert": row["ca_cert"] or "",
                    "local_hostname": "",
                    # such a server signed in without encryption before: it keeps doing so, visibly
                    "plaintext_auth": basic and security in ("none", "auto")}
        connection.execute(servers.update().where(servers.c.id == row["id"]).values(
            settings=settings, position=-positions[row["portal_id"]]))
        connection.execute(credentials.insert().values(
            server_id=row["id"], kind="password" if basic else "none",
            username=(row["username"] or "") if basic else "", mechanism=row["auth_mechanism"] or "auto",
            provider={}, secret=row["password_secret"] if basic else None,
            bound_to=_destination(settings) if basic and row["password_secret"] else {},
            revision=1, granted_scopes="", consented_by="", last_error="", needs_reauthorization=False,
            updated_at=now))
    connection.execute(servers.update().values(position=-servers.c.position))


def _destination(settings: dict) -> dict:
    """SmtpSettings.destination() as of this revision."""
    ca = settings["ca_cert"].strip()
    return {"protocol": "smtp", "host": settings["host"].strip().lower(), "port": settings["port"],
            "security": settings["security"], "verify_cert": settings["verify_cert"],
            "ca_cert": hashlib.sha256(ca.encode()).hexdigest() if ca else "",
            "plaintext_auth": settings["plaintext_auth"]}


def downgrade() -> None:
    raise NotImplementedError("0002 cannot be undone: restore the backup taken before the upgrade")
