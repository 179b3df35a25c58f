"""Indexes for the lists that grow: History by portal and time (and by actor), portals by name

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_event_portal_at", "audit_event", ["portal_id", "at", "id"])
    op.create_index("ix_audit_event_portal_actor", "audit_event", ["portal_id", "actor", "at", "id"])
    op.create_index("ix_portal_name", "portal", ["name", "id"])


def downgrade() -> None:
    op.drop_index("ix_portal_name", "portal")
    op.drop_index("ix_audit_event_portal_actor", "audit_event")
    op.drop_index("ix_audit_event_portal_at", "audit_event")
