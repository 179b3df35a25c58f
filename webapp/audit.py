"""The History page's records: who changed what, secrets only ever as "changed"."""
from flask import has_request_context
from flask_login import current_user

from . import db
from .models import AuditEvent

SECRET = "(changed)"

ACTIONS = {
    "portal.created": "Created the portal",
    "portal.updated": "Changed the portal",
    "server.created": "Added the server",
    "server.updated": "Changed the server",
    "server.removed": "Removed the server",
    "server.reordered": "Moved the server",
    "server.sample_sent": "Sent a sample mail through",
    "server.sample_failed": "A sample mail failed through",
    "membership.created": "Added the member",
    "membership.updated": "Changed the role of",
    "membership.removed": "Removed the member",
    "user.created": "Created the user",
    "user.password_changed": "Changed the password of",
}


def record(action: str, subject: str, changes: dict | None = None, portal_id: int | None = None) -> AuditEvent:
    """Add an event to the current session; it is committed with the change it describes."""
    actor = current_user if has_request_context() and current_user.is_authenticated else None
    event = AuditEvent(
        portal_id=portal_id,
        actor_id=actor.id if actor else None,
        actor=actor.email if actor else "command line",
        action=action,
        subject=subject,
        changes=changes or {},
    )
    db.session().add(event)
    return event


def diff(before: dict, after: dict, secret_fields: frozenset = frozenset()) -> dict:
    """{field: [old, new]} for fields whose value changed; secret fields as "(changed)"."""
    changes = {}
    for name, new in after.items():
        old = before.get(name)
        if old == new or (old in (None, "") and new in (None, "")):
            continue
        changes[name] = SECRET if name in secret_fields else [_plain(old), _plain(new)]
    return changes


def _plain(value):
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
