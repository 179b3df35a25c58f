"""Alternative sender IDs (eG's "Alternative Mail sender IDs"): extra From addresses of a portal.

Admins keep the list (portal Settings) and assign one to a member (Members: "Mail sender"). Mail
sent on a member's behalf carries it as its From: their sample mails, mail through an API key
they own, mail through an SMTP credential they own ("rewrite From"). A member without one sends
with the server's own From.

The From addresses a portal *allows* (what the API and the SMTP submission listener accept) are
its servers' From addresses and its sender IDs, nothing else. Every server has a From address
(the server form requires one; a row saved without one, before it was required, adds nothing:
it never makes "any address" allowed); where the provider decides the sender itself (Gmail API: the
account or one of its "Send mail as" aliases; Graph and EWS: the mailbox or an address it has
"Send As" rights for), Mailroom does not ask the provider: the portal's list is the rule, and the
provider may still refuse or rewrite an address it does not allow (eG's note: the IDs are not
validated against the server; a wrong one makes delivery fail).
"""
from sqlalchemy import bindparam, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import func, select

from . import audit, db
from .audit import Actor
from .addresses import normalize_address
from .models import MAX_ID, MailServer, Membership, Portal, SenderId, User
from .pagination import Page, paginate

MAX_PER_PORTAL = 200  # the Members page offers every one in a list: kept short


class Refused(Exception):
    """The change cannot be made; str() says why (shown beside the field)."""


def page_of(portal: Portal, size: int, bookmark: str | None) -> Page:
    query = select(SenderId).where(SenderId.portal_id == portal.id)
    page = paginate(query, (SenderId.address, SenderId.id), size, bookmark)
    page.rows = [row[0] for row in page.rows]
    return page


def all_of(portal: Portal) -> list[SenderId]:
    """Every sender ID of the portal (at most MAX_PER_PORTAL), by address: the Members page's choices."""
    return list(db.session().exec(select(SenderId).where(SenderId.portal_id == portal.id)
                                  .order_by(SenderId.address, SenderId.id)))


def get(portal: Portal, sender_id: int) -> SenderId | None:
    if not 0 < sender_id <= MAX_ID:
        return None
    return db.session().exec(select(SenderId).where(SenderId.id == sender_id, SenderId.portal_id == portal.id)).first()


def add(actor: Actor, portal: Portal, address: str) -> SenderId:
    """Refused for an address that is not one, one the portal has already, or one too many."""
    try:
        address = normalize_address(address.strip()).lower()
    except ValueError as error:
        raise Refused(str(error)) from None
    db.lock_portal(portal)
    session = db.session()
    if session.exec(select(SenderId.id).where(SenderId.portal_id == portal.id, SenderId.address == address)).first():
        session.rollback()
        raise Refused(f"{address} is a sender ID of this portal already.")
    count = session.exec(select(func.count()).select_from(SenderId).where(SenderId.portal_id == portal.id)).one()
    if count >= MAX_PER_PORTAL:
        session.rollback()
        raise Refused(f"A portal has at most {MAX_PER_PORTAL} sender IDs: remove one first.")
    sender = SenderId(portal_id=portal.id, address=address, created_by=actor.label[:254])
    session.add(sender)
    audit.record(actor, "sender_id.added", address, {"address": [None, address]}, portal.id)
    try:
        session.commit()
    except IntegrityError:  # added by someone else meanwhile
        session.rollback()
        raise Refused(f"{address} is a sender ID of this portal already.") from None
    return sender


def remove(actor: Actor, portal: Portal, sender: SenderId) -> int:
    """Remove it; the members who had it send with the server's From again. How many members had it."""
    session = db.session()
    db.lock_portal(portal)
    unassigned = session.execute(update(Membership).where(Membership.sender_id == sender.id)
                                 .values(sender_id=None)).rowcount
    audit.record(actor, "sender_id.removed", sender.address, {"address": [sender.address, None]}, portal.id)
    session.delete(sender)
    session.commit()
    return unassigned


def assign(actor: Actor, portal: Portal, membership: Membership, sender: SenderId | None) -> None:
    """The member's Mail sender: one of the portal's sender IDs, or None for the server's From."""
    if sender is not None and sender.portal_id != portal.id:
        raise Refused("This sender ID belongs to another portal.")
    new_id = sender.id if sender else None
    if membership.sender_id == new_id:
        return
    before = db.session().get(SenderId, membership.sender_id) if membership.sender_id else None
    user = db.session().get(User, membership.user_id)
    membership.sender_id = new_id
    db.session().add(membership)
    audit.record(actor, "membership.sender_changed", user.email,
                 {"mail_sender": [before.address if before else DEFAULT, sender.address if sender else DEFAULT]},
                 portal.id)
    db.session().commit()


DEFAULT = "the server's From"


# sender_of() as a column another query can carry (the outbox reads it with the portal's servers, in one
# query); parameters portal_id and owner_id (None: no user, no sender ID)
SENDER_OF = select(SenderId.address).join(Membership, Membership.sender_id == SenderId.id).where(
    Membership.portal_id == bindparam("portal_id"), Membership.user_id == bindparam("owner_id")).scalar_subquery()


_SENDER_OF = select(SenderId.address).join(Membership, Membership.sender_id == SenderId.id).where(
    Membership.portal_id == bindparam("portal_id"), Membership.user_id == bindparam("owner_id"))


def sender_of(portal: Portal, user_id: int | None) -> str | None:
    """The sender ID assigned to this user in this portal, or None (no member, or none assigned)."""
    if user_id is None:
        return None
    return db.session().execute(_SENDER_OF, {"portal_id": portal.id, "owner_id": user_id}).scalar()


_ALLOWED_ADDRESSES = union_all(
    select(SenderId.__table__.c.address).where(SenderId.__table__.c.portal_id == bindparam("portal_id")),
    select(MailServer.__table__.c.from_address).where(MailServer.__table__.c.portal_id == bindparam("portal_id"),
                                                      MailServer.__table__.c.from_address != ""))


def allowed_addresses(portal_id: int) -> set[str]:
    """The addresses of allowed_from() alone, lower case, in one query of two columns (the SMTP
    submission listener asks for every message: no server is loaded), on a connection of its own, given
    back at once."""
    with db.engine().connect() as connection:
        rows = connection.execute(_ALLOWED_ADDRESSES, {"portal_id": portal_id}).scalars()
        return {address.lower() for address in rows}


def allowed_from(portal: Portal) -> dict[str, MailServer | None]:
    """Every From address the portal allows, lower case -> the server whose From it is (None: a sender ID)."""
    allowed: dict[str, MailServer | None] = {}
    for sender in db.session().exec(select(SenderId.address).where(SenderId.portal_id == portal.id)):
        allowed[sender.lower()] = None
    servers = db.session().exec(select(MailServer).where(MailServer.portal_id == portal.id)
                                .order_by(MailServer.position.desc(), MailServer.id.desc())).unique()
    for server in servers:  # the first server of the list wins an address two servers share
        if server.from_address:
            allowed[server.from_address.lower()] = server
    return allowed
