"""Users, portals and memberships: the operations both the views and the CLI use.

Invariants kept here, under a lock so two people acting at once cannot break them:
every portal keeps an admin, and Mailroom keeps an active super-admin. A duplicate
email, slug or membership is a Conflict (the form shows it), never a database error.
"""

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy import or_
from sqlmodel import func, select
from werkzeug.security import check_password_hash

from . import audit, db, lists, pagination, sessions
from .audit import Actor
from .models import Membership, PasswordReset, Portal, Role, User, utcnow
from .passwords import new_password
from .security import hash_password, unknown_user_hash


class Conflict(Exception):
    """The change would break a rule: a duplicate, or a portal left without an admin."""


class EmailTaken(Conflict):
    """Another user has this email (the form says so beside the email field)."""


def find_user(email: str) -> User | None:
    return db.session().exec(select(User).where(User.email == email.strip().lower())).first()


def authenticate(email: str, password: str) -> User | None:
    """The user, if the email and password match an active account. Takes as long for an
    unknown email as for a wrong password."""
    user = find_user(email)
    if not check_password_hash(user.password_hash if user else unknown_user_hash(), password):
        return None
    return user if user is not None and user.is_active else None


def _commit_or_conflict(message: str) -> None:
    """Commit; a unique constraint that refused it (someone else was quicker) is a Conflict."""
    try:
        db.session().commit()
    except IntegrityError as error:
        db.session().rollback()
        if not _is_unique_violation(error):
            raise
        raise Conflict(message) from None


def _is_unique_violation(error: IntegrityError) -> bool:
    text = str(error.orig).lower()
    return getattr(error.orig, "sqlstate", None) == "23505" or "unique constraint" in text


# -- users -------------------------------------------------------------------------------

def create_user(actor: Actor, email: str, password: str, name: str = "", superadmin: bool = False,
                must_change_password: bool = True) -> User:
    email = email.strip().lower()
    taken = f"A user with the email {email} already exists."
    if find_user(email):
        raise Conflict(taken)
    user = User(email=email, name=name, password_hash=hash_password(password), is_superadmin=superadmin,
                must_change_password=must_change_password)
    db.session().add(user)
    audit.record(actor, "user.created", email, {"superadmin": [None, superadmin]})
    _commit_or_conflict(taken)
    return user


def update_user(actor: Actor, user: User, email: str, name: str, superadmin: bool, active: bool) -> None:
    email = email.strip().lower()
    taken = f"A user with the email {email} already exists."
    other = find_user(email)
    if other is not None and other.id != user.id:
        raise EmailTaken(taken)
    before = {"email": user.email, "name": user.name, "superadmin": user.is_superadmin, "active": user.is_active}
    after = {"email": email, "name": name, "superadmin": superadmin, "active": active}
    changes = audit.diff(before, after)
    if not changes:
        return
    db.lock_all()
    db.session().refresh(user)
    if (user.is_superadmin and not (superadmin and active)) and _other_active_superadmins(user) == 0:
        db.session().rollback()
        raise Conflict("Mailroom needs an active super-admin: make someone else super-admin first.")
    if not active:
        _keep_admins(user, "disable")
    user.email, user.name, user.is_superadmin, user.is_active = email, name, superadmin, active
    db.session().add(user)
    audit.record(actor, "user.updated", email, changes)
    try:
        _commit_or_conflict(taken)
    except Conflict as conflict:
        raise EmailTaken(str(conflict)) from None
    if not active:
        sessions.end_sessions_of(user)


def remove_user(actor: Actor, user: User) -> None:
    db.lock_all()
    db.session().refresh(user)
    if user.is_superadmin and _other_active_superadmins(user) == 0:
        db.session().rollback()
        raise Conflict("Mailroom needs an active super-admin: make someone else super-admin first.")
    _keep_admins(user, "remove")
    for membership in db.session().exec(select(Membership).where(Membership.user_id == user.id)):
        audit.record(actor, "membership.removed", user.email, {"role": [str(membership.role), None]},
                     membership.portal_id)
        db.session().delete(membership)
    audit.record(actor, "user.removed", user.email)
    db.session().delete(user)
    db.session().commit()
    sessions.end_sessions_of(user)  # the database's rows went with the user; Redis keeps its own


