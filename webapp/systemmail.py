"""System mail: Mailroom's own mail that belongs to no portal's users (password-recovery links), and
admin notices of a portal that has no working server, go through one server the super-admin
designates (Settings → System mail): any portal's server.

Such a message is an outbox row like any other (accepted means committed; the worker delivers it,
retries it, the Mail Queue lists it), *pinned* to that server (`OutboundMail.pinned_server_id`):
the worker tries only that server, with its own portal's egress policy. A recovery mail is stored
in the designated server's portal; a notice stays in its own portal's queue.
"""
from dataclasses import dataclass

from flask import current_app
from sqlmodel import select

from . import audit, db
from .audit import Actor
from .delivery.routing import is_held
from .mail.config import Sender
from .mail.envelope import Envelope
from .mail.message import build_message
from .models import MAX_ID, AppSetting, MailServer, OutboundMail, Portal
from .outbox import Source, Submitter, add

SETTING = "system_mail"
SENDER_NAME = "Mailroom"


class Unavailable(Exception):
    """No system mail can be sent; str() says why, in words for the super-admin."""


@dataclass(frozen=True)
class Choice:
    server_id: int
    label: str  # "Portal — server (from)"


def designated() -> MailServer | None:
    row = db.session().get(AppSetting, SETTING)
    server_id = (row.value or {}).get("server_id") if row else None
    return db.session().get(MailServer, server_id) if isinstance(server_id, int) else None


def choices() -> list[Choice]:
    rows = db.session().exec(select(MailServer, Portal).join(Portal, Portal.id == MailServer.portal_id)
                             .order_by(Portal.name, MailServer.position, MailServer.id)).unique().all()
    return [Choice(server.id, f"{portal.name} — {server.label} ({server.from_address})") for server, portal in rows]


def designate(actor: Actor, server_id: int | None) -> None:
    """None: no system-mail server. ValueError for a server that does not exist."""
    if server_id is not None and not (0 < server_id <= MAX_ID and db.session().get(MailServer, server_id)):
        raise ValueError("This server does not exist (any more).")
    before = designated()
    row = db.session().get(AppSetting, SETTING) or AppSetting(name=SETTING, value={})
    row.value = {"server_id": server_id}
    db.session().add(row)
    after = db.session().get(MailServer, server_id) if server_id else None
    audit.record(actor, "system_mail.updated", "System mail",
                 {"server": [before.label if before else None, after.label if after else None]})
    db.session().commit()


def problems() -> list[str]:
    """Why no recovery mail can go out now, in words (empty: it can)."""
    found = []
    if not current_app.config.get("PUBLIC_URL"):
        found.append("MAILROOM_PUBLIC_URL is not configured: Mailroom does not know the address its links must "
                     "start with, so it sends no recovery mail. Set it to the address people use to reach "
                     "Mailroom (e.g. https://mailroom.example.com) and restart.")
    found.extend(server_problems())
    return found


def server_problems() -> list[str]:
    server = designated()
    if server is None:
        return ["No server is designated for system mail: choose one below."]
    if not server.enabled:
        return [f"The system-mail server “{server.label}” is disabled: enable it, or choose another."]
    if not server.from_address:
        return [f"The system-mail server “{server.label}” has no From address."]
    if is_held(server):
        return [f"The system-mail server “{server.label}” refuses its credentials: its mail is held until an "
                "admin fixes them."]
    return []


def queue(to: str, subject: str, text: str, expires_at=None, secret: bool = False) -> OutboundMail:
    """A message from Mailroom through the system-mail server, in that server's portal's outbox: added to
    the session (the caller commits, then wakes a worker). Unavailable when there is no usable server.
    `secret`: the text carries one (a recovery link): its body is purged as soon as it is sent or failed."""
    reasons = server_problems()
    if reasons:
        raise Unavailable(reasons[0])
    server = designated()
    portal = db.session().get(Portal, server.portal_id)
    envelope = Envelope.of(build_message(Sender(server.from_address, SENDER_NAME), [to], subject, text))
    mail = add(portal, envelope, Submitter(Source.SYSTEM, SENDER_NAME), pinned_server_id=server.id,
               expires_at=expires_at)
    mail.purge_when_done = secret
    return mail


def fallback_for(portal: Portal, usable: list[MailServer]) -> MailServer | None:
    """The system-mail server, for a notice of a portal none of whose servers can send now (`usable`:
    the portal's route's candidates); None when the portal has a usable server or there is no other."""
    if usable:
        return None
    server = designated()
    if server is None or server.portal_id == portal.id or server_problems():
        return None
    return server
