"""Where one delivery thread's time goes: N queued messages drained in this process, one Run
after the other (as the worker's jobs run them), into Postfix's smtp-sink, under cProfile.

    .venv/bin/python bench/profile_drain.py
    (BENCH_PROFILE_MESSAGES: 1000; BENCH_PROFILE_TOP: 25; BENCH_PROFILE_THREADS: 1, else a drain by that
    many threads first, unprofiled, as the worker's thread pool runs them)

A throwaway instance on SQLite set up through the CLI (bench/mailroom.py), loopback allowed, one
server to smtp-sink (security None, no sign-in, the model's defaults otherwise). First the drain
without the profiler (messages/s and CPU ms per message of this process), then again under
cProfile: the functions by cumulative time. cProfile adds a cost to every Python call, so its
shares lean towards call-heavy code.
"""
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness
import mailroom
import postfix_tools
from harness import HOST, Processes

MESSAGES = int(os.environ.get("BENCH_PROFILE_MESSAGES", 1000))
TOP = int(os.environ.get("BENCH_PROFILE_TOP", 25))
THREADS = int(os.environ.get("BENCH_PROFILE_THREADS", 1))  # > 1: first a drain by that many threads, unprofiled
RECIPIENT = "to@example.org"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mailroom-profile-drain-"))
    processes = Processes()
    try:
        postfix_tools.ensure()
        env = mailroom.env_for(work / "instance")
        env["MAILROOM_LOG_LEVEL"] = "WARNING"
        mailroom.set_up_instance(env)
        mailroom.allow_loopback(env)
        port = harness.free_port()
        postfix_tools.start_sink(processes, port, work / "smtp-sink.log")
        os.environ.update({k: v for k, v in env.items() if k.startswith("MAILROOM_")})
        sys.path.insert(0, str(mailroom.ROOT))
        from webapp import create_app
        app = create_app()
        with app.app_context():
            portal = add_server(port)
        rounds = [(f"{THREADS} threads", None, THREADS)] if THREADS > 1 else []
        rounds += [("without the profiler", None, 1), ("under cProfile", cProfile.Profile(), 1)]
        for label, profiler, threads in rounds:
            with app.app_context():
                store(portal)
            started, cpu = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.enable()
            drain(app, threads)
            if profiler is not None:
                profiler.disable()
            seconds, used = time.perf_counter() - started, time.process_time() - cpu
            print(f"{label}: {MESSAGES} messages in {seconds:.2f} s, {MESSAGES / seconds:.0f} msg/s, "
                  f"{used * 1000 / MESSAGES:.2f} ms CPU per message")
            if profiler is not None:
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(TOP)
                pstats.Stats(profiler).sort_stats("tottime").print_stats(TOP)
    finally:
        processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def add_server(port: int):
    from sqlmodel import select
    from webapp import db
    from webapp.models import Credential, MailServer, Portal

    session = db.session()
    portal = session.exec(select(Portal).where(Portal.slug == mailroom.SLUG)).one()
    server = MailServer(portal_id=portal.id, description="smtp-sink", from_address="helpdesk@example.com",
                        sender_name="Help Desk", position=1)
    server.settings = {"host": HOST, "port": port, "security": "none", "verify_cert": True, "ca_cert": "",
                       "local_hostname": "", "plaintext_auth": False}
    server.credential = Credential()
    session.add(server)
    session.commit()
    session.expunge(portal)
    return portal


def store(portal) -> None:
    from webapp import db, outbox
    from webapp.models import OutboundMail
    submitter = outbox.Submitter(outbox.Source.PYTHON, "bench")
    rows = [OutboundMail(**outbox._build(portal, outbox.Submission(to=[RECIPIENT], subject=f"Ticket #{n} was updated",
                                                    text=f"Hello,\n\nthe ticket #{n} was updated.\n"),
                                         submitter, None)) for n in range(MESSAGES)]
    db.session().add_all(rows)
    db.session().commit()


def drain(app, threads: int = 1) -> None:
    """Runs one after the other, as the worker's jobs run them (each thread's connections kept from one
    run to the next); with `threads`, that many threads at once."""
    from webapp.delivery.worker import Run
    queue = app.extensions["mailroom.delivery"]

    def runs(owner: str) -> None:
        while True:
            with app.app_context():
                if not Run(queue.settings, owner, kept=queue.connections).run():
                    return

    if threads == 1:  # in this thread: cProfile sees it
        runs("profile")
    else:
        workers = [threading.Thread(target=runs, args=(f"profile-{n}",)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    queue.connections.close_all()


if __name__ == "__main__":
    main()
