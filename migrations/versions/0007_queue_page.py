"""The Mail Queue page's filters: messages by the server used, and by the time they arrived

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_outbound_mail_portal_server', 'outbound_mail', ['portal_id', 'server_id', 'id'])
    op.create_index('ix_outbound_mail_portal_created', 'outbound_mail', ['portal_id', 'created_at', 'id'])


def downgrade() -> None:
    op.drop_index('ix_outbound_mail_portal_created', 'outbound_mail')
    op.drop_index('ix_outbound_mail_portal_server', 'outbound_mail')
