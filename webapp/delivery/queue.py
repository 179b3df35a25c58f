"""Huey as the dispatcher: it wakes workers up and runs the periodic jobs; the outbox rows
stay the record (claims.py). Huey hands a job to one worker at most once and loses it when
that worker is killed, which is why a job only says "there is mail": whoever runs it claims
what is due, and the sweep makes new jobs for due mail that has none.

Storage: SQLite in instance/huey.sqlite3 (one host), or Redis when REDIS_URL is set (workers
on several hosts share the queue), under DELIVERY_QUEUE_NAME. The app factory makes the
DeliveryQueue; Huey itself (and its storage: a file or a Redis connection) is made on first use,
so a process that never queues mail never imports it, and nothing is opened before gunicorn forks
its workers (`--preload`). The jobs run inside an app context.

Jobs: deliver(mail_id) (a Run: worker.py), probe(server_id), recover(request_id) (recovery.answer: a
password-recovery link, made here so that the web request does the same work for every address),
and the periodic sweep (every
DELIVERY_SWEEP_SECONDS), summary (daily at DELIVERY_SUMMARY_HOUR UTC), purge and
refresh_tokens (daily).
"""
import logging
import math
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from .kept import KeptConnections
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


class DeliveryQueue:
    """The app's Huey with the delivery jobs registered on it."""

    WAKE_MAX = 100  # jobs one wake() or sweep adds at most: each job goes on with more mail of its portal

    def __init__(self, app, settings: DeliverySettings):
        self.settings = settings
        self.stopping = threading.Event()  # set when the worker shuts down: runs stop after their message
        # a worker thread's connections between its jobs; idle no longer than a third of a lease (kept.py)
        self.connections = KeptConnections(app, min(settings.keep_connections, settings.lease / 3))
        self._app = app
        self._huey = None
        self._making = threading.Lock()

    @property
    def huey(self):
        if self._huey is None:
            with self._making:
                if self._huey is None:  # else another thread made it while this one waited
                    self._huey = self._make_huey()
        return self._huey

    def _make_huey(self):
        from huey import RedisHuey

        from .job_storage import SqliteHuey

        from . import jobs

        redis_url = self._app.config.get("REDIS_URL")
        if redis_url:
            huey = RedisHuey(self.settings.queue_name, url=redis_url, results=False)
        else:
            huey = SqliteHuey(self.settings.queue_name, filename=str(Path(self._app.instance_path) / "huey.sqlite3"),
                              results=False)
        self._deliver, self._probe, self._recover = jobs.register(self, huey, self._app)
        return huey

    def wake(self, mail_ids: Iterable[int | None]) -> None:
        """Jobs for mail just committed (queued, released): the one call after new mail. Never
        raises: if the queue cannot be reached, the sweep finds the mail (the log says so)."""
        ids = list(mail_ids)[:self.WAKE_MAX]
        if not ids:
            return
        try:
            self.huey  # noqa: B018  (made here, so a failure to make it is caught too)
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

    def recover(self, request_id: int) -> None:
        """The job that answers a password-recovery request just committed. Never raises, as wake(): the
        sweep answers the request when its job cannot be queued."""
        try:
            self.huey  # noqa: B018  (registers the jobs)
            self._recover(request_id)
        except Exception as error:  # noqa: BLE001 - as in wake(): the row is the record
            log.warning("could not queue the answer to recovery request %s (%s): the next sweep answers it",
                        request_id, error)

    def probe(self, server_id: int) -> None:
        self.huey  # noqa: B018  (registers the jobs)
        self._probe(server_id)

    def waiting(self) -> int:
        """Jobs in the queue that no worker took yet."""
        return self.huey.pending_count()

    def consumer(self, workers: int | None = None):
        from .consumer import Consumer

        tick = max(1, min(60, int(self.settings.sweep)))
        return Consumer(self.huey, tick=tick, stopped=self.connections.close_all,
                        workers=workers or self.settings.workers, worker_type="thread",
                        periodic=True, initial_delay=0.1, max_delay=1.0, scheduler_interval=1,
                        check_worker_health=True)
