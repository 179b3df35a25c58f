"""Rate limits of the pages and the API (Flask-Limiter), so that eager users cannot starve the app
(checks and sample mails running at once are bounded by slots.py). Counted in Redis when REDIS_URL
is configured, else in the database (limit_storage.py): either way every process of every host
counts together. Failed sign-ins per account and client address together first (a flood of wrong
passwords from one address does not lock the owner out elsewhere), per client address, and per
account only at a much higher count; sample mails per user.
"""
from flask import request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import current_user

from . import limit_storage  # noqa: F401  (registers the mailroom+database:// storage with `limits`)

limiter = Limiter(key_func=get_remote_address)


def _sign_in_email() -> str:
    return (request.form.get("email") or "").strip().lower()


def sign_in_pair() -> str:
    return f"sign-in:{_sign_in_email()}|from:{get_remote_address() or ''}"


def sign_in_account() -> str:
    return "sign-in:" + _sign_in_email()


def sign_in_address() -> str:
    return "sign-in-from:" + (get_remote_address() or "")


def recovery_address() -> str:
    return "recovery:" + _sign_in_email()


def recovery_client() -> str:
    return "recovery-from:" + (get_remote_address() or "")


def current_user_key() -> str:
    return f"user:{current_user.get_id()}"


def failed_sign_in(response) -> bool:
    return response.status_code == 422


def init_app(app) -> None:
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config.get("REDIS_URL") or "mailroom+database://")
    app.config.setdefault("RATELIMIT_KEY_PREFIX", "mailroom")
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    app.after_request(retry_after_only_when_refused)  # registered first, so it runs after the limiter's
    limiter.init_app(app)


def retry_after_only_when_refused(response):
    """Flask-Limiter writes Retry-After into every response it counts (a 202 too), where a client may
    read it as "wait before the next request" (RFC 9110 10.2.3); only a 429 or 503 means that."""
    if response.status_code not in (429, 503):
        response.headers.pop("Retry-After", None)
    return response
