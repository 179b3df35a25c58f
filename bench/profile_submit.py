"""The SMTP submission listener's CPU per message: the listener (a Relay, both ports) in this process,
4 client processes (bench/smtp_client.py: STARTTLS, AUTH, then N/4 messages each on one connection).

    .venv/bin/python bench/profile_submit.py
    (BENCH_PROFILE_MESSAGES: 800 per round; BENCH_PROFILE_ROUNDS: 2; BENCH_PROFILE_TOP: 0, else the
    functions of one thread storing messages, handle_DATA's work called directly, under cProfile)

A throwaway instance on SQLite set up through the CLI (bench/mailroom.py), one server with the From
address, one SMTP credential that may use it; the message is the one bench/delivery.py sends. Each
round: messages/s, and this process's CPU per message (the listener's threads, the event loop's and
the database threads; the clients are other processes). Then where the database threads' CPU goes:
the work each thread hop runs (SubmissionHandler._in_app, by the function it runs), per message.
"""
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import harness
import mailroom

BENCH = Path(__file__).resolve().parent
MESSAGES = int(os.environ.get("BENCH_PROFILE_MESSAGES", 800))
ROUNDS = int(os.environ.get("BENCH_PROFILE_ROUNDS", 2))
TOP = int(os.environ.get("BENCH_PROFILE_TOP", 0))
CONNECTIONS = 4
SENDER = "helpdesk@example.com"
RECIPIENT = "to@example.org"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mailroom-profile-submit-"))
    try:
        env = mailroom.env_for(work / "instance")
        env["MAILROOM_LOG_LEVEL"] = "WARNING"
        mailroom.set_up_instance(env)
        os.environ.update({k: v for k, v in env.items() if k.startswith("MAILROOM_")})
        sys.path.insert(0, str(mailroom.ROOT))
        from webapp import create_app
        from webapp.submission.handler import SubmissionHandler
        from webapp.submission.listener import Relay
        from webapp.submission.settings import RelaySettings
        app = create_app()
        with app.app_context():
            portal, username, password, message = set_up(app)
        settings = replace(RelaySettings.from_config(app.config), host=harness.HOST,
                           starttls_port=harness.free_port(), tls_port=harness.free_port())
        hops = count_hops(SubmissionHandler)
        relay = Relay(app, settings)
        relay.start()
        target = {"host": harness.HOST, "port": settings.starttls_port, "starttls": True,
                  "cafile": str(relay.certificate.cert_file), "username": username, "password": password}
        try:
            send(target, message, CONNECTIONS * 10, "warm-up")
            for number in range(ROUNDS):
                hops.clear()
                cpu, started = time.process_time(), time.perf_counter()
                send(target, message, MESSAGES, f"round{number}")
                seconds, used = time.perf_counter() - started, time.process_time() - cpu
                print(f"round {number + 1}: {MESSAGES} messages over {CONNECTIONS} connections in {seconds:.2f} s "
                      f"({MESSAGES / seconds:.1f} msg/s, including the clients' start), "
                      f"{used * 1000 / MESSAGES:.2f} ms CPU per message", flush=True)
                in_threads = sum(cpu for cpu, _ in hops.values())
                print("  in thread hops: " + ", ".join(
                    f"{name} {cpu * 1000 / MESSAGES:.2f} ms ({calls} calls)"
                    for name, (cpu, calls) in sorted(hops.items(), key=lambda item: -item[1][0]))
                    + f"; the rest (event loop, TLS, aiosmtpd, hops) {(used - in_threads) * 1000 / MESSAGES:.2f} ms",
                    flush=True)
        finally:
            relay.stop()
        if TOP:
            profile_accept(app, relay, username, password, message)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def set_up(app):
    from sqlmodel import select
    from webapp import db, outbox
    from webapp.audit import Actor
    from webapp.models import Credential, MailServer, Portal
    from webapp.submission import credentials

    session = db.session()
    portal = session.exec(select(Portal).where(Portal.slug == mailroom.SLUG)).one()
    server = MailServer(portal_id=portal.id, description="Relay", from_address=SENDER, sender_name="Help Desk",
                        position=1)
    server.settings = {"host": harness.HOST, "port": 25, "security": "none", "verify_cert": True, "ca_cert": "",
                       "local_hostname": "", "plaintext_auth": False}
    server.credential = Credential()
    session.add(server)
    session.commit()
    credential, password = credentials.create(Actor("bench"), portal, credentials.CredentialValues(
        "Bench printer", from_addresses=SENDER))
    submission = outbox.Submission(to=[RECIPIENT], subject="Ticket #4711 was updated",
                                   text="Hello,\n\nthe ticket #4711 was updated by the help desk.\n\nRegards\n")
    message = outbox._build(portal, submission, outbox.Submitter(outbox.Source.PYTHON, "bench"), None)["raw"]
    session.expunge(portal)
    return portal, credential.username, password, message


def count_hops(handler_class) -> dict:
    """Wraps the handler's thread hop: thread CPU and calls per function run."""
    hops: dict = defaultdict(lambda: [0.0, 0])
    original = handler_class._in_app

    def in_app(self, function, *args):
        cpu = time.thread_time()
        try:
            return original(self, function, *args)
        finally:
            entry = hops[getattr(function, "__name__", repr(function))]
            entry[0] += time.thread_time() - cpu
            entry[1] += 1

    handler_class._in_app = in_app
    return hops


def send(target: dict, message: bytes, count: int, tag: str) -> None:
    per_connection = count // CONNECTIONS
    start_at = time.time() + 0.5
    clients = []
    for number in range(CONNECTIONS):
        spec = {**target, "count": per_connection, "start_at": start_at, "tag": f"{tag}.{number}",
                "message": message.decode("latin-1"), "mail_from": SENDER, "to": RECIPIENT}
        clients.append(subprocess.Popen([sys.executable, str(BENCH / "smtp_client.py"), json.dumps(spec)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for client in clients:
        _, err = client.communicate(timeout=600)
        if client.returncode:
            raise RuntimeError(f"the SMTP client failed:\n{err[-2000:]}")


def profile_accept(app, relay, username: str, password: str, message: bytes) -> None:
    """handle_MAIL's and handle_DATA's work for MESSAGES messages, in this thread, under cProfile."""
    from webapp.submission import credentials
    from webapp.submission.message import Submission

    handler = relay.listeners[0].handler
    with app.app_context():
        account, _ = credentials.sign_in(username, password, "127.0.0.1", True)
    profiler = cProfile.Profile()
    profiler.enable()
    for number in range(MESSAGES):
        account, _ = handler._in_app(credentials.standing, account.id)
        raw = message.replace(b"Message-ID: <", f"Message-ID: <p{number}.".encode(), 1)
        submission = Submission(data=raw, mail_from=SENDER, recipients=(RECIPIENT,), client="127.0.0.1",
                                helo="bench.example", encrypted=True, listener="localhost")
        reply = handler._in_app(handler._accept, account, submission)
        assert reply.startswith("250 "), reply
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(TOP)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(TOP)


if __name__ == "__main__":
    main()
