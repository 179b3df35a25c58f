"""Delivery and submission benchmarks (issues 12 and 14), ratios to baselines measured in the same run.

    make bench-delivery          (or: .venv/bin/python bench/delivery.py; about 3-5 minutes)

1. Drain: N queued messages (stored in bulk with the outbox's own builder, one commit, then woken
   as the outbox wakes them) sent by the real `flask mail worker` into Postfix's smtp-sink, against
   smtp-source sending the same number of the same size over as many connections as the worker
   may open, to the same sink, right before and after; messages/s ratio. With one worker process
   and with one per core; the server's connection cap, the worker's threads and the delivery
   policy as the product has them (5 connections, 4 threads, failover).
2. API: POST /api/v1/portals/<slug>/messages under gunicorn (the Makefile's settings) against the
   bench-only API floor (bench/app.py: the API's key check, rate limit and body read, then an empty
   202); wrk with bench/api_post.lua, interleaved rounds; requests/s ratio.
3. Submission: messages over 4 connections to the SMTP submission listener (`flask mail relay`,
   STARTTLS + AUTH with an SMTP credential of the portal) against smtp-source into smtp-sink over 4
   connections, and against the same Python client (bench/smtp_client.py, 4 processes) into
   smtp-sink; interleaved rounds; messages/s ratios.

Everything listens on 127.0.0.1. Nothing is asserted on time; the exit status is 1 only when the
bench could not measure (a message not sent, a request refused). See bench/README.md.

Environment (all optional): BENCH_DRAIN_MESSAGES (10000), BENCH_DRAIN_ROUNDS (2 per worker setting),
BENCH_API_DURATION (3 s per wrk run), BENCH_API_ROUNDS (4), BENCH_CONNECTIONS (16), BENCH_THREADS (2),
BENCH_SUBMIT_MESSAGES (2000), BENCH_SUBMIT_ROUNDS (3), BENCH_ONLY (e.g. "drain,api,submit"),
BENCH_KEEP=1 (keep the temporary folder).
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

import harness
import mailroom
import postfix_tools
import serving
from harness import HOST, Processes
from run import code_version, gunicorn_command

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

DRAIN_MESSAGES = int(os.environ.get("BENCH_DRAIN_MESSAGES", 10000))
DRAIN_ROUNDS = int(os.environ.get("BENCH_DRAIN_ROUNDS", 2))
API_DURATION = int(os.environ.get("BENCH_API_DURATION", 3))
API_ROUNDS = int(os.environ.get("BENCH_API_ROUNDS", 4))
API_WARMUP = 2
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", 16))
WRK_THREADS = int(os.environ.get("BENCH_THREADS", 2))
SUBMIT_MESSAGES = int(os.environ.get("BENCH_SUBMIT_MESSAGES", 2000))
SUBMIT_ROUNDS = int(os.environ.get("BENCH_SUBMIT_ROUNDS", 3))
SUBMIT_CONNECTIONS = 4
ONLY = set(os.environ.get("BENCH_ONLY", "drain,api,submit").split(","))
DRAIN_TIMEOUT = 600  # seconds: a hang guard for one drain

GOALS = {"drain, one worker": 0.40, "drain, one worker per core": 0.40, "api enqueue / api floor": 0.50,
         "submission / smtp-source": 0.30}

SENDER = "helpdesk@example.com"
RECIPIENT = "to@example.org"
API_BODY = json.dumps({"to": [RECIPIENT], "subject": "Ticket #4711 was updated",
                       "text": "Hello,\n\nthe ticket #4711 was updated by the help desk.\n\nRegards\n"})


def say(text: str) -> None:
    print(text, flush=True)


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1)


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "rounds": [round(v, 3) for v in values]}


class Bench:
    def __init__(self, work: Path):
        self.work = work
        self.processes = Processes()
        self.notes: list[str] = []
        self.env = mailroom.env_for(work / "instance")
        # the API's per-key limit (600 per minute) would answer 429 to wrk within a second; the limiter
        # still counts every request, for the floor and the API alike
        self.env["MAILROOM_API_LIMIT_PER_KEY"] = "100000000 per minute"
        self.env["MAILROOM_LOG_LEVEL"] = "WARNING"

    # -- setting up ------------------------------------------------------------------------------

    def set_up(self) -> None:
        postfix_tools.ensure()
        say(f"Setting up a throwaway instance in {self.work / 'instance'}")
        mailroom.set_up_instance(self.env)
        say(mailroom.allow_loopback(self.env))
        self.sink_port = harness.free_port()
        self.sink = postfix_tools.start_sink(self.processes, self.sink_port, self.work / "smtp-sink.log")
        options = serving.makefile_options()
        port = harness.free_port()
        self.gunicorn = self.processes.start(gunicorn_command(options, port, "bench.app:create_app()"),
                                             self.work / "gunicorn.log", cwd=ROOT, env=self.env)
        self.base = f"http://{HOST}:{port}"
        self.gunicorn_options = options
        harness.wait_until_answers(self.base + "/login", self.gunicorn, self.work / "gunicorn.log")
        http = mailroom.sign_in(self.base)
        # the server through the real form: smtp-sink, no TLS, no sign-in; the product's defaults otherwise
        self.server_id = mailroom.create_server(http, self.base, {
            **mailroom.RELAY_FIELDS, "description": "smtp-sink", "host": HOST, "port": str(self.sink_port),
            "security": "none", "from_address": SENDER})
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("MAILROOM_")})
        from webapp import create_app
        self.app = create_app()
        with self.app.app_context():
            from webapp import apikeys, db
            from webapp.audit import Actor
            from webapp.models import MailServer, Portal
            from webapp.submission import credentials
            from sqlmodel import select
            session = db.session()
            self.portal = session.exec(select(Portal).where(Portal.slug == mailroom.SLUG)).one()
            server = session.get(MailServer, self.server_id)
            self.max_connections = server.max_connections
            self.policy = self.portal.delivery_policy
            actor = Actor("bench")
            _, self.api_key = apikeys.create(actor, self.portal, "Bench")
            credential, self.smtp_password = credentials.create(
                actor, self.portal, credentials.CredentialValues("Bench printer", from_addresses=SENDER))
            self.smtp_username = credential.username
            self.threads = self.app.extensions["mailroom.delivery"].settings.workers
            sample = self._build(1)[0]
            self.message = sample.raw
        self.message_bytes = len(self.message)
        say(f"server {self.server_id} → smtp-sink on port {self.sink_port} (max. {self.max_connections} "
            f"connections, policy {self.policy}); messages of {self.message_bytes} bytes")

    def _build(self, count: int, first: int = 0) -> list:
        """Rows as outbox.submit() builds them (checked, MIME composed, a Message-ID each), not yet stored."""
        from webapp import outbox
        from webapp.models import OutboundMail
        submitter = outbox.Submitter(outbox.Source.PYTHON, "bench")
        rows = []
        for number in range(first, first + count):
            submission = outbox.Submission(to=[RECIPIENT], subject=f"Ticket #{number} was updated",
                                           text=f"Hello,\n\nthe ticket #{number} was updated by the help desk.\n"
                                                "\nRegards\n")
            rows.append(OutboundMail(**outbox._build(self.portal, submission, submitter, None)))
        return rows

    # -- 1. drain ----------------------------------------------------------------------------------

    def drain_goal(self) -> dict:
        cores = os.cpu_count() or 2
        record = {}
        for label, processes in (("one worker", 1), ("one worker per core", cores)):
            connections = min(processes * self.threads, self.max_connections)
            rounds = []
            for number in range(DRAIN_ROUNDS):
                before = self.source(DRAIN_MESSAGES, connections)
                drained = self.drain(processes, number)
                after = self.source(DRAIN_MESSAGES, connections)
                base = statistics.fmean([before, after])
                rounds.append({**drained, "smtp_source_per_s": [before, after],
                               "ratio": round(drained["per_s"] / base, 3)})
                say(f"  drain, {label}, round {number + 1}: {drained['per_s']} msg/s; smtp-source "
                    f"{before} / {after} msg/s over {connections} connections: ratio {rounds[-1]['ratio']}")
            record[label] = {"worker_processes": processes, "threads_each": self.threads,
                             "connections": connections, "messages": DRAIN_MESSAGES,
                             "ratio": spread([r["ratio"] for r in rounds]), "rounds": rounds}
        return record

    def source(self, messages: int, sessions: int) -> float:
        return rate(messages, postfix_tools.source(self.sink_port, messages, sessions, self.message_bytes))

    def drain(self, processes: int, number: int) -> dict:
        from sqlalchemy import delete, func, select
        from webapp import db, delivery
        from webapp.models import DeliveryAttempt, MailState, OutboundMail

        workers = [self.processes.start([sys.executable, "-m", "flask", "--app", "webapp", "mail", "worker"],
                                        self.work / f"worker-{number}-{i}.log", cwd=ROOT, env=self.env)
                   for i in range(processes)]
        for i, worker in enumerate(workers):
            harness.wait_for_text(self.work / f"worker-{number}-{i}.log", "consumer started", worker)
        with self.app.app_context():
            session = db.session()
            rows = self._build(DRAIN_MESSAGES)
            session.add_all(rows)
            session.commit()
            started, clock = datetime.now(timezone.utc), time.monotonic()
            delivery.wake([row.id for row in rows])  # as the outbox does after its commit (WAKE_MAX jobs)
            cpu_before = harness.cpu_seconds([w.pid for w in workers] + [self.sink.pid])
            ids = [row.id for row in rows]
            low, high = min(ids), max(ids)
            in_range = OutboundMail.id.between(low, high)
            while True:
                counts = dict(session.execute(select(OutboundMail.state, func.count()).where(in_range)
                                              .group_by(OutboundMail.state)).all())
                session.commit()
                if counts.get(MailState.SENT, 0) == DRAIN_MESSAGES:
                    break
                stuck = {state: n for state, n in counts.items() if state in (MailState.FAILED, MailState.HELD)}
                if stuck or time.monotonic() - clock > DRAIN_TIMEOUT:
                    error = session.execute(select(OutboundMail.last_error).where(
                        in_range, OutboundMail.state != MailState.SENT).limit(1)).scalar()
                    raise RuntimeError(f"the drain did not finish: {counts}; {error}\n"
                                       f"{harness.tail(self.work / f'worker-{number}-0.log')}")
                if any(w.poll() is not None for w in workers):
                    raise RuntimeError(f"a worker exited:\n{harness.tail(self.work / f'worker-{number}-0.log')}")
                time.sleep(0.2)
            cpu_after = harness.cpu_seconds([w.pid for w in workers] + [self.sink.pid])
            last = session.execute(select(func.max(OutboundMail.sent_at)).where(in_range)).scalar()
            attempts = session.execute(select(func.count()).select_from(DeliveryAttempt).where(
                DeliveryAttempt.mail_id.between(low, high))).scalar()
            seconds = ((last if last.tzinfo else last.replace(tzinfo=timezone.utc)) - started).total_seconds()
            used = [round(after - before, 2) for before, after in zip(cpu_before, cpu_after)]
            for worker in workers:
                self.processes.stop(worker)
            # the next round starts from an empty outbox, as this one did
            session.execute(delete(DeliveryAttempt).where(DeliveryAttempt.mail_id.between(low, high)))
            session.execute(delete(OutboundMail).where(in_range))
            session.commit()
        if attempts != DRAIN_MESSAGES:
            raise RuntimeError(f"{attempts} attempts for {DRAIN_MESSAGES} messages: some were sent twice or retried")
        return {"seconds": round(seconds, 2), "per_s": rate(DRAIN_MESSAGES, seconds),
                "cpu_ms_per_message": {"workers": round(sum(used[:-1]) * 1000 / DRAIN_MESSAGES, 3),
                                       "smtp-sink": round(used[-1] * 1000 / DRAIN_MESSAGES, 3)}}

    # -- 2. API ------------------------------------------------------------------------------------

    def api_goal(self) -> dict:
        wrk = harness.Wrk(WRK_THREADS, CONNECTIONS)
        targets = {"api floor": f"{self.base}/api/v1/bench-floor/{mailroom.SLUG}",
                   "api enqueue": f"{self.base}/api/v1/portals/{mailroom.SLUG}/messages"}
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        for name, url in targets.items():  # what wrk will send gets the real answer
            answer = requests.post(url, data=API_BODY, headers=headers, timeout=10)
            if answer.status_code != 202:
                raise RuntimeError(f"{name} answered {answer.status_code}: {answer.text[:500]}")
        env = {"BENCH_BODY": API_BODY, "BENCH_KEY": self.api_key}
        script = BENCH / "api_post.lua"
        for url in targets.values():
            wrk.run(url, API_WARMUP, script=script, env=env)
        rounds, raw = [], []
        for number in range(API_ROUNDS):
            figures = {}
            for name, url in targets.items():
                result, output = wrk.run(url, API_DURATION, script=script, env=env, master=self.gunicorn.pid)
                if result["non_2xx_3xx"]:
                    raise RuntimeError(f"{name}: {result['non_2xx_3xx']} answers other than 2xx:\n{output}")
                if any(result["socket_errors"].values()):  # wrk gives up on an answer after 2 s: slow, not wrong
                    self.notes.append(f"{name}, round {number + 1}: socket errors {result['socket_errors']}")
                figures[name] = result
                raw.append(output)
            rounds.append(figures)
            say(f"  api, round {number + 1}: floor {figures['api floor']['requests_per_s']} req/s, enqueue "
                f"{figures['api enqueue']['requests_per_s']} req/s")
        ratios = [r["api enqueue"]["requests_per_s"] / r["api floor"]["requests_per_s"] for r in rounds]
        return {"gunicorn": self.gunicorn_options,
                "wrk": f"-t{WRK_THREADS} -c{CONNECTIONS} -d{API_DURATION}s, {API_ROUNDS} interleaved rounds",
                "throughput": {name: harness.combine([r[name] for r in rounds]) for name in targets},
                "ratio": spread(ratios), "rounds": rounds, "wrk_output": raw}

    # -- 3. submission -----------------------------------------------------------------------------

    def submit_goal(self) -> dict:
        starttls_port, tls_port = harness.free_port(), harness.free_port()
        relay = self.processes.start([sys.executable, "-m", "flask", "--app", "webapp", "mail", "relay",
                                      "--host", HOST, "--starttls-port", str(starttls_port),
                                      "--tls-port", str(tls_port)], self.work / "relay.log", cwd=ROOT, env=self.env)
        harness.wait_for_text(self.work / "relay.log", "SMTP submission on", relay)
        cafile = str(self.work / "instance" / "submission-cert.pem")
        listener = {"host": HOST, "port": starttls_port, "starttls": True, "cafile": cafile,
                    "username": self.smtp_username, "password": self.smtp_password}
        sink = {"host": HOST, "port": self.sink_port}
        rounds = []
        for number in range(SUBMIT_ROUNDS):
            source = self.source(SUBMIT_MESSAGES, SUBMIT_CONNECTIONS)
            python_sink = self.python_client(sink, f"sink{number}")
            python_listener = self.python_client(listener, f"relay{number}")
            rounds.append({"smtp-source → smtp-sink": source, "python → smtp-sink": python_sink,
                           "python → listener": python_listener})
            say(f"  submission, round {number + 1}: listener {python_listener} msg/s; python → sink "
                f"{python_sink}; smtp-source → sink {source}")
        stored = self.count_stored()
        self.processes.stop(relay)
        if stored < SUBMIT_ROUNDS * SUBMIT_MESSAGES:
            raise RuntimeError(f"the listener stored {stored} of {SUBMIT_ROUNDS * SUBMIT_MESSAGES} messages")
        return {"connections": SUBMIT_CONNECTIONS, "messages": SUBMIT_MESSAGES, "rounds": rounds,
                "ratio": spread([r["python → listener"] / r["smtp-source → smtp-sink"] for r in rounds]),
                "ratio_python_sink": spread([r["python → listener"] / r["python → smtp-sink"] for r in rounds])}

    def python_client(self, target: dict, tag: str) -> float:
        per_connection = SUBMIT_MESSAGES // SUBMIT_CONNECTIONS
        start_at = time.time() + 1.0  # every connection starts at once, after Python has started
        clients = []
        for number in range(SUBMIT_CONNECTIONS):
            spec = {**target, "count": per_connection, "start_at": start_at, "tag": f"{tag}.{number}",
                    "message": self.message.decode("latin-1"), "mail_from": SENDER, "to": RECIPIENT}
            clients.append(subprocess.Popen([sys.executable, str(BENCH / "smtp_client.py"), json.dumps(spec)],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        ended = []
        for client in clients:
            out, err = client.communicate(timeout=600)
            if client.returncode:
                raise RuntimeError(f"the SMTP client failed:\n{err[-2000:]}")
            ended.append(json.loads(out)["ended"])
        return rate(per_connection * SUBMIT_CONNECTIONS, max(ended) - start_at)

    def count_stored(self) -> int:
        from sqlalchemy import func, select
        from webapp import db
        from webapp.models import OutboundMail
        with self.app.app_context():
            count = db.session().execute(select(func.count()).select_from(OutboundMail).where(
                OutboundMail.source == "smtp")).scalar()
            db.session().commit()
        return count


def on_term(signum, _frame):
    raise SystemExit(128 + signum)  # the finally below stops what the run started


def main() -> int:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_term)
    work = Path(tempfile.mkdtemp(prefix="mailroom-delivery-bench-"))
    bench = Bench(work)
    record = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "code": code_version(),
              "load_average": {"start": os.getloadavg()}, "goals": GOALS}
    status = 0
    try:
        bench.set_up()
        record["message_bytes"] = bench.message_bytes
        if "drain" in ONLY:
            say(f"1. Drain {DRAIN_MESSAGES} messages ({DRAIN_ROUNDS} rounds per setting)")
            record["drain"] = bench.drain_goal()
        if "api" in ONLY:
            say(f"2. API enqueue against the API floor ({API_ROUNDS} rounds of {API_DURATION} s)")
            record["api"] = bench.api_goal()
        if "submit" in ONLY:
            say(f"3. Submission: {SUBMIT_MESSAGES} messages over {SUBMIT_CONNECTIONS} connections "
                f"({SUBMIT_ROUNDS} rounds)")
            record["submit"] = bench.submit_goal()
    except (RuntimeError, subprocess.SubprocessError, OSError) as error:
        record["error"] = str(error)
        say(f"error: {error}")
        status = 1
    finally:
        bench.processes.stop_all()
        record["notes"] = bench.notes
        record["load_average"]["end"] = os.getloadavg()
        record["code_after"] = code_version()
        harness.leave(work, say)
    out = harness.write_record(record, "delivery")
    summary(record)
    for note in bench.notes:
        say(f"note: {note}")
    say(f"record: {out}")
    return status


def summary(record: dict) -> None:
    say("")
    lines = []
    for label, goal in (("one worker", 0.40), ("one worker per core", 0.40)):
        figures = record.get("drain", {}).get(label)
        if figures:
            lines.append((f"drain {figures['messages']}, {label} ({figures['worker_processes']} × "
                          f"{figures['threads_each']} threads, {figures['connections']} connections) ÷ smtp-source",
                          figures["ratio"], goal))
    if "api" in record:
        lines.append(("API enqueue ÷ API floor, req/s", record["api"]["ratio"], 0.50))
    if "submit" in record:
        lines.append(("submission listener ÷ smtp-source → sink", record["submit"]["ratio"], 0.30))
        lines.append(("submission listener ÷ python → sink (same client)", record["submit"]["ratio_python_sink"],
                      None))
    for text, figures, goal in lines:
        met = "" if goal is None else (" met" if figures["median"] >= goal else " NOT met")
        say(f"{text}: {figures['median']} (rounds {' '.join(map(str, figures['rounds']))})"
            + (f"  goal ≥ {goal}:{met}" if goal else ""))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
