"""Password recovery asked for an address (answered by a job), and mail whose body is purged as soon
as it is sent or failed (it carries a recovery link)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

AutoString = sqlmodel.sql.sqltypes.AutoString

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recovery_request",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", AutoString(length=320), nullable=False),
        sa.Column("client_address", AutoString(length=64), nullable=False),
        sa.Column("asked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("outbound_mail") as batch:
        batch.add_column(sa.Column("purge_when_done", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("outbound_mail") as batch:
        batch.drop_column("purge_when_done")
    op.drop_table("recovery_request")
