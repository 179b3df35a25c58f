"""One time limit for a whole conversation, and the blocking calls that keep to it.

Each call gets only the time that is left: name resolution runs in a daemon thread
that we wait on for at most that long, and before every socket operation the socket
timeout is set to it.
"""
import socket
import threading
from time import monotonic


class DeadlineExceeded(Exception):
    """The time for the whole check or send ran out. Deliberately not an OSError, so
    smtplib does not turn it into SMTPServerDisconnected."""


class Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self._end = monotonic() + seconds

    def __str__(self) -> str:
        return f"{self.seconds:g} s"

    def left(self) -> float:
        """Seconds left; raises DeadlineExceeded when none are."""
        left = self._end - monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"no time left of {self}")
        return left


def call_within(deadline: Deadline, function, *args):
    """Run a blocking call (getaddrinfo) in a daemon thread and wait only the time left."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # handed over to the waiting thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True, name="mailroom-smtp-resolve")
    worker.start()
    worker.join(deadline.left())
    if worker.is_alive():
        raise DeadlineExceeded("no answer from the name resolver")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def connect_within(deadline: Deadline, family: int, sockaddr: tuple) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(deadline.left())
        sock.connect(sockaddr)
    except (TimeoutError, DeadlineExceeded):
        sock.close()
        raise DeadlineExceeded("connect timed out") from None
    except BaseException:
        sock.close()
        raise
    return sock


def sendall_within(deadline: Deadline, sock: socket.socket, data: bytes) -> None:
    sock.settimeout(deadline.left())
    try:
        sock.sendall(data)
    except TimeoutError:
        raise DeadlineExceeded("could not send in time") from None


class DeadlineFile:
    """A socket's reply stream that sets the socket timeout to the time left before each line."""

    def __init__(self, sock: socket.socket, deadline: Deadline):
        self._sock, self._deadline = sock, deadline
        self._file = sock.makefile("rb")

    def readline(self, size: int = -1) -> bytes:
        self._sock.settimeout(self._deadline.left())
        try:
            return self._file.readline(size)
        except TimeoutError:
            raise DeadlineExceeded("no reply in time") from None

    def close(self) -> None:
        self._file.close()
