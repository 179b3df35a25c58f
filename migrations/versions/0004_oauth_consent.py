"""OAuth consents under way and consent links

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

AutoString = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "oauth_state",
        sa.Column("id", AutoString(length=64), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("purpose", AutoString(length=20), nullable=False),
        sa.Column("browser", AutoString(length=64), nullable=False),
        sa.Column("verifier", sa.Text(), nullable=False),
        sa.Column("redirect_uri", AutoString(length=2000), nullable=False),
        sa.Column("issuer", AutoString(length=2000), nullable=False),
        sa.Column("started_by", AutoString(length=320), nullable=False),
        sa.Column("link_id", AutoString(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["server_id"], ["mail_server.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("oauth_state") as batch:
        batch.create_index(batch.f("ix_oauth_state_server_id"), ["server_id"], unique=False)
    op.create_table(
        "consent_link",
        sa.Column("id", AutoString(length=64), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("created_by", AutoString(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["server_id"], ["mail_server.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("consent_link") as batch:
        batch.create_index(batch.f("ix_consent_link_server_id"), ["server_id"], unique=False)


def downgrade() -> None:
    op.drop_table("consent_link")
    op.drop_table("oauth_state")