def change_password(actor: Actor, user: User, password: str, keep_session: str | None = None) -> None:
    """The user's own new password (they stop being asked for one); their other sessions end."""
    user.password_hash = hash_password(password)
    user.must_change_password = False
    db.session().add(user)
    _use_up_recovery_links(user)
    audit.record(actor, "user.password_changed", user.email)
    db.session().commit()
    sessions.end_sessions_of(user, keep=keep_session)


def reset_password(actor: Actor, user: User) -> str:
    """A new one-time password, to hand over; the user must choose their own at sign-in.
    Every session of theirs ends."""
    password = new_password(16)
    user.password_hash = hash_password(password)
    user.must_change_password = True
    db.session().add(user)
    _use_up_recovery_links(user)
    audit.record(actor, "user.password_reset", user.email)
    db.session().commit()
    sessions.end_sessions_of(user)
    return password


def _use_up_recovery_links(user: User) -> None:
    """A password set another way makes the user's open recovery links useless."""
    db.session().execute(update(PasswordReset).where(PasswordReset.user_id == user.id, PasswordReset.used_at.is_(None))
                         .values(used_at=utcnow()))


def _other_active_superadmins(user: User) -> int:
    return db.session().exec(select(func.count()).select_from(User).where(
        User.is_superadmin, User.is_active, User.id != user.id)).one()


def _keep_admins(user: User, verb: str) -> None:
    """Refuse when the user is the only admin of some portal."""
    for portal in db.session().exec(
            select(Portal).join(Membership).where(Membership.user_id == user.id, Membership.role == Role.ADMIN)):
        if _other_admins(portal, user.id) == 0:
            db.session().rollback()
            raise Conflict(f"{user.email} is the only admin of the portal “{portal.name}”: make someone else "
                           f"admin there before you {verb} this user.")


# -- portals -------------------------------------------------------------------------------

def create_portal(actor: Actor, slug: str, name: str, base_url: str = "") -> Portal:
    taken = f"A portal with the slug {slug} already exists."
    if db.session().exec(select(Portal).where(Portal.slug == slug)).first():
        raise Conflict(taken)
    portal = Portal(slug=slug, name=name, base_url=base_url)
    db.session().add(portal)
    try:
        db.session().flush()
    except IntegrityError as error:
        db.session().rollback()
        if not _is_unique_violation(error):
            raise
        raise Conflict(taken) from None
    audit.record(actor, "portal.created", f"“{name}”", {"name": [None, name], "slug": [None, slug],
                                                         "base_url": [None, base_url]}, portal.id)
    _commit_or_conflict(taken)
    return portal


def update_portal(actor: Actor, portal: Portal, name: str, base_url: str, delivery_policy: str | None = None,
                  admin_address: str | None = None) -> None:
    """The portal's settings; the delivery ones stay as they are when not given (None)."""
    before = {"name": portal.name, "base_url": portal.base_url, "delivery_policy": portal.delivery_policy,
              "admin_address": portal.admin_address}
    after = {"name": name, "base_url": base_url,
             "delivery_policy": portal.delivery_policy if delivery_policy is None else delivery_policy,
             "admin_address": portal.admin_address if admin_address is None else admin_address}
    changes = audit.diff(before, after)
    if not changes:
        return
    portal.name, portal.base_url = name, base_url
    portal.delivery_policy, portal.admin_address = after["delivery_policy"], after["admin_address"]
    db.session().add(portal)
    audit.record(actor, "portal.updated", f"“{name}”", changes, portal.id)
    db.session().commit()


# -- memberships -------------------------------------------------------------------------------

def members_of(portal: Portal) -> list[tuple[Membership, User]]:
    return list(db.session().exec(
        select(Membership, User).join(User).where(Membership.portal_id == portal.id).order_by(User.email)
    ))


def get_membership(portal: Portal, membership_id: int) -> Membership | None:
    return db.session().exec(select(Membership).where(
        Membership.id == membership_id, Membership.portal_id == portal.id)).first()


def add_member(actor: Actor, portal: Portal, user: User, role: Role) -> Membership:
    taken = f"{user.email} is already a member of this portal."
    if get_membership_of(portal, user) is not None:
        raise Conflict(taken)
    membership = Membership(portal_id=portal.id, user_id=user.id, role=Role(role))
    db.session().add(membership)
    audit.record(actor, "membership.created", user.email, {"role": [None, str(role)]}, portal.id)
    _commit_or_conflict(taken)
    return membership


def get_membership_of(portal: Portal, user: User) -> Membership | None:
    return db.session().exec(select(Membership).where(
        Membership.portal_id == portal.id, Membership.user_id == user.id)).first()


