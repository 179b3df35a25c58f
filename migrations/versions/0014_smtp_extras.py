"""SMTP extras: a server's client certificate (facts; the certificate and key are a server_secret)
and whether it keeps SMTP transcripts

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mail_server", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_cert", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column("transcripts", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.execute("DELETE FROM server_secret WHERE purpose = 'client_cert'")
    with op.batch_alter_table("mail_server", schema=None) as batch_op:
        batch_op.drop_column("transcripts")
        batch_op.drop_column("client_cert")
