"""Rate limit counters in the database (without Redis, every process counts together)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

AutoString = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "rate_count",
        sa.Column("key", AutoString(length=64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("rate_count") as batch:
        batch.create_index(batch.f("ix_rate_count_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_table("rate_count")
