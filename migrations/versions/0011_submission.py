"""SMTP submission: per-portal SMTP credentials

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

AutoString = sqlmodel.sql.sqltypes.AutoString

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "smtp_credential",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("portal_id", sa.Integer(), nullable=False),
        sa.Column("name", AutoString(length=100), nullable=False),
        sa.Column("username", AutoString(length=100), nullable=False),
        sa.Column("password_hash", AutoString(length=255), nullable=False),
        sa.Column("from_policy", AutoString(length=20), nullable=False),
        sa.Column("from_addresses", sa.Text(), nullable=False),
        sa.Column("client_networks", sa.Text(), nullable=False),
        sa.Column("plain_networks", sa.Text(), nullable=False),
        sa.Column("max_message_bytes", sa.Integer(), nullable=False),
        sa.Column("per_minute", sa.Integer(), nullable=True),
        sa.Column("per_day", sa.Integer(), nullable=True),
        sa.Column("minute_window", sa.Integer(), nullable=False),
        sa.Column("minute_count", sa.Integer(), nullable=False),
        sa.Column("day_window", sa.Integer(), nullable=False),
        sa.Column("day_count", sa.Integer(), nullable=False),
        sa.Column("created_by", AutoString(length=254), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_client", AutoString(length=64), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["portal_id"], ["portal.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    with op.batch_alter_table("smtp_credential") as batch:
        batch.create_index(batch.f("ix_smtp_credential_portal_id"), ["portal_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("smtp_credential") as batch:
        batch.drop_index(batch.f("ix_smtp_credential_portal_id"))
    op.drop_table("smtp_credential")
