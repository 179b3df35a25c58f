"""Checks and sample mails running at once, per app process: in all, per portal, and per server (its
"Max. concurrent connections"). Beyond that the answer is an immediate "busy, try again" (Busy),
never a wait."""
import threading
from collections import Counter
from contextlib import contextmanager


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


def init_app(app) -> None:
    app.extensions["mailroom.slots"] = Slots(app.config["CHECKS_PER_PROCESS"], app.config["CHECKS_PER_PORTAL"])
