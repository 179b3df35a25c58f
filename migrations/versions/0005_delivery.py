"""Delivery: the outbox (messages and attempts), API keys, connection leases, the portal's
delivery policy and admin address, server send rates and delivery health

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

AutoString = sqlmodel.sql.sqltypes.AutoString

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_key',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('portal_id', sa.Integer(), nullable=False),
    sa.Column('name', AutoString(length=100), nullable=False),
    sa.Column('prefix', AutoString(length=20), nullable=False),
    sa.Column('key_hash', AutoString(length=64), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=True),
    sa.Column('created_by', AutoString(length=254), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['owner_id'], ['user.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['portal_id'], ['portal.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash')
    )
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_key_portal_id'), ['portal_id'], unique=False)

    op.create_table('connection_lease',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('server_id', sa.Integer(), nullable=False),
    sa.Column('owner', AutoString(length=100), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['server_id'], ['mail_server.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('connection_lease', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_connection_lease_server_id'), ['server_id'], unique=False)

    op.create_table('outbound_mail',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('portal_id', sa.Integer(), nullable=False),
    sa.Column('state', AutoString(length=20), nullable=False),
    sa.Column('source', AutoString(length=20), nullable=False),
    sa.Column('submitted_by', AutoString(length=320), nullable=False),
    sa.Column('client_address', AutoString(length=64), nullable=False),
    sa.Column('api_key_id', sa.Integer(), nullable=True),
    sa.Column('idempotency_key', AutoString(length=200), nullable=True),
    sa.Column('request_hash', AutoString(length=64), nullable=False),
    sa.Column('message_id', AutoString(length=500), nullable=False),
    sa.Column('mail_from', AutoString(length=320), nullable=False),
    sa.Column('recipients', sa.JSON(), nullable=False),
    sa.Column('subject', AutoString(length=300), nullable=False),
    sa.Column('to_summary', AutoString(length=500), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_owner', AutoString(length=100), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('server_id', sa.Integer(), nullable=True),
    sa.Column('last_error', AutoString(length=1000), nullable=False),
    sa.Column('last_code', sa.Integer(), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('purged_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_key.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['portal_id'], ['portal.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['server_id'], ['mail_server.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('portal_id', 'idempotency_key')
    )
    with op.batch_alter_table('outbound_mail', schema=None) as batch_op:
        batch_op.create_index('ix_outbound_mail_due', ['state', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_outbound_mail_portal_list', ['portal_id', 'id'], unique=False)
        batch_op.create_index('ix_outbound_mail_portal_state', ['portal_id', 'state', 'id'], unique=False)

    op.create_table('delivery_attempt',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mail_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('server_id', sa.Integer(), nullable=True),
    sa.Column('server_label', AutoString(length=200), nullable=False),
    sa.Column('outcome', AutoString(length=20), nullable=False),
    sa.Column('code', sa.Integer(), nullable=True),
    sa.Column('reply', AutoString(length=1000), nullable=False),
    sa.Column('elapsed', sa.Float(), nullable=False),
    sa.Column('worker', AutoString(length=100), nullable=False),
    sa.ForeignKeyConstraint(['mail_id'], ['outbound_mail.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['server_id'], ['mail_server.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('delivery_attempt', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_attempt_mail_id'), ['mail_id'], unique=False)
        batch_op.create_index('ix_delivery_attempt_server_at', ['server_id', 'at'], unique=False)

    with op.batch_alter_table('mail_server', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rate_per_minute', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('rate_per_day', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('failing_since', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('failing_reason', AutoString(length=500), nullable=False, server_default=""))
        batch_op.add_column(sa.Column('held_since', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('held_reason', AutoString(length=500), nullable=False, server_default=""))

    with op.batch_alter_table('portal', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delivery_policy', AutoString(length=20), nullable=False, server_default="failover"))
        batch_op.add_column(sa.Column('admin_address', AutoString(length=320), nullable=False, server_default=""))
        batch_op.add_column(sa.Column('failover_since', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('failover_reason', AutoString(length=500), nullable=False, server_default=""))



def downgrade() -> None:
    with op.batch_alter_table('portal', schema=None) as batch_op:
        batch_op.drop_column('failover_reason')
        batch_op.drop_column('failover_since')
        batch_op.drop_column('admin_address')
        batch_op.drop_column('delivery_policy')

    with op.batch_alter_table('mail_server', schema=None) as batch_op:
        batch_op.drop_column('held_reason')
        batch_op.drop_column('held_since')
        batch_op.drop_column('failing_reason')
        batch_op.drop_column('failing_since')
        batch_op.drop_column('rate_per_day')
        batch_op.drop_column('rate_per_minute')

    with op.batch_alter_table('delivery_attempt', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_attempt_server_at')
        batch_op.drop_index(batch_op.f('ix_delivery_attempt_mail_id'))

    op.drop_table('delivery_attempt')
    with op.batch_alter_table('outbound_mail', schema=None) as batch_op:
        batch_op.drop_index('ix_outbound_mail_portal_state')
        batch_op.drop_index('ix_outbound_mail_portal_list')
        batch_op.drop_index('ix_outbound_mail_due')

    op.drop_table('outbound_mail')
    with op.batch_alter_table('connection_lease', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_connection_lease_server_id'))

    op.drop_table('connection_lease')
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_key_portal_id'))

    op.drop_table('api_key')
