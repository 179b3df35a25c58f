"""The Mail Queue page's filters: messages by the server used, and by the time they arrived

Revision ID: queue_page_1
Revises: 0005
Create Date: 2026-12-06
"""
from alembic import op

revision = 'queue_page_1'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_outbound_mail_portal_server', 'outbound_mail', ['portal_id', 'server_id', 'id'])
    op.create_index('ix_outbound_mail_portal_created', 'outbound_mail', ['portal_id', 'created_at', 'id'])


def downgrade() -> None:
    op.drop_index('ix_outbound_mail_portal_created', 'outbound_mail')
    op.drop_index('ix_outbound_mail_portal_server', 'outbound_mail')
