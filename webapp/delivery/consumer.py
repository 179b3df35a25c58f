"""Huey's consumer as `flask mail worker` runs it (imported by that command only)."""
import signal
from time import monotonic

from huey.consumer import Consumer as HueyConsumer


class Consumer(HueyConsumer):
    """Huey's consumer, asking the periodic jobs every `tick` seconds instead of every minute,
    and stopping the same way on SIGINT and SIGTERM: gracefully (the messages under way are
    finished). The same stop request often arrives twice (Ctrl-C reaches the worker, and `make
    run` passes it on): a second signal within SAME_STOP seconds is that one again; a later one
    stops at once. SIGHUP restarts, as in Huey. Once the workers stopped, `stopped` is called
    (the connections they kept are closed)."""

    SAME_STOP = 2.0

    def __init__(self, huey, tick: int, stopped, **options):
        self.tick = tick
        self._stopped = stopped
        self._first_stop: float | None = None
        super().__init__(huey, **options)

    def stop(self, graceful=False):
        super().stop(graceful)
        self._stopped()

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
