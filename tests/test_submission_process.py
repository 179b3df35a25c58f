"""The listener as it runs: `flask --app webapp mail relay` in a process of its own, on the test
database. Accepted means committed: killed after the commit and before the reply, the message is
stored (the client, not told, sends it again: at most a duplicate); killed before the commit,
nothing is stored and the client was not told it was accepted."""
import os
import queue
import signal
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import SECRET_KEYS
from tests.peers.smtp import free_port
from webapp import db
from webapp.models import SmtpCredential

from .test_submission import SCAN, login, stored, submit  # noqa: F401  (login: a fixture)

ROOT = Path(__file__).resolve().parent.parent
FLASK = Path(sys.executable).parent / "flask"


class RelayProcess:
    def __init__(self, app, database_url: str, **environment):
        self.starttls_port, self.tls_port = free_port(), free_port()
        env = {**os.environ, "MAILROOM_DATABASE_URL": database_url, "MAILROOM_SECRET_KEYS": SECRET_KEYS,
               "MAILROOM_SECRET_KEY": "test-secret-key", "MAILROOM_AUTO_MIGRATE": "false",
               "MAILROOM_INSTANCE_PATH": app.instance_path, "MAILROOM_SUBMISSION_HOSTNAME": "localhost",
               "MAILROOM_SUBMISSION_AUTH_FAILURE_DELAY": "0", **environment}
        self.process = subprocess.Popen(
            [str(FLASK), "--app", "webapp", "mail", "relay", "--starttls-port", str(self.starttls_port),
             "--tls-port", str(self.tls_port)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("SMTP submission on 127.0.0.1")
        self.cert_file = Path(app.instance_path) / "submission-cert.pem"

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for(self, words: str, timeout: float = 60) -> str:
        """Hang guard: the generous timeout only ends a test that would otherwise never end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.seen.append(line)
            if words in line:
                return line
        raise AssertionError(f"the listener never said {words!r}; it said:\n{''.join(self.seen)}")

    def client(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.starttls_port, timeout=60)
        client.starttls(context=ssl.create_default_context(cafile=str(self.cert_file)))
        client.ehlo()
        return client

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def relay_process(app, database_url):
    started: list[RelayProcess] = []

    def start(**environment) -> RelayProcess:
        started.append(RelayProcess(app, database_url, **environment))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def test_the_command_listens_accepts_and_stops_on_sigterm(app, relay_process, login):
    relay, account = relay_process(), login()
    with relay.client() as client:
        client.login(account.username, account.password)
        code, reply = submit(client)
    assert code == 250
    [mail] = stored(app)
    assert reply == f"2.0.0 Ok: queued as {mail.id}".encode() and mail.source == "smtp"
    with smtplib.SMTP_SSL("127.0.0.1", relay.tls_port, timeout=60,
                          context=ssl.create_default_context(cafile=str(relay.cert_file))) as client:
        client.login(account.username, account.password)
        assert submit(client)[0] == 250
    relay.process.send_signal(signal.SIGTERM)
    assert relay.process.wait(timeout=30) == 0


def _submit_in_background(relay: RelayProcess, account) -> dict:
    outcome: dict = {}

    def run():
        try:
            with relay.client() as client:
                client.login(account.username, account.password)
                outcome["reply"] = submit(client)
        except (smtplib.SMTPException, OSError) as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def test_killed_after_the_commit_the_message_is_kept_though_the_client_was_not_told(app, relay_process, login):
    relay, account = relay_process(MAILROOM_SUBMISSION_TEST_PAUSE="after-commit=60"), login()
    outcome = _submit_in_background(relay, account)
    relay.wait_for("test pause after-commit")
    relay.process.kill()
    outcome["thread"].join(timeout=60)
    assert "reply" not in outcome and isinstance(outcome["error"], smtplib.SMTPServerDisconnected)
    [mail] = stored(app)  # committed before the reply that never came: the client sends it again
    assert mail.state == "queued" and mail.raw.endswith(b"The scan.\r\n")


def test_killed_before_the_commit_nothing_is_stored_and_the_client_was_not_told(app, relay_process, login):
    relay, account = relay_process(MAILROOM_SUBMISSION_TEST_PAUSE="before-commit=60"), login()
    outcome = _submit_in_background(relay, account)
    relay.wait_for("test pause before-commit")
    relay.process.kill()
    outcome["thread"].join(timeout=60)
    assert "reply" not in outcome and isinstance(outcome["error"], smtplib.SMTPServerDisconnected)
    assert stored(app) == []
    with app.app_context():  # the message was counted in the transaction that would have stored it: not kept
        assert db.session().get(SmtpCredential, account.id).day_count == 0
