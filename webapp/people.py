"""Users, portals and memberships: the operations both the views and the CLI use."""
from sqlmodel import select
from werkzeug.security import check_password_hash

from . import audit, db
from .models import Membership, Portal, Role, User
from .security import hash_password


class Conflict(Exception):
    """The thing already exists (an email, a slug, a membership)."""


def find_user(email: str) -> User | None:
    return db.session().exec(select(User).where(User.email == email.strip().lower())).first()


def authenticate(email: str, password: str) -> User | None:
    user = find_user(email)
    if user is None or not user.is_active or not check_password_hash(user.password_hash, password):
        return None
    return user


def create_user(email: str, password: str, name: str = "", superadmin: bool = False) -> User:
    if find_user(email):
        raise Conflict(f"A user with the email {email} already exists.")
    user = User(email=email.strip().lower(), name=name, password_hash=hash_password(password),
                is_superadmin=superadmin)
    db.session().add(user)
    audit.record("user.created", user.email, {"superadmin": [None, superadmin]})
    db.session().commit()
    return user


def create_portal(slug: str, name: str, base_url: str = "") -> Portal:
    if db.session().exec(select(Portal).where(Portal.slug == slug)).first():
        raise Conflict(f"A portal with the slug {slug} already exists.")
    portal = Portal(slug=slug, name=name, base_url=base_url)
    db.session().add(portal)
    db.session().flush()
    audit.record("portal.created", f"“{name}”", {"name": [None, name], "slug": [None, slug],
                                                        "base_url": [None, base_url]}, portal.id)
    db.session().commit()
    return portal


def update_portal(portal: Portal, name: str, base_url: str) -> None:
    changes = audit.diff({"name": portal.name, "base_url": portal.base_url}, {"name": name, "base_url": base_url})
    if not changes:
        return
    portal.name, portal.base_url = name, base_url
    db.session().add(portal)
    audit.record("portal.updated", f"“{name}”", changes, portal.id)
    db.session().commit()


def members_of(portal: Portal) -> list[tuple[Membership, User]]:
    return list(db.session().exec(
        select(Membership, User).join(User).where(Membership.portal_id == portal.id).order_by(User.email)
    ))


def get_membership(portal: Portal, membership_id: int) -> Membership | None:
    membership = db.session().get(Membership, membership_id)
    return membership if membership and membership.portal_id == portal.id else None


def add_member(portal: Portal, user: User, role: Role) -> Membership:
    exists = db.session().exec(
        select(Membership).where(Membership.portal_id == portal.id, Membership.user_id == user.id)
    ).first()
    if exists:
        raise Conflict(f"{user.email} is already a member of this portal.")
    membership = Membership(portal_id=portal.id, user_id=user.id, role=Role(role))
    db.session().add(membership)
    audit.record("membership.created", user.email, {"role": [None, str(role)]}, portal.id)
    db.session().commit()
    return membership


def _keep_an_admin(portal: Portal, membership: Membership) -> None:
    """Refuse to leave a portal without an admin."""
    if membership.role != Role.ADMIN:
        return
    others = db.session().exec(select(Membership).where(
        Membership.portal_id == portal.id, Membership.role == Role.ADMIN, Membership.id != membership.id)).first()
    if others is None:
        raise Conflict("A portal needs at least one admin: make someone else admin first.")


def change_role(portal: Portal, membership: Membership, role: Role) -> None:
    if membership.role == role:
        return
    _keep_an_admin(portal, membership)
    user = db.session().get(User, membership.user_id)
    audit.record("membership.updated", user.email, {"role": [str(membership.role), str(role)]},
                 portal.id)
    membership.role = Role(role)
    db.session().add(membership)
    db.session().commit()


def remove_member(portal: Portal, membership: Membership) -> None:
    _keep_an_admin(portal, membership)
    user = db.session().get(User, membership.user_id)
    audit.record("membership.removed", user.email, {"role": [str(membership.role), None]}, portal.id)
    db.session().delete(membership)
    db.session().commit()


def change_password(user: User, password: str) -> None:
    user.password_hash = hash_password(password)
    db.session().add(user)
    audit.record("user.password_changed", user.email)
    db.session().commit()
