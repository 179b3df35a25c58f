"""One time limit for a whole conversation, and the blocking calls that keep to it.

Each call gets only the time that is left: name resolution runs in a daemon thread
that we wait on for at most that long, and before every socket operation the socket
timeout is set to it. That is not enough against a peer that trickles (a byte every
fraction of a second: each read gets one, so no socket timeout ever expires): a
Watchdog shuts the connection down when the deadline is over, and what was cut short
by it is DeadlineExceeded, not a closed connection or a failed TLS handshake.
"""
import os
import socket
import threading
from contextlib import contextmanager
from time import monotonic


class DeadlineExceeded(Exception):
    """The time for the whole check or send ran out. Deliberately not an OSError, so
    smtplib does not turn it into SMTPServerDisconnected. `begun`: the server had begun
    the reply it did not finish (it trickled), rather than said nothing."""
    begun = False


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

    def over(self) -> bool:
        return monotonic() >= self._end


class Watchdog:
    """Shuts a connection down when its deadline is over, unless cancelled first; `fired` says it did.

    It holds a duplicate of the socket's descriptor: shutdown() acts on the connection, not on one
    descriptor, so it ends the conversation however the socket was wrapped since (TLS wrapping moves
    the descriptor to an SSLSocket and detaches the plain socket, whose own shutdown() would fail
    with EBADF and do nothing). cancel() (the conversation is over, or waits idle between messages)
    ends its thread and closes the duplicate."""

    def __init__(self, sock: socket.socket, deadline: Deadline):
        self.fired, self._deadline = False, deadline
        self._sock = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))  # TLS too
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="mailroom-deadline-watchdog")
        self._thread.start()

    def _watch(self) -> None:
        try:
            while not self._deadline.over():
                if self._cancelled.wait(max(self._end_in(), 0.001)):
                    return
            self.fired = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed by the peer meanwhile
        finally:
            self._sock.close()

    def _end_in(self) -> float:
        try:
            return self._deadline.left()
        except DeadlineExceeded:
            return 0.0

    def cancel(self) -> None:
        self._cancelled.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


@contextmanager
def cut_short(deadline: Deadline, what: str = "no reply in time"):
    """A socket operation's failure is DeadlineExceeded when the deadline is over: the socket's
    timeout expired, or the Watchdog shut the connection down (a read that ends, a write or a TLS
    handshake that fails, because of it)."""
    try:
        yield
    except TimeoutError:
        raise DeadlineExceeded(what) from None
    except (OSError, EOFError):
        if deadline.over():
            raise DeadlineExceeded(what) from None
        raise


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
    with cut_short(deadline, "could not send in time"):
        sock.sendall(data)


class DeadlineFile:
    """A socket's reply stream that sets the socket timeout to the time left before each line. A line
    cut short when the deadline is over (the Watchdog shut the connection down under a trickle) is
    DeadlineExceeded, not a reply nor the end of the conversation; a whole line is the server's reply,
    however late it came (the 250 after DATA dropped would send the message twice)."""

    def __init__(self, sock: socket.socket, deadline: Deadline):
        self._sock, self._deadline = sock, deadline
        self._file = sock.makefile("rb")

    def readline(self, size: int = -1) -> bytes:
        self._sock.settimeout(self._deadline.left())
        with cut_short(self._deadline):
            line = self._file.readline(size)
        if self._deadline.over() and not line.endswith(b"\n"):
            late = DeadlineExceeded("no reply in time")
            late.begun = bool(line)
            raise late
        return line

    def close(self) -> None:
        self._file.close()