def _other_admins(portal: Portal, user_id: int) -> int:
    return db.session().exec(select(func.count()).select_from(Membership).join(User).where(
        Membership.portal_id == portal.id, Membership.role == Role.ADMIN, Membership.user_id != user_id,
        User.is_active)).one()


def _locked_membership(portal: Portal, membership_id: int) -> Membership:
    """The membership read again after taking the portal's lock (someone may have changed it)."""
    db.lock_portal(portal)
    membership = get_membership(portal, membership_id)
    if membership is None:
        db.session().rollback()
        raise Conflict("This member was removed meanwhile.")
    return membership


def change_role(actor: Actor, portal: Portal, membership_id: int, role: Role) -> None:
    membership = _locked_membership(portal, membership_id)
    if membership.role == role:
        db.session().rollback()
        return
    if membership.role == Role.ADMIN and _other_admins(portal, membership.user_id) == 0:
        db.session().rollback()
        raise Conflict("A portal needs at least one admin: make someone else admin first.")
    user = db.session().get(User, membership.user_id)
    audit.record(actor, "membership.updated", user.email, {"role": [str(membership.role), str(role)]}, portal.id)
    membership.role = Role(role)
    db.session().add(membership)
    db.session().commit()


def remove_member(actor: Actor, portal: Portal, membership_id: int) -> None:
    membership = _locked_membership(portal, membership_id)
    if membership.role == Role.ADMIN and _other_admins(portal, membership.user_id) == 0:
        db.session().rollback()
        raise Conflict("A portal needs at least one admin: make someone else admin first.")
    user = db.session().get(User, membership.user_id)
    audit.record(actor, "membership.removed", user.email, {"role": [str(membership.role), None]}, portal.id)
    db.session().delete(membership)
    db.session().commit()


# -- the lists: a page at a time, only the columns they show ------------------------------------

USER_ORDER = (User.email,)  # unique
USER_COLUMNS = (User.id, User.email, User.name, User.is_superadmin, User.is_active, User.must_change_password)
PORTAL_ORDER = (Portal.name, Portal.id)  # the (name, id) index
PORTAL_COLUMNS = (Portal.id, Portal.name, Portal.slug, Portal.base_url)
MEMBER_ORDER = (User.email,)  # a user is a member once
MEMBER_COLUMNS = (Membership.id, Membership.role, Membership.sender_id, User.email, User.name)


def _users(text: str):
    query = select(*USER_COLUMNS)
    return query.where(or_(lists.contains(User.email, text), lists.contains(User.name, text))) if text else query


def users_page(text: str, size: int, bookmark: str | None) -> pagination.Page:
    """A page of the users whose email or name contains `text`, by email."""
    return pagination.paginate(_users(text), USER_ORDER, size, bookmark)


def users_total(text: str = "") -> lists.Total:
    return lists.total(_users(text))


def _portals(user: User, text: str):
    query = select(*PORTAL_COLUMNS)
    if not user.is_superadmin:
        query = query.join(Membership, Membership.portal_id == Portal.id).where(Membership.user_id == user.id)
    return query.where(or_(lists.contains(Portal.name, text), lists.contains(Portal.slug, text))) if text else query


def portals_page(user: User, text: str, size: int, bookmark: str | None) -> pagination.Page:
    """A page of the portals `user` may open (a super-admin: all) whose name or slug contains `text`."""
    return pagination.paginate(_portals(user, text), PORTAL_ORDER, size, bookmark)


def portals_total(user: User, text: str = "") -> lists.Total:
    return lists.total(_portals(user, text))


def _members(portal: Portal, text: str = "", role: Role | None = None):
    query = (select(*MEMBER_COLUMNS).join(User, User.id == Membership.user_id)
             .where(Membership.portal_id == portal.id))
    if role is not None:
        query = query.where(Membership.role == role)
    return query.where(lists.contains(User.email, text)) if text else query


def members_page(portal: Portal, text: str, size: int, bookmark: str | None) -> pagination.Page:
    """A page of the portal's members whose email contains `text`, by email."""
    return pagination.paginate(_members(portal, text), MEMBER_ORDER, size, bookmark)


def member_row(portal: Portal, membership_id: int):
    """One member as the list shows them (after a row action); None when gone."""
    return db.session().execute(_members(portal).where(Membership.id == membership_id)).first()


def members_total(portal: Portal, text: str = "", role: Role | None = None) -> lists.Total:
    return lists.total(_members(portal, text, role))
