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
from sqlalchemy import or_
from sqlmodel import select

from . import audit, db, lists, pagination
from .audit import Actor
from .delivery.routing import is_held
from .mail.config import Sender
from .mail.envelope import Envelope
from .mail.message import build_message
from .models import MAX_ID, AppSetting, MailServer, OutboundMail, Portal, server_label
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


# The servers one can choose, by portal and then in each portal's order: a search, a page at a time.
CHOICE_ORDER = (Portal.name, Portal.id, MailServer.position, MailServer.id)
_HOST = MailServer.settings["host"].as_string()
CHOICE_COLUMNS = (Portal.name.label("portal"), Portal.id.label("portal_id"), MailServer.position, MailServer.id,
                  MailServer.description, _HOST.label("host"), MailServer.from_address)


def _label(portal: str, position: int, server_id: int, description: str, host: str | None,
           from_address: str) -> str:
    """The place in the portal's list ("#" on its servers page) tells apart two servers called alike."""
    return f"{portal} — #{position} {server_label(server_id, description, host)} ({from_address})"


def _choices(text: str):
    query = select(*CHOICE_COLUMNS).join(Portal, Portal.id == MailServer.portal_id)
    if text:
        query = query.where(or_(lists.contains(Portal.name, text), lists.contains(MailServer.description, text),
                                lists.contains(_HOST, text), lists.contains(MailServer.from_address, text)))
    return query


def choices_page(text: str, size: int, bookmark: str | None) -> pagination.Page:
    """A page of the servers (of every portal) whose portal name, description, host or From address
    contains `text`, as Choices."""
    page = pagination.paginate(_choices(text), CHOICE_ORDER, size, bookmark)
    page.rows = [Choice(row.id, _label(row.portal, row.position, row.id, row.description, row.host, row.from_address))
                 for row in page.rows]
    return page


def choices_total(text: str = "") -> lists.Total:
    return lists.total(_choices(text))


def current_choice() -> Choice | None:
    """The designated server as the page shows it."""
    server = designated()
    if server is None:
        return None
    portal = db.session().get(Portal, server.portal_id)
    return Choice(server.id, _label(portal.name, server.position, server.id, server.description,
                                    server.settings.get("host"), server.from_address))


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
