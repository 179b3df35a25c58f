"""A worker thread's connections kept open between its delivery jobs, as Postfix's connection cache
does (smtp_connection_cache_time_limit): when a job (worker.Run) ends, its connections are kept
for DELIVERY_KEEP_CONNECTION_SECONDS after their last message, so that the thread's next job to
the same server sends over them without connecting, greeting, STARTTLS and signing in again.

A kept connection keeps its connection lease (capacity.py), so the cap holds across every worker;
it stops holding a slot once its idle time is up: a thread of its own closes it then (QUIT, lease
given back), since the worker thread may be waiting for jobs. The idle time is shorter than the
third of a lease that a job renews it at, so a kept lease cannot run out. Every kept connection is
closed when the worker stops. A job checks a kept connection before its first message as it
checks its own (the server's settings version, the lease); one to a server the job does not send
to (failing or held since, another portal's) waits out its idle time untouched.
"""
import logging
import threading
from dataclasses import dataclass, field
from time import monotonic

from ..mail.transport import Connection
from . import capacity

log = logging.getLogger(__name__)


@dataclass
class OpenConnection:
    connection: Connection
    lease_id: int
    lease_seconds: float
    version: tuple  # the server's settings it was opened with
    renewed: float = field(default_factory=monotonic)  # its lease was last written
    used: float = field(default_factory=monotonic)  # its last message ended


def close(opened: OpenConnection) -> None:
    """QUIT, close and give the lease back."""
    try:
        opened.connection.close()
    finally:
        capacity.give_back(opened.lease_id)


class KeptConnections:
    """The connections of each worker thread between two of its jobs (server id -> connection)."""

    def __init__(self, app, seconds: float):
        self.seconds = seconds
        self._app = app
        self._kept: dict[int, dict[int, OpenConnection]] = {}  # thread id -> server id -> connection
        self._changed = threading.Condition()
        self._closer: threading.Thread | None = None

    def take(self) -> dict[int, OpenConnection]:
        """The calling thread's kept connections, now its job's (none are closed under a job)."""
        with self._changed:
            return self._kept.pop(threading.get_ident(), {})

    def keep(self, connections: dict[int, OpenConnection]) -> None:
        """Keep the connections of the calling thread's job that ended, until their idle time is up."""
        if not connections:
            return
        with self._changed:
            self._kept[threading.get_ident()] = connections
            if self._closer is None:
                self._closer = threading.Thread(target=self._close_idle, name="close-idle-connections", daemon=True)
                self._closer.start()
            self._changed.notify()

    def close_all(self) -> None:
        """The worker stops: close every kept connection."""
        with self._changed:
            every = [opened for kept in self._kept.values() for opened in kept.values()]
            self._kept.clear()
        self._close(every)

    def _close_idle(self) -> None:
        while True:
            with self._changed:
                idle = self._take_idle(monotonic())
                if not idle:
                    first = min((o.used for kept in self._kept.values() for o in kept.values()), default=None)
                    self._changed.wait(None if first is None else first + self.seconds - monotonic())
                    continue
            self._close(idle)

    def _take_idle(self, now: float) -> list[OpenConnection]:
        idle = []
        for thread in list(self._kept):
            kept = self._kept[thread]
            for server_id in [s for s, opened in kept.items() if now - opened.used >= self.seconds]:
                idle.append(kept.pop(server_id))
            if not kept:
                del self._kept[thread]
        return idle

    def _close(self, connections: list[OpenConnection]) -> None:
        if not connections:
            return
        with self._app.app_context():
            for opened in connections:
                try:
                    close(opened)
                except Exception as error:  # noqa: BLE001 - the lease runs out by itself; the others still close
                    log.warning("could not close an idle connection or give its lease back: %s", error)
