"""The History page's records: who changed what, secrets only ever as "(changed)".

Every record names its actor explicitly: a signed-in user, the command line, and later
the delivery worker or an OAuth callback. Services take the actor as an argument.
"""
from dataclasses import dataclass

from sqlmodel import select

from . import db
from .models import AuditEvent, User

SECRET = "(changed)"

ACTIONS = {
    "portal.created": "Created the portal",
    "portal.updated": "Changed the portal",
    "server.created": "Added the server",
    "server.updated": "Changed the server",
    "server.removed": "Removed the server",
    "server.reordered": "Moved the server",
    "server.checked": "Validated the server",
    "server.sample_sent": "Sent a sample mail through",
    "server.sample_failed": "A sample mail failed through",
    "membership.created": "Added the member",
    "membership.updated": "Changed the role of",
    "membership.removed": "Removed the member",
    "user.created": "Created the user",
    "user.updated": "Changed the user",
    "user.removed": "Removed the user",
    "user.password_changed": "Changed the password of",
    "user.password_reset": "Reset the password of",
    "egress.updated": "Changed",
    "server.authorized": "Authorized OAuth for",
    "server.admin_consented": "Granted admin consent for",
    "server.authorization_failed": "An OAuth consent failed for",
    "server.reauthorization_needed": "Re-authorization needed for",
    "server.consent_link": "Made a consent link for",
    "api_key.created": "Created the API key",
    "api_key.revoked": "Revoked the API key",
    "mail.retried": "Retry now for",
    "mail.released": "Released",
    "mail.requeued": "Requeued",
    "mail.deleted": "Deleted",
    "smtp_credential.created": "Created the SMTP credential",
    "smtp_credential.updated": "Changed the SMTP credential",
    "smtp_credential.password_replaced": "Gave a new password to the SMTP credential",
    "smtp_credential.revoked": "Revoked the SMTP credential",
    "sender_id.added": "Added the sender ID",
    "sender_id.removed": "Removed the sender ID",
    "membership.sender_changed": "Changed the mail sender of",
    "system_mail.updated": "Changed the system mail settings",
    "user.password_recovered": "Set a new password by a recovery link:",
    "user.password_recovery_sent": "Sent a password recovery link to",
}


@dataclass(frozen=True)
class Actor:
    """Who acts: a user (id and email), or a part of Mailroom acting on its own."""
    label: str
    user_id: int | None = None

    @classmethod
    def of(cls, user) -> "Actor":
        return cls(user.email, user.id)


COMMAND_LINE = Actor("command line")


def record(actor: Actor, action: str, subject: str, changes: dict | None = None,
           portal_id: int | None = None) -> AuditEvent:
    """Add an event to the current session; it is committed with the change it describes.
    A user removed while their request was under way becomes NULL here, as a later removal
    would make it (the label keeps who it was)."""
    actor_id = select(User.id).where(User.id == actor.user_id).scalar_subquery() if actor.user_id else None
    event = AuditEvent(portal_id=portal_id, actor_id=actor_id, actor=actor.label[:254], action=action,
                       subject=subject[:300], changes=changes or {})
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
