"""Who may do what: sign-in, portal access by role, cookies and response headers."""
import re
import secrets
from functools import cache

from flask import abort, g, redirect, request, session, url_for
from flask_login import LoginManager, current_user
from sqlalchemy import and_, bindparam
from sqlmodel import select
from werkzeug.routing import BaseConverter
from werkzeug.security import generate_password_hash

from . import db, sessions
from .audit import Actor
from .models import MAX_ID, Membership, Portal, Role, User

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Please sign in to continue."

# Every form posts to Mailroom itself: leaving for an OAuth provider is a plain navigation
# (views/oauth.py), never a form's redirect, so form-action needs no other origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Pages a user who must choose a new password may still reach.
OPEN_TO_NEW_PASSWORDS = {"auth.password", "auth.logout", "auth.login", "static"}


class IdConverter(BaseConverter):
    """<id:name>: a positive integer a database row can have; anything else is a 404."""

    regex = r"[1-9][0-9]{0,9}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if number > MAX_ID:
            from werkzeug.routing import ValidationError

            raise ValidationError()
        return number

    def to_url(self, value) -> str:
        return str(int(value))


def init_app(app) -> None:
    app.url_map.converters["id"] = IdConverter
    login_manager.init_app(app)
    sessions.init_app(app)
    app.before_request(_same_origin_posts)
    app.before_request(_new_password_first)
    app.after_request(_security_headers)


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    """Only a server-side session signs anyone in (never a cookie alone)."""
    if getattr(session, "sid", None) is None or not user_id.isdigit() or int(user_id) > MAX_ID:
        return None
    user = g.pop("session_user", None)
    if user is None or user.id != int(user_id):
        user = db.session().get(User, int(user_id))
    return user if user and user.is_active else None


def _same_origin_posts():
    """Beside the CSRF token: a POST that says it comes from another site is refused."""
    origin = request.headers.get("Origin")
    if request.method == "POST" and origin and not sessions.sessionless(request) and origin != request.host_url.rstrip("/"):
        abort(400)


def _new_password_first():
    """A user whose password someone else chose (a new user, a reset) chooses their own first."""
    if sessions.sessionless(request):  # no user is signed in there (an API key authorizes each request)
        return None
    if (current_user.is_authenticated and current_user.must_change_password
            and request.endpoint not in OPEN_TO_NEW_PASSWORDS):
        return redirect(url_for("auth.password"), 303)
    return None


def _security_headers(response):
    headers = response.headers
    if not _fragment_for_htmx():  # a fragment goes into a page that has these already
        headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    if request.is_secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.endpoint != "static":
        headers["Cache-Control"] = "no-store"  # pages carry a CSRF token and what only this user may see
    response.vary.add("HX-Request")  # one URL serves a whole page or, to htmx, a fragment
    return response


def _fragment_for_htmx() -> bool:
    """An answer to htmx, to be inserted into the page that asked (not a document of its own)."""
    return (request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"
            and request.headers.get("HX-Boosted") != "true")


def hash_password(password: str) -> str:
    return generate_password_hash(password)


@cache
def unknown_user_hash() -> str:
    """What a password is checked against when nobody has the username, so an unknown username
    costs what a wrong password does (made at the first such sign-in: hashing takes about 0.1 s)."""
    return hash_password(secrets.token_urlsafe(16))


def current_actor() -> Actor:
    return Actor.of(current_user)


# Built once: building a statement costs about as much as running it on SQLite.
_PORTAL_AND_ROLE = (select(Portal, Membership.role)
                    .outerjoin(Membership, and_(Membership.portal_id == Portal.id,
                                                Membership.user_id == bindparam("user_id")))
                    .where(Portal.slug == bindparam("slug")))


def load_portal(slug: str, needs: Role = Role.STAFF) -> Portal:
    """The portal the current user may act on, or 404 (not a member) / 403 (role too low).
    One query: the portal with the user's membership, if any."""
    if not SLUG.fullmatch(slug):  # nothing a portal can be called reaches the database
        abort(404)
    row = db.session().exec(_PORTAL_AND_ROLE, params={"slug": slug, "user_id": current_user.id}).first()
    if row is None:
        abort(404)
    portal, role = row
    if current_user.is_superadmin:
        role = Role.ADMIN
    if role is None:
        abort(404)
    if needs == Role.ADMIN and role != Role.ADMIN:
        abort(403)
    g.portal, g.role = portal, Role(role)
    return portal


def require_superadmin() -> None:
    if not current_user.is_superadmin:
        abort(403)
