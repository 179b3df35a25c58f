"""One writer at a time per process on SQLite, queued on a lock instead of SQLite's busy handler.

SQLite lets one connection write at a time. A writer that finds the file locked does not wait in
line: SQLite's busy handler sleeps (1, 2, 5, 10, ... up to 100 ms) and tries again. Threads of one
process that wrote at once therefore waited for those sleeps, not for each other: with four SMTP
connections the listener's count of a message took 4.6 ms against 0.25 ms of work. Around a write transaction, `one_writer(engine)` makes the threads of a process
take turns on a lock, each woken the moment the one before it is done. Writers in other processes
still meet the busy handler. On PostgreSQL, which locks rows, it does nothing.

Hold it from the transaction's first write to its commit, and not around anything slow. Enter it
only when the thread's connections hold no write yet (a session with nothing flushed since its last
commit or rollback): a thread holding SQLite's write lock while it waits here, and one holding
this lock while it waits for SQLite, would wait for each other until the busy timeout.
"""
import threading
import weakref
from contextlib import nullcontext

_locks: "weakref.WeakKeyDictionary[object, threading.RLock]" = weakref.WeakKeyDictionary()
_making = threading.Lock()


def one_writer(engine):
    """A context manager: the process's lock for `engine` on SQLite (reentrant), else nothing."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    with _making:
        lock = _locks.get(engine)
        if lock is None:
            lock = _locks[engine] = threading.RLock()
    return lock
