"""Fixtures for the delivery tests (imported by tests/test_delivery*.py and tests/test_worker*.py):
the app with delivery settings small enough for tests, outbox rows made the way the outbox
makes them, runs of the worker in this process, and real `flask mail worker` processes."""
import email
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import timedelta
from email import policy as email_policy
from pathlib import Path

import pytest
from sqlmodel import select

from webapp import db, delivery
from webapp.delivery.worker import Run
from webapp.mail.config import Sender
from webapp.mail.envelope import Envelope
from webapp.mail.message import build_message
from webapp.models import DeliveryAttempt, DeliveryNotice, MailServer, OutboundMail, Portal, utcnow

from .conftest import SECRET_KEYS

ROOT = Path(__file__).resolve().parent.parent
SENDER = Sender("helpdesk@example.com", "Help Desk")

# Seconds instead of minutes: each wait a test depends on is one of these, never a sleep.
FAST = {
    "DELIVERY_RETRY_FIRST_SECONDS": 0.3,
    "DELIVERY_RETRY_MAX_SECONDS": 1.0,
    "DELIVERY_RETRY_JITTER": 0.2,
    "DELIVERY_LIFETIME_HOURS": 1,
    "DELIVERY_LEASE_SECONDS": 8,
    "DELIVERY_SWEEP_SECONDS": 1,
    "DELIVERY_PROBE_SECONDS": 1,
    "DELIVERY_BUSY_RETRY_SECONDS": 0.3,
    "DELIVERY_BATCH": 100,
    "DELIVERY_NOTICE_MINUTES": 60,
}


def wait_until(condition, seconds: float = 30.0, what: str = "the condition"):
    """A hang guard, not a timing: poll `condition` for at most `seconds`; its last value."""
    end = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < end, f"{what} did not come true within {seconds} s"
        time.sleep(0.05)


class Outbox:
    """The outbox of the test app: rows in, the worker run here, rows out."""

    def __init__(self, app):
        self.app = app

    @property
    def settings(self):
        return self.app.extensions["mailroom.delivery"].settings

    def queue(self, portal: Portal, to=("to@example.org",), subject="Hello", sender: Sender = SENDER,
              **values) -> int:
        """A queued message as the outbox accepts it (raw MIME with Bcc, envelope, pending recipients)."""
        envelope = Envelope.of(build_message(sender, list(to), subject, f"Body of {subject}\n"))
        with self.app.app_context():
            now = utcnow()
            mail = OutboundMail(
                portal_id=portal.id, source="api", message_id=envelope.message_id, mail_from=envelope.mail_from,
                recipients=[{"address": r, "state": "pending", "code": None, "reply": ""} for r in envelope.recipients],
                subject=subject, to_summary=", ".join(envelope.recipients), size=len(envelope.raw), raw=envelope.raw,
                created_at=now, updated_at=now, next_attempt_at=now, expires_at=now + self.settings.lifetime)
            for name, value in values.items():
                setattr(mail, name, value)
            db.session().add(mail)
            db.session().commit()
            return mail.id

    def run(self, mail_id=None, owner="test-worker") -> bool:
        """One delivery job, in this process."""
        with self.app.app_context():
            return Run(self.settings, owner).run(mail_id)

    def run_jobs(self, name: str) -> None:
        """Run the jobs of this name waiting in the app's Huey queue, here, as a worker would (the others
        are dropped: `run` delivers the mail)."""
        huey = self.app.extensions["mailroom.delivery"].huey
        while (task := huey.dequeue()) is not None:
            if task.name == name:
                huey.execute(task)

    def slow_backoff(self, first: float = 2.0) -> None:
        """A first backoff that no pause of a loaded machine outlasts, for a test that looks at a
        deferred message before its retry: FAST's 0.3 s can pass while the outcome is being written,
        and the same run then rightly takes the message again."""
        self.app.config.update(DELIVERY_RETRY_FIRST_SECONDS=first, DELIVERY_RETRY_MAX_SECONDS=2 * first)
        delivery.init_app(self.app)

    def mail(self, mail_id: int) -> OutboundMail:
        with self.app.app_context():
            return db.session().get(OutboundMail, mail_id)

    def attempts(self, mail_id: int) -> list[DeliveryAttempt]:
        with self.app.app_context():
            return list(db.session().exec(select(DeliveryAttempt).where(DeliveryAttempt.mail_id == mail_id)
                                          .order_by(DeliveryAttempt.id)))

    def server(self, server_id: int) -> MailServer:
        with self.app.app_context():
            return db.session().get(MailServer, server_id, populate_existing=True)

    def portal(self, portal_id: int) -> Portal:
        with self.app.app_context():
            return db.session().get(Portal, portal_id, populate_existing=True)

    def notices(self, portal: Portal) -> list[tuple[str, OutboundMail]]:
        with self.app.app_context():
            rows = db.session().exec(select(DeliveryNotice, OutboundMail).join(
                OutboundMail, OutboundMail.id == DeliveryNotice.mail_id).where(
                DeliveryNotice.portal_id == portal.id).order_by(DeliveryNotice.id)).all()
            return [(notice.kind, mail) for notice, mail in rows]

    def all(self, portal: Portal | None = None) -> list[OutboundMail]:
        with self.app.app_context():
            query = select(OutboundMail).order_by(OutboundMail.id)
            if portal is not None:
                query = query.where(OutboundMail.portal_id == portal.id)
            return list(db.session().exec(query))

    @staticmethod
    def text(mail: OutboundMail) -> str:
        """The body of a stored message, decoded."""
        return email.message_from_bytes(mail.raw, policy=email_policy.default).get_content()

    def make_due(self, mail_id: int) -> None:
        """Skip the rest of the wait of a deferred message (the wait itself is tested on its own)."""
        with self.app.app_context():
            mail = db.session().get(OutboundMail, mail_id)
            mail.next_attempt_at = utcnow() - timedelta(seconds=1)
            db.session().commit()


