"""Delivery worker: the admin notices sent (rate-limited per portal and kind), and an index
that lets new mail be claimed before retries

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

AutoString = sqlmodel.sql.sqltypes.AutoString

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('delivery_notice',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('portal_id', sa.Integer(), nullable=False),
    sa.Column('kind', AutoString(length=30), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('mail_id', sa.Integer(), nullable=True),
    sa.Column('subject', AutoString(length=300), nullable=False),
    sa.ForeignKeyConstraint(['mail_id'], ['outbound_mail.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['portal_id'], ['portal.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('delivery_notice', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_notice_portal_kind_at', ['portal_id', 'kind', 'at'], unique=False)
    with op.batch_alter_table('outbound_mail', schema=None) as batch_op:
        batch_op.create_index('ix_outbound_mail_fresh', ['state', 'attempts', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbound_mail', schema=None) as batch_op:
        batch_op.drop_index('ix_outbound_mail_fresh')
    with op.batch_alter_table('delivery_notice', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_notice_portal_kind_at')
    op.drop_table('delivery_notice')
