"""Alternative sender IDs (per portal, assigned to members), the owner of an SMTP credential, mail
pinned to the system-mail server, and password-recovery links

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

AutoString = sqlmodel.sql.sqltypes.AutoString

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sender_id",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("portal_id", sa.Integer(), nullable=False),
        sa.Column("address", AutoString(length=320), nullable=False),
        sa.Column("created_by", AutoString(length=254), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["portal_id"], ["portal.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("portal_id", "address"),
    )
    with op.batch_alter_table("sender_id") as batch:
        batch.create_index(batch.f("ix_sender_id_portal_id"), ["portal_id"], unique=False)
    op.create_table(
        "password_reset",
        sa.Column("id", AutoString(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("client_address", AutoString(length=64), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("password_reset") as batch:
        batch.create_index(batch.f("ix_password_reset_user_id"), ["user_id"], unique=False)
    with op.batch_alter_table("membership") as batch:
        batch.add_column(sa.Column("sender_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_membership_sender_id", "sender_id", ["sender_id"], ["id"], ondelete="SET NULL")
    with op.batch_alter_table("smtp_credential") as batch:
        batch.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_smtp_credential_owner_id", "user", ["owner_id"], ["id"], ondelete="SET NULL")
    with op.batch_alter_table("outbound_mail") as batch:
        batch.add_column(sa.Column("pinned_server_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_outbound_mail_pinned_server_id", "mail_server", ["pinned_server_id"], ["id"],
                                 ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("outbound_mail") as batch:
        batch.drop_constraint("fk_outbound_mail_pinned_server_id", type_="foreignkey")
        batch.drop_column("pinned_server_id")
    with op.batch_alter_table("smtp_credential") as batch:
        batch.drop_constraint("fk_smtp_credential_owner_id", type_="foreignkey")
        batch.drop_column("owner_id")
    with op.batch_alter_table("membership") as batch:
        batch.drop_constraint("fk_membership_sender_id", type_="foreignkey")
        batch.drop_column("sender_id")
    with op.batch_alter_table("password_reset") as batch:
        batch.drop_index(batch.f("ix_password_reset_user_id"))
    op.drop_table("password_reset")
    with op.batch_alter_table("sender_id") as batch:
        batch.drop_index(batch.f("ix_sender_id_portal_id"))
    op.drop_table("sender_id")
