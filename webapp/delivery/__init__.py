"""Delivery: the worker that sends the portals' queued mail (the outbox) through their servers.

    init_app(app)              the app factory: Huey from the configuration (queue.py)
    wake(mail_ids)             after committing new or released mail: jobs to send it
    recover(request_id)        after committing a password-recovery request: the job that answers it
    release_held(server, why)  after credentials were fixed: the portal's held mail goes again
    run_worker(workers)        `flask mail worker`: Huey's consumer with the delivery jobs

The outbox row is the record of each message (claims.py, outcomes.py); Huey only wakes
workers up and runs the periodic jobs (sweep.py, notices.py, retention.py).
"""
from flask import current_app

from .health import release_held  # noqa: F401  (the hook for saved servers, consents, checks)
from .queue import DeliveryQueue
from .settings import DeliverySettings


def init_app(app) -> None:
    app.extensions["mailroom.delivery"] = DeliveryQueue(app, DeliverySettings.from_config(app.config))


def queue() -> DeliveryQueue:
    return current_app.extensions["mailroom.delivery"]


def wake(mail_ids) -> None:
    queue().wake(mail_ids)


def recover(request_id: int) -> None:
    queue().recover(request_id)


def run_worker(workers: int | None = None) -> None:
    """Run the consumer until SIGINT (graceful: running deliveries finish) or SIGTERM."""
    from .sweep import sweep

    delivery = queue()
    consumer = delivery.consumer(workers)
    delivery.stopping = consumer.stop_flag  # a delivery run stops after its message when this is set
    sweep(delivery)  # what dead workers left, and jobs for due mail
    consumer.run()
