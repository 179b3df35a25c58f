"""Who may do what: sign-in, portal access by role, cookies and response headers."""
from flask import abort, g, request
from flask.sessions import SecureCookieSessionInterface
from flask_login import LoginManager, current_user
from sqlmodel import select
from werkzeug.security import generate_password_hash

from . import db
from .models import Membership, Portal, Role, User

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Please sign in to continue."

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


def init_app(app) -> None:
    login_manager.init_app(app)
    app.session_interface = SessionInterface()
    app.after_request(_security_headers)


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    user = db.session().get(User, int(user_id))
    return user if user and user.is_active else None


class SessionInterface(SecureCookieSessionInterface):
    def get_cookie_secure(self, app) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)


def _security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def hash_password(password: str) -> str:
    return generate_password_hash(password)


def role_in(portal: Portal, user) -> Role | None:
    if not user.is_authenticated:
        return None
    if user.is_superadmin:
        return Role.ADMIN
    membership = db.session().exec(
        select(Membership).where(Membership.portal_id == portal.id, Membership.user_id == user.id)
    ).first()
    return membership.role if membership else None


def load_portal(slug: str, needs: Role = Role.STAFF) -> Portal:
    """The portal the current user may act on, or 404 (not a member) / 403 (role too low)."""
    portal = db.session().exec(select(Portal).where(Portal.slug == slug)).first()
    role = role_in(portal, current_user) if portal else None
    if role is None:
        abort(404)
    if needs == Role.ADMIN and role != Role.ADMIN:
        abort(403)
    g.portal, g.role = portal, role
    return portal


def require_superadmin() -> None:
    if not current_user.is_superadmin:
        abort(403)
