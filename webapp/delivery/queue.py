"""Huey as the dispatcher: it wakes workers up and runs the periodic jobs; the outbox rows
stay the record (claims.py). Huey hands a job to one worker at most once and loses it when
that worker is killed, which is why a job only says "there is mail": whoever runs it claims
what is due, and the sweep makes new jobs for due mail that has none.

Storage: SQLite in instance/huey.sqlite3 (one host), or Redis when REDIS_URL is set (workers
on several hosts share the queue), under DELIVERY_QUEUE_NAME. Built by the app factory; the
jobs run inside an app context.

Jobs: deliver(mail_id) (a Run: worker.py), probe(server_id), and the periodic sweep (every
DELIVERY_SWEEP_SECONDS), summary (daily at DELIVERY_SUMMARY_HOUR UTC), purge and
refresh_tokens (daily).
"""
import logging
import math
import signal
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from time import monotonic

from huey import RedisHuey, SqliteHuey
from huey.storage import SqliteStorage
from huey.consumer import Consumer

from .settings import DeliverySettings

log = logging.getLogger(__name__)
DAY = 86400


class Every:
    """A periodic job's schedule for Huey: due once each time the clock passes a multiple of
    `seconds` (plus `offset`) since the epoch, in UTC. Huey asks every tick (Consumer below)."""

    def __init__(self, seconds: float, offset: float = 0):
        self.seconds, self.offset = seconds, offset
        self._last: int | None = None

    def __call__(self, timestamp: datetime) -> bool:
        moment = timestamp.replace(tzinfo=UTC) if timestamp.tzinfo is None else timestamp
        period = math.floor((moment.timestamp() - self.offset) / self.seconds)
        last, self._last = self._last, period
        return last is not None and period > last


class _JobStorage(SqliteStorage):
    """Huey's SQLite storage as the app's database is set up (db.py): WAL with synchronous=NORMAL.
    Huey's default (synchronous=FULL) waits for the disk at every commit, holding the file's write
    lock meanwhile, so every message handed in and every job taken waited for an fsync and all of
    them queued behind each other (bench/README.md, the API and the drain). A crash may lose the
    last jobs, never the file; jobs only wake workers up, the outbox row is the record, and the
    sweep makes a job for due mail that has none."""

    def _create_connection(self):
        connection = super()._create_connection()
        connection.execute("pragma synchronous=NORMAL")
        return connection


class _SqliteHuey(SqliteHuey):
    storage_class = _JobStorage


class DeliveryQueue:
    """The app's Huey with the delivery jobs registered on it."""

    WAKE_MAX = 100  # jobs one wake() or sweep adds at most: each job goes on with more mail of its portal

    def __init__(self, app, settings: DeliverySettings):
        self.settings = settings
        self.stopping = threading.Event()  # set when the worker shuts down: runs stop after their message
        redis_url = app.config.get("REDIS_URL")
        if redis_url:
            self.huey = RedisHuey(settings.queue_name, url=redis_url, results=False)
        else:
            self.huey = _SqliteHuey(settings.queue_name, filename=str(Path(app.instance_path) / "huey.sqlite3"),
                                    results=False)
        from . import jobs

        self._deliver, self._probe = jobs.register(self, app)

    def wake(self, mail_ids: Iterable[int | None]) -> None:
        """Jobs for mail just committed (queued, released): the one call after new mail. Never
        raises: if the queue cannot be reached, the sweep finds the mail (the log says so)."""
        ids = list(mail_ids)[:self.WAKE_MAX]
        try:
            for mail_id in ids:
                self._deliver(mail_id)
        except Exception as error:  # noqa: BLE001 - Redis down, a locked file: the rows are safe all the same
            log.warning("could not wake the delivery worker (%s): the next sweep sends the mail", error)

    def wake_at(self, mail_id: int, at: datetime) -> None:
        """A job for one message put back until `at` (its server had no free connection or send slot):
        it is tried when it is due, not at the next sweep, when no run of its portal is left to take
        it. Never raises, as wake()."""
        delay = max(0.0, (at - datetime.now(UTC)).total_seconds())
        try:
            self._deliver.schedule(args=(mail_id,), delay=delay)
        except Exception as error:  # noqa: BLE001 - as in wake(): the sweep finds the mail
            log.warning("could not schedule the delivery of mail %s (%s): the next sweep sends it", mail_id, error)

    def probe(self, server_id: int) -> None:
        self._probe(server_id)

    def waiting(self) -> int:
        """Jobs in the queue that no worker took yet."""
        return self.huey.pending_count()

    def consumer(self, workers: int | None = None) -> Consumer:
        tick = max(1, min(60, int(self.settings.sweep)))
        return _Consumer(self.huey, tick=tick, workers=workers or self.settings.workers, worker_type="thread",
                         periodic=True, initial_delay=0.1, max_delay=1.0, scheduler_interval=1,
                         check_worker_health=True)


class _Consumer(Consumer):
    """Huey's consumer, asking the periodic jobs every `tick` seconds instead of every minute,
    and stopping the same way on SIGINT and SIGTERM: gracefully (the messages under way are
    finished). The same stop request often arrives twice (Ctrl-C reaches the worker, and `make
    run` passes it on): a second signal within SAME_STOP seconds is that one again; a later one
    stops at once. SIGHUP restarts, as in Huey."""

    SAME_STOP = 2.0

    def __init__(self, huey, tick: int, **options):
        self.tick = tick
        self._first_stop: float | None = None
        super().__init__(huey, **options)

    def _create_scheduler(self):
        scheduler = super()._create_scheduler()
        scheduler.periodic_task_seconds = self.tick
        return scheduler

    def _set_signal_handlers(self):
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._handle_signal)

    def _handle_signal(self, signum, frame):
        if self._first_stop is not None:
            if monotonic() - self._first_stop < self.SAME_STOP:
                return
            raise KeyboardInterrupt  # asked again: stop now
        self._first_stop = monotonic()
        self._signum, self._restart, self._graceful = signum, signum == signal.SIGHUP, True
