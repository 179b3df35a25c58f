"""Bounds, so that slow servers or eager users cannot starve the app.

- Checks and sample mails running at once, per app process: in all, per portal, and per
  server (its "Max. concurrent connections"). Beyond that the answer is an immediate
  "busy, try again" (Busy), never a wait.
- Rate limits (Flask-Limiter), counted in Redis when REDIS_URL is configured, else in the
  database (limit_storage.py): either way every process of every host counts together.
  Failed sign-ins per account and client address together first (a flood of wrong passwords
  from one address does not lock the owner out elsewhere), per client address, and per
  account only at a much higher count; sample mails per user.
"""
import threading
from collections import Counter
from contextlib import contextmanager

from flask import request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import current_user

from . import limit_storage  # noqa: F401  (registers the mailroom+database:// storage with `limits`)

limiter = Limiter(key_func=get_remote_address)


class Busy(Exception):
    """Too many checks or sample mails at once; str() says which bound, in words."""


class Slots:
    def __init__(self, per_process: int, per_portal: int):
        self.per_process, self.per_portal = per_process, per_portal
        self._lock = threading.Lock()
        self._running = 0
        self._portals: Counter = Counter()
        self._servers: Counter = Counter()

    @contextmanager
    def hold(self, portal_id: int, server_id: int | None, server_limit: int):
        with self._lock:
            if self._running >= self.per_process:
                raise Busy(f"Mailroom is already talking to {self._running} mail servers; try again in a moment.")
            if self._portals[portal_id] >= self.per_portal:
                raise Busy(f"This portal already has {self._portals[portal_id]} checks or sample mails running; "
                           "try again when they are done.")
            if server_id is not None and self._servers[server_id] >= server_limit:
                raise Busy(f"This server already has {self._servers[server_id]} connection(s) open, its "
                           "“Max. concurrent connections”; try again in a moment.")
            self._running += 1
            self._portals[portal_id] += 1
            if server_id is not None:
                self._servers[server_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._portals[portal_id] -= 1
                if server_id is not None:
                    self._servers[server_id] -= 1


def slots() -> Slots:
    from flask import current_app

    return current_app.extensions["mailroom.slots"]


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
    config = app.config
    app.extensions["mailroom.slots"] = Slots(config["CHECKS_PER_PROCESS"], config["CHECKS_PER_PORTAL"])
    app.config.setdefault("RATELIMIT_STORAGE_URI", config.get("REDIS_URL") or "mailroom+database://")
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
