"""The jobs registered on the app's Huey (queue.py), each run inside an app context."""
from .queue import DAY, Every


def register(queue, huey, app):
    """Register the jobs on `huey` (queue's, being made); (deliver, probe, recover) to enqueue with."""
    from .. import recovery
    from ..grants import refresh_quiet_grants
    from . import health, notices, retention, sweep, worker

    settings = queue.settings

    @huey.task(name="deliver")
    def deliver(mail_id: int | None = None) -> None:
        with app.app_context():
            more = worker.Run(settings, stopping=queue.stopping, kept=queue.connections).run(mail_id)
        if more:
            deliver(None)  # the batch was full: carry on in a new job, after the others waiting

    @huey.task(name="probe")
    def probe(server_id: int) -> None:
        with app.app_context():
            health.probe(server_id, worker.worker_name(), settings)

    @huey.task(name="recover")
    def recover(request_id: int) -> None:
        with app.app_context():
            recovery.answer(request_id)

    @huey.periodic_task(Every(settings.sweep), name="sweep")
    def sweep_job() -> None:
        with app.app_context():
            sweep.sweep(queue)

    @huey.periodic_task(Every(DAY, offset=settings.summary_hour * 3600), name="summary")
    def summary_job() -> None:
        with app.app_context():
            notices.daily_summary(settings)

    @huey.periodic_task(Every(DAY, offset=3 * 3600), name="purge")
    def purge_job() -> None:
        with app.app_context():
            retention.purge(settings)

    @huey.periodic_task(Every(DAY, offset=2 * 3600), name="refresh_tokens")
    def refresh_tokens_job() -> None:
        with app.app_context():
            refresh_quiet_grants(24)

    return deliver, probe, recover