@pytest.fixture
def outbox(app) -> Outbox:
    app.config.update(FAST)
    delivery.init_app(app)  # the queue again, with the settings above
    return Outbox(app)


def smtp_settings(peer) -> dict:
    return {"host": "127.0.0.1", "port": peer.port, "security": "none"}


# --- real worker processes -------------------------------------------------------------------

LAUNCHER = """
import socket, sys
sys.path.insert(0, {root!r})
from tests.peers.network import _guarded_connect, _guarded_connect_ex
socket.socket.connect, socket.socket.connect_ex = _guarded_connect, _guarded_connect_ex  # loopback only
from flask.cli import main
sys.argv = ["flask", "--app", "webapp", "mail", "worker", *sys.argv[1:]]
main()
"""


class Workers:
    """`flask --app webapp mail worker` processes on the test's database and queue, each behind
    the same network guard as the tests (loopback only)."""

    def __init__(self, app, database_url: str, tmp_path: Path, extra_env: dict):
        self.app, self.database_url, self.tmp_path, self.extra_env = app, database_url, tmp_path, extra_env
        self.processes: list[subprocess.Popen] = []

    def environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_")}
        config = {"DATABASE_URL": self.database_url, "SECRET_KEYS": SECRET_KEYS, "SECRET_KEY": "test-secret-key",
                  "AUTO_MIGRATE": "false", "INSTANCE_PATH": self.app.instance_path,
                  "EXTRA_CA_CERTS": self.app.config["EXTRA_CA_CERTS"] or "", "LOG_LEVEL": "INFO",
                  **{k: str(v) for k, v in FAST.items()}, **self.extra_env}
        env.update({f"MAILROOM_{k}": str(v) for k, v in config.items() if v != ""})
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, threads: int = 2, count: int = 1) -> list[subprocess.Popen]:
        """Start `count` workers at once and wait until each runs its consumer."""
        started = [self._start(threads) for _ in range(count)]
        for process in started:
            wait_until(lambda: process.poll() is not None or b"consumer started" in Path(process.log_path).read_bytes(),
                       60, "the worker to start")
            assert process.poll() is None, self.logs()
        return started

    def _start(self, threads: int) -> subprocess.Popen:
        log = open(self.tmp_path / f"worker-{len(self.processes) + 1}.log", "wb")
        process = subprocess.Popen([sys.executable, "-c", LAUNCHER.format(root=str(ROOT)), "--workers", str(threads)],
                                   cwd=ROOT, env=self.environment(), stdout=log, stderr=subprocess.STDOUT)
        process.log_path = log.name
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path}\n{Path(p.log_path).read_text(errors='replace')}" for p in self.processes)


@pytest.fixture
def workers(app, outbox, database_url, tmp_path, request):
    """Factory of worker processes on a queue of the test's own (Huey's SQLite storage in the
    test's instance folder, or Redis when `request.param` says REDIS_URL; Redis keys are named
    after the queue, removed afterwards). The test app wakes that same queue."""
    extra = {**(getattr(request, "param", None) or {}), "DELIVERY_QUEUE_NAME": f"test_{secrets.token_hex(6)}"}
    app.config.update(extra)
    delivery.init_app(app)
    started = Workers(app, database_url, tmp_path, extra)
    yield started
    started.stop_all()
    app.extensions["mailroom.delivery"].huey.flush()
