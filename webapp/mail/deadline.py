"""One time limit for a whole conversation, and the blocking calls that keep to it.

Each call gets only the time that is left: name resolution runs in a daemon thread
that we wait on for at most that long, and before every socket operation the socket
timeout is set to it. That is not enough against a peer that trickles (a byte every
fraction of a second: each read gets one, so no socket timeout ever expires): a
Watchdog shuts the connection down when the deadline is over, and what was cut short
by it is DeadlineExceeded, not a closed connection or a failed TLS handshake.
"""
import heapq
import itertools
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

    @property
    def end(self) -> float:
        """When it is over, in time.monotonic()'s seconds."""
        return self._end


WATCHDOG_THREAD = "mailroom-deadline-watchdog"  # the name of the process's one watchdog thread


class _Scheduler:
    """One thread for the whole process that does what is due when it is due: a heap of (time, seq, entry),
    earliest first, and a Condition. Arming pushes an entry (and wakes the thread only if the entry is the
    new earliest); nothing is ever taken out early: a cancelled entry stays until its time comes or until
    cancelled ones are the greater part of the heap (then the heap is rebuilt without them). An entry's
    due() runs under the condition's lock, so cancel() (which takes it too) and due() never overlap; due()
    returns None when done, or a later time to be called again. The thread starts with the first entry and
    again in a forked child, which watches nothing of its parent's (_forget_inherited)."""

    COMPACT_FROM = 64  # below this many entries, cancelled ones wait for their time

    def __init__(self):
        self._reset()
        if hasattr(os, "register_at_fork"):  # POSIX: where there is fork
            os.register_at_fork(before=self._lock_for_fork, after_in_parent=self._unlock_after_fork,
                                after_in_child=self._forget_inherited)

    def _reset(self) -> None:
        self.condition = threading.Condition()  # reentrant: a due() may cancel a watchdog
        self._heap: list = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._cancelled = 0  # cancelled entries still in the heap

    def arm(self, when: float, entry) -> None:
        with self.condition:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name=WATCHDOG_THREAD)
                self._thread.start()
            self._push(when, entry)

    def _push(self, when: float, entry) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), entry))
        if self._heap[0][2] is entry:
            self.condition.notify()

    def cancelled(self) -> None:
        """An entry in the heap was cancelled (call with the lock held)."""
        self._cancelled += 1
        if self._cancelled * 2 > len(self._heap) >= self.COMPACT_FROM:
            self._heap = [item for item in self._heap if not item[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _run(self) -> None:
        with self.condition:
            while True:
                if not self._heap:
                    self.condition.wait()
                    continue
                wait = self._heap[0][0] - monotonic()
                if wait > 0:
                    self.condition.wait(wait)
                    continue
                _, _, entry = heapq.heappop(self._heap)
                if entry.cancelled:
                    self._cancelled -= 1
                    continue
                try:
                    later = entry.due()
                except Exception:  # never lose the thread that watches every connection
                    later = None
                if later is not None:
                    self._push(later, entry)

    def _lock_for_fork(self) -> None:
        self.condition.acquire()  # the child gets the heap whole, never half pushed

    def _unlock_after_fork(self) -> None:
        self.condition.release()

    def _forget_inherited(self) -> None:
        """In a forked child: its parent's conversations are not the child's to end (a shutdown acts on the
        connection, the parent's too): close the child's copies of their descriptors and watch nothing."""
        inherited = self._heap
        self._reset()
        for _, _, entry in inherited:
            forget = getattr(entry, "forget", None)
            if forget is not None:
                forget()


_scheduler = _Scheduler()


def at(when: float, entry) -> None:
    """Call `entry.due()` at `when` (time.monotonic()), on the watchdog thread with its lock held, unless
    `entry.cancelled` is true by then; due() returns None, or a later time to be called again then. In a
    forked child the entries of its parent are dropped, after their `forget()` if they have one."""
    _scheduler.arm(when, entry)


class Watchdog:
    """Shuts a connection down when its deadline is over, unless cancelled first; `fired` says it did.

    It holds a duplicate of the socket's descriptor: shutdown() acts on the connection, not on one
    descriptor, so it ends the conversation however the socket was wrapped since (TLS wrapping moves
    the descriptor to an SSLSocket and detaches the plain socket, whose own shutdown() would fail
    with EBADF and do nothing). Every Watchdog of the process is watched by one thread (_Scheduler):
    arming one starts no thread. cancel() (the conversation is over, or waits idle between messages)
    closes the duplicate; once it returns the watchdog has either fired already or never will."""

    def __init__(self, sock: socket.socket, deadline: Deadline):
        self.fired = self.cancelled = False
        self._sock = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))  # TLS too
        at(deadline.end, self)

    def due(self) -> None:
        """The deadline is over (called by the scheduler, its lock held, never after cancel)."""
        self.fired = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed by the peer meanwhile
        finally:
            self._sock.close()

    def cancel(self) -> None:
        with _scheduler.condition:
            if self.cancelled:
                return
            self.cancelled = True
            if not self.fired:  # still in the heap
                _scheduler.cancelled()
            self._sock.close()

    def forget(self) -> None:
        """Inherited by a forked child (the scheduler's lock is new there, and not needed)."""
        self.cancelled = True
        self._sock.close()


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
