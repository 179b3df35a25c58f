"""OAuth consents under way: bound to the settings they were started for; `iss` required when
the provider says it sends it (RFC 9207)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

AutoString = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    # A consent under way lives a few minutes: those started before this revision are dropped
    # rather than given a binding they were not started with.
    op.execute("DELETE FROM oauth_state")
    with op.batch_alter_table("oauth_state") as batch:
        batch.add_column(sa.Column("iss_required", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("destination", AutoString(length=64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("oauth_state") as batch:
        batch.drop_column("destination")
        batch.drop_column("iss_required")
