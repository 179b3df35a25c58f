"""Proxies and the mail receiver login: a server's proxy and receiver settings, and their
sealed passwords (server_secret)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

AutoString = sqlmodel.sql.sqltypes.AutoString

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('mail_server', schema=None) as batch_op:
        batch_op.add_column(sa.Column('proxy', sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column('receiver', sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    op.create_table('server_secret',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('server_id', sa.Integer(), nullable=False),
    sa.Column('purpose', AutoString(length=20), nullable=False),
    sa.Column('secret', sa.Text(), nullable=False),
    sa.Column('bound_to', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['server_id'], ['mail_server.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('server_id', 'purpose')
    )
    with op.batch_alter_table('server_secret', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_server_secret_server_id'), ['server_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('server_secret', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_server_secret_server_id'))
    op.drop_table('server_secret')
    with op.batch_alter_table('mail_server', schema=None) as batch_op:
        batch_op.drop_column('receiver')
        batch_op.drop_column('proxy')
