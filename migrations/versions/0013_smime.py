"""S/MIME: a server's S/MIME settings (its signing key is a server_secret) and the portal's
recipient certificates

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

AutoString = sqlmodel.sql.sqltypes.AutoString

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mail_server", schema=None) as batch_op:
        batch_op.add_column(sa.Column("smime", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    op.create_table(
        "smime_certificate",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("portal_id", sa.Integer(), nullable=False),
        sa.Column("address", AutoString(length=320), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("subject", AutoString(length=1000), nullable=False),
        sa.Column("issuer", AutoString(length=1000), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fingerprint", AutoString(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["portal_id"], ["portal.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_smime_certificate_portal_address", "smime_certificate", ["portal_id", "address"])


def downgrade() -> None:
    op.drop_index("ix_smime_certificate_portal_address", table_name="smime_certificate")
    op.drop_table("smime_certificate")
    with op.batch_alter_table("mail_server", schema=None) as batch_op:
        batch_op.drop_column("smime")
