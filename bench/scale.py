"""Issue 13's goals: every page stays fast as the data grows, a light worker, a fast command line,
Validate and the sample mail close to the bare SMTP conversation. Ratios within one run, on loopback.

    .venv/bin/python bench/scale.py      # or: make bench-scale; about 3-5 minutes, most of it the inserts

Two throwaway instances (a temporary folder, SQLite, set up through the CLI as bench/run.py does),
each served by gunicorn with the Makefile's settings, and a hello-world app under the same settings:

- small: 10 servers in portal "bench", 10 users, 10 portals, 10 History events of "bench";
- large: 1,000 servers, 10,000 users, 3,000 portals, 1,000,000 History events (BENCH_SCALE_EVENTS);
  both also have a portal "one" with a single server.

The first server of each is made through the real form (STARTTLS to the bench's SMTP peer, Basic
authentication with a password, its CA certificate); the rest are bulk inserts of its rows (server
and credential, the sealed password included) with the app's models, as are the users, portals and
events. Measured, each as a ratio with its spread over interleaved rounds (the headline is the
median of the per-round ratios, the rounds follow in brackets):

1. the lists (the URL as it is, so the first page once they paginate): server list, users, portals,
   History, large ÷ small in requests/s: `wrk -t1 -c4 -d2s`, small then large in each round; when
   the large list answers fewer than 4 times in a run, the list's ratios are its time per request
   ÷ the small one's instead, in every round (two requests each, one by one in turn: 1 ÷ requests/s
   on one connection).
   After each wrk run the bench waits until that instance's workers are idle (they go on rendering
   what wrk asked for after it left, which would weigh on the next measurement);
2. a row action (Enable/Disable, `POST …/toggle` as htmx sends it) in "bench" with 1,000 servers ÷
   in "one" with 1, p50 of sequential requests, one by one in turn;
3. a worker's memory: RSS (and PSS, which counts pages shared with the master once per sharer) of
   each gunicorn worker of the large instance ÷ hello-world's, after start and after the lists;
4. `flask --app webapp mail check bench <id>`, and the same through `python -m webapp` (what the
   `mailroom` script runs), each a new process, wall time ÷ the same check in this process
   (`checks.check`, the app warm) on the large instance, in turn; beside it the new process's CPU
   time, which the load of a shared machine disturbs less than its wall time;
5. Validate over HTTP (`POST …/validate` with the server page's fields, as htmx) ÷ smtplib doing the
   same steps (connect, EHLO, STARTTLS, EHLO, AUTH, MAIL FROM, RSET, QUIT), p50, one by one in turn;
6. the sample mail over HTTP (`POST …/sample`) ÷ smtplib sending one mail (… AUTH, MAIL, RCPT, DATA,
   QUIT), p50, in turn.

The SMTP peer is bench/smtp_peer.py --accept (aiosmtpd, STARTTLS and AUTH required); the app's DNS
questions (Validate's Deliverability section) go to a DNS server in this process on 127.0.0.1 that
knows no name (tests/peers/dns.py). Nothing is asserted on time; the exit status is 1 only when the
bench could not measure. Results: bench/results/scale-<timestamp>.json.

Environment: BENCH_SCALE_ROUNDS (3), BENCH_SCALE_DURATION (wrk seconds, 2), BENCH_SCALE_EVENTS
(1000000), BENCH_SCALE_REQUESTS (sequential requests per round and side, 10), BENCH_SCALE_CLI (CLI runs
per round, 3), BENCH_KEEP=1 (keep the temporary folder).
"""
import json
import os
import resource
import shutil
import signal
import smtplib
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
for _name in [n for n in os.environ if n.startswith("MAILROOM_")]:  # the instances' settings are the bench's own
    del os.environ[_name]

import requests  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

import harness  # noqa: E402
import mailroom  # noqa: E402
import serving  # noqa: E402
from harness import HOST, Processes  # noqa: E402
from tests.peers.dns import DnsPeer  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_SCALE_ROUNDS", 3))
DURATION = int(os.environ.get("BENCH_SCALE_DURATION", 2))
EVENTS = int(os.environ.get("BENCH_SCALE_EVENTS", 1_000_000))
REQUESTS = int(os.environ.get("BENCH_SCALE_REQUESTS", 10))
CLI_RUNS = int(os.environ.get("BENCH_SCALE_CLI", 3))
PARTS = ("lists", "row", "memory", "cli", "validate", "sample")
ONLY = set(os.environ.get("BENCH_SCALE_ONLY", ",".join(PARTS)).split(","))
MIN_ANSWERS = 4  # a wrk run of the large list with fewer answers is replaced by timed requests in turn
SIZES = {"small": {"servers": 10, "users": 10, "portals": 10, "events": 10},
         "large": {"servers": 1_000, "users": 10_000, "portals": 3_000, "events": EVENTS}}
LISTS = {"server list": "/p/bench/servers/", "users index": "/users/", "portals index": "/",
         "History": "/p/bench/history"}
LIST_DATA = {"server list": "servers", "users index": "users", "portals index": "portals", "History": "events"}
GOALS = {"server list": 2, "users index": 2, "portals index": 2, "History": 2, "row action": 1.5,
         "worker RSS": 2, "mail check CLI": 2, "Validate": 1.5, "sample mail": 1.5}
FROM = "helpdesk@example.com"
RECIPIENT = "someone@example.com"


def say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


class Instance:
    """One throwaway Mailroom: set up through the CLI, served by gunicorn, its app in this process."""

    def __init__(self, name: str, folder: Path, dns: str):
        self.name, self.folder = name, folder
        self.env = {**mailroom.env_for(folder), "MAILROOM_DNS_RESOLVER": dns,
                    "MAILROOM_SAMPLE_LIMIT_PER_USER": "100000 per minute", "MAILROOM_LOG_LEVEL": "WARNING"}

    def set_up(self) -> None:
        mailroom.set_up_instance(self.env)
        mailroom.flask_cli(self.env, "create-portal", "one", "One server")
        mailroom.allow_loopback(self.env)

    def serve(self, processes: Processes, options: list[str]) -> None:
        port = harness.free_port()
        command = [str(ROOT / ".venv/bin/gunicorn"), *options, "--bind", f"{HOST}:{port}", "webapp:create_app()"]
        self.proc = processes.start(command, self.folder.parent / f"{self.name}.log", cwd=ROOT, env=self.env)
        self.url = f"http://{HOST}:{port}"
        harness.wait_until_answers(self.url + "/login", self.proc, self.folder.parent / f"{self.name}.log")

    def app(self):
        if not hasattr(self, "_app"):
            from webapp import create_app
            config = {key.removeprefix("MAILROOM_"): value for key, value in self.env.items()
                      if key.startswith("MAILROOM_") and key != "MAILROOM_INSTANCE_PATH"}
            self._app = create_app(config, instance_path=str(self.folder))
        return self._app


def fill(instance: Instance, template_id: int, sizes: dict) -> None:
    """Bulk inserts with the app's models: copies of the form-made server (and its credential) up to
    `servers` in "bench" and one in "one", users, portals and History events of "bench"."""
    from webapp import db
    from webapp.models import AuditEvent, Credential, MailServer, Membership, Portal, Role, User
    from webapp.security import hash_password

    with instance.app().app_context():
        session = db.session()
        template = session.get(MailServer, template_id)
        credential = session.exec(select(Credential).where(Credential.server_id == template_id)).one()[0]
        server_row = {c.name: getattr(template, c.name) for c in MailServer.__table__.columns if c.name != "id"}
        credential_row = {c.name: getattr(credential, c.name) for c in Credential.__table__.columns
                          if c.name not in ("id", "server_id")}
        portals = {p.slug: p for (p,) in session.execute(select(Portal))}
        bench, one = portals["bench"], portals["one"]
        user = session.execute(select(User).where(User.email == mailroom.EMAIL)).one()[0]
        session.add(Membership(user_id=user.id, portal_id=one.id, role=Role.ADMIN))
        copies = [dict(server_row, position=template.position + i, description=f"Relay {i:04}")
                  for i in range(1, sizes["servers"])]
        copies.append(dict(server_row, portal_id=one.id, position=1, description="The only server"))
        session.execute(insert(MailServer), copies)
        new_ids = session.execute(select(MailServer.id).where(MailServer.id != template_id)).scalars().all()
        session.execute(insert(Credential), [dict(credential_row, server_id=i) for i in new_ids])
        have = session.execute(select(User.id)).scalars().all()
        password_hash = hash_password("not used by the bench")
        session.execute(insert(User), [{"email": f"user{i:05}@bench.example", "name": f"User {i:05}",
                                        "password_hash": password_hash} for i in range(sizes["users"] - len(have))])
        session.execute(insert(Portal), [{"slug": f"portal-{i:04}", "name": f"Portal {i:04}"}
                                         for i in range(sizes["portals"] - len(portals))])
        session.commit()
        have = len(session.execute(select(AuditEvent.id).where(AuditEvent.portal_id == bench.id)).all())
        start = datetime.now(UTC) - timedelta(days=365)
        left, chunk = sizes["events"] - have, 20_000
        for first in range(0, max(left, 0), chunk):
            session.execute(insert(AuditEvent), [
                {"portal_id": bench.id, "actor_id": user.id, "actor": mailroom.EMAIL, "action": "server.updated",
                 "at": start + timedelta(seconds=i * 30), "subject": f"Relay {i % 1000:04}",
                 "changes": {"Port": ["587", "465"], "Server timeout": ["10", "20"]}}
                for i in range(first, min(left, first + chunk))])
            session.commit()


def server_ids(instance: Instance) -> dict:
    from webapp import db
    from webapp.models import MailServer, Portal

    with instance.app().app_context():
        rows = db.session().execute(select(Portal.slug, MailServer.id).join(MailServer, MailServer.portal_id == Portal.id)
                                    .where(Portal.slug.in_(["bench", "one"])).order_by(MailServer.position)).all()
    ids: dict = {}
    for slug, server_id in rows:
        ids.setdefault(slug, []).append(server_id)
    return ids


def settle(instance: Instance, limit: float = 180) -> None:
    """Wait until the instance's workers are idle: wrk leaves when its time is up, but a worker goes on
    rendering the pages it was asked for, which would weigh on whatever is measured next."""
    workers = harness.worker_pids(instance.proc.pid)
    end = time.monotonic() + limit
    before = sum(harness.cpu_seconds(workers))
    while time.monotonic() < end:
        time.sleep(0.5)
        now = sum(harness.cpu_seconds(workers))
        if now - before < 0.05:
            return
        before = now


# -- memory --------------------------------------------------------------------------------------------

def memory(pid: int) -> dict:
    """RSS and PSS in MiB (PSS shares each page among the processes that map it)."""
    out = {}
    for file, key, name in ((f"/proc/{pid}/status", "VmRSS:", "rss"), (f"/proc/{pid}/smaps_rollup", "Pss:", "pss")):
        try:
            line = next(line for line in Path(file).read_text().splitlines() if line.startswith(key))
            out[name] = round(int(line.split()[1]) / 1024, 1)
        except (OSError, StopIteration):
            out[name] = None
    return out


def workers_memory(master: int) -> list[dict]:
    return [{"pid": pid, **memory(pid)} for pid in harness.worker_pids(master)]


# -- timing ---------------------------------------------------------------------------------------------

def timed(action) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def in_turn(base, measured, count: int) -> tuple[float, float]:
    """p50 (ms) of `base` and of `measured`, one call of each in turn."""
    pairs = [(timed(base), timed(measured)) for _ in range(count)]
    return statistics.median(b for b, _ in pairs), statistics.median(m for _, m in pairs)


def summary(ratios: list[float]) -> dict:
    return {"ratio": round(statistics.median(ratios), 3), "rounds": [round(r, 3) for r in ratios],
            "min": round(min(ratios), 3), "max": round(max(ratios), 3)}


def expect(response: requests.Response, words: str, what: str) -> None:
    if response.status_code != 200 or words not in response.text:
        raise RuntimeError(f"{what} answered {response.status_code} without “{words}”:\n"
                           f"{mailroom.report_summary(response.text)}")


class Scale:
    def __init__(self, work: Path):
        self.work = work
        self.processes = Processes()
        self.wrk = harness.Wrk(1, 4)
        self.notes: list[str] = []

    def run(self) -> dict:
        dns = DnsPeer()
        try:
            return self._run(dns.address)
        finally:
            dns.stop()

    def _run(self, dns: str) -> dict:
        log = self.work / "smtp-peer.log"
        proc = self.processes.start([sys.executable, str(BENCH / "smtp_peer.py"), str(self.work), "--accept"], log,
                                    cwd=ROOT)
        harness.wait_for_file(self.work / "peer.json", proc, log)
        self.peer = json.loads((self.work / "peer.json").read_text())
        self.instances = {name: Instance(name, self.work / name, dns) for name in SIZES}
        options = serving.makefile_options()
        say(f"gunicorn: {' '.join(options)}")
        record: dict = {"gunicorn": options, "sizes": SIZES}
        hello_port = harness.free_port()
        self.hello = self.processes.start([str(ROOT / ".venv/bin/gunicorn"), *options, "--bind", f"{HOST}:{hello_port}",
                                           "bench.hello:app"], self.work / "hello.log", cwd=ROOT)
        harness.wait_until_answers(f"http://{HOST}:{hello_port}/", self.hello, self.work / "hello.log")
        for name, instance in self.instances.items():
            say(f"{name}: setting up through the CLI, serving, signing in")
            instance.set_up()
            instance.serve(self.processes, options)
            instance.http = mailroom.sign_in(instance.url)
            instance.cookie = mailroom.cookie_header(instance.http)
            instance.peer_id = mailroom.create_server(instance.http, instance.url, {
                **mailroom.RELAY_FIELDS, "description": "Bench STARTTLS peer", "host": HOST,
                "port": str(self.peer["port"]), "security": "starttls", "verify_cert": "y",
                "ca_cert": self.peer["ca_pem"], "auth_type": "basic", "username": self.peer["username"],
                "password": self.peer["password"], "confirm_password": self.peer["password"], "mechanism": "auto",
                "from_address": FROM})
        time.sleep(1)
        record["memory_after_start"] = {"hello": workers_memory(self.hello.pid),
                                        "mailroom": workers_memory(self.instances["large"].proc.pid)}
        for name, instance in self.instances.items():
            started = time.perf_counter()
            fill(instance, instance.peer_id, SIZES[name])
            instance.ids = server_ids(instance)
            say(f"{name}: data inserted in {time.perf_counter() - started:.0f} s: {SIZES[name]}")
            record.setdefault("insert_seconds", {})[name] = round(time.perf_counter() - started, 1)
        if "lists" in ONLY:
            record["lists"] = self.lists()
        if "row" in ONLY:
            record["row_action"] = self.row_action()
        if "memory" in ONLY:
            requests.get(f"http://{HOST}:{hello_port}/", timeout=10)
            record["memory_after_lists"] = {"hello": workers_memory(self.hello.pid),
                                            "mailroom": workers_memory(self.instances["large"].proc.pid)}
            record["worker_memory"] = self.memory_ratios(record)
        for part, measure in (("cli", self.cli), ("validate", self.validate), ("sample", self.sample)):
            if part in ONLY:
                record[part] = measure()
        record["notes"] = self.notes
        return record

    # -- 1. the lists ----------------------------------------------------------------------------------

    def lists(self) -> dict:
        small, large = self.instances["small"], self.instances["large"]
        targets = {}
        for name, path in LISTS.items():
            for instance in (small, large):
                response = instance.http.get(instance.url + path, allow_redirects=False, timeout=300)
                if response.status_code != 200:
                    raise RuntimeError(f"{name} on {instance.name} answered {response.status_code}")
                targets[(name, instance.name)] = {"bytes": len(response.content)}
        say(f"the lists: {ROUNDS} rounds of wrk -t1 -c4 -d{DURATION}s, small then large, per list")
        rounds: dict = {name: [] for name in LISTS}
        for _ in range(ROUNDS):
            for name, path in LISTS.items():
                pair = {}
                for instance in (small, large):
                    headers = {"Cookie": instance.cookie, "User-Agent": mailroom.USER_AGENT}
                    figures, _ = self.wrk.run(instance.url + path, DURATION, headers=headers)
                    settle(instance)
                    if figures["non_2xx_3xx"]:
                        self.notes.append(f"{name} on {instance.name}: {figures['non_2xx_3xx']} answers not 2xx/3xx")
                    pair[instance.name] = figures
                rounds[name].append(pair)
        out = {}
        for name, pairs in rounds.items():
            by_latency = []
            if all(pair["large"]["requests"] >= MIN_ANSWERS for pair in pairs):
                ratios = [pair["small"]["requests_per_s"] / pair["large"]["requests_per_s"] for pair in pairs]
            else:  # too slow for wrk runs this short: every round one request after the other, in turn
                say(f"{name}: the large list is too slow for wrk -d{DURATION}s; {ROUNDS} rounds of 2 requests each "
                    "in turn instead")
                ratios = []
                for _ in range(ROUNDS):
                    small_ms, large_ms = in_turn(self.fetch(small, LISTS[name]), self.fetch(large, LISTS[name]), 2)
                    ratios.append(large_ms / small_ms)
                    by_latency.append({"small_ms": round(small_ms, 1), "large_ms": round(large_ms, 1)})
            out[name] = {**summary(ratios), "data": SIZES["large"][LIST_DATA[name]], "method":
                         "time per request, in turn" if by_latency else f"wrk -t1 -c4 -d{DURATION}s req/s",
                         "small_rps": [p["small"]["requests_per_s"] for p in pairs],
                         "large_rps": [p["large"]["requests_per_s"] for p in pairs],
                         "large_requests": [p["large"]["requests"] for p in pairs],
                         "large_p50_ms": [p["large"]["p50_ms"] for p in pairs], "by_latency": by_latency,
                         "bytes": {size: targets[(name, size)]["bytes"] for size in ("small", "large")}}
        return out

    @staticmethod
    def fetch(instance: Instance, path: str):
        def get():
            response = instance.http.get(instance.url + path, timeout=300)
            if response.status_code != 200:
                raise RuntimeError(f"{path} on {instance.name} answered {response.status_code}")
        return get

    # -- 2. a row action -------------------------------------------------------------------------------

    def row_action(self) -> dict:
        large = self.instances["large"]
        token = mailroom.token_in(large.http.get(large.url + "/p/one/servers/", timeout=60).text)
        headers = {"HX-Request": "true", "X-CSRFToken": token}
        many = large.ids["bench"][len(large.ids["bench"]) // 2]
        only = large.ids["one"][0]

        def toggle(slug, server_id):
            def act():
                response = large.http.post(f"{large.url}/p/{slug}/servers/{server_id}/toggle", headers=headers,
                                           timeout=300)
                if response.status_code != 200:
                    raise RuntimeError(f"toggle in {slug} answered {response.status_code}")
            return act

        say(f"a row action: {ROUNDS} rounds of {REQUESTS} toggles in turn, 1 server then 1,000")
        rounds = []
        for _ in range(ROUNDS):
            base, measured = in_turn(toggle("one", only), toggle("bench", many), REQUESTS)
            rounds.append((measured, base))
        return {**summary([m / b for m, b in rounds]), "p50_ms_1000": [round(m, 2) for m, _ in rounds],
                "p50_ms_1": [round(b, 2) for _, b in rounds]}

    # -- 3. memory -------------------------------------------------------------------------------------

    @staticmethod
    def memory_ratios(record: dict) -> dict:
        out = {}
        for moment in ("memory_after_start", "memory_after_lists"):
            hello = statistics.median(w["rss"] for w in record[moment]["hello"])
            workers = [w["rss"] for w in record[moment]["mailroom"]]
            hello_pss = statistics.median(w["pss"] for w in record[moment]["hello"])
            pss = [w["pss"] for w in record[moment]["mailroom"]]
            out[moment] = {"rss_ratio": round(statistics.median(workers) / hello, 2), "mailroom_rss_mib": workers,
                           "hello_rss_mib": hello, "pss_ratio": round(statistics.median(pss) / hello_pss, 2),
                           "mailroom_pss_mib": pss, "hello_pss_mib": hello_pss}
        return out

    # -- 4. the command line ---------------------------------------------------------------------------

    def cli(self) -> dict:
        """`flask --app webapp mail check` and `python -m webapp mail check` (what the `mailroom` script
        runs), each ÷ the check in this process, in turn within each round."""
        from webapp import checks, db
        from webapp.audit import COMMAND_LINE
        from webapp.mailservers import get_server
        from webapp.models import Portal

        large = self.instances["large"]
        server_id = large.peer_id
        app = large.app()
        arguments = ["mail", "check", "bench", str(server_id)]
        commands = {"flask": [sys.executable, "-m", "flask", "--app", "webapp", *arguments],
                    "mailroom": [sys.executable, "-m", "webapp", *arguments]}

        def in_process():
            with app.app_context():
                portal = db.session().execute(select(Portal).where(Portal.slug == "bench")).one()[0]
                report = checks.check(COMMAND_LINE, portal, get_server(portal, server_id))
                if not report.ok:
                    raise RuntimeError("the in-process check failed")

        cpu = {name: [] for name in commands}  # each new process's CPU time (user + system), ms: steadier under load
        # as an installed Mailroom runs: its modules compiled once into __pycache__, not at every command
        env = {name: value for name, value in large.env.items() if name != "PYTHONDONTWRITEBYTECODE"}

        def new_process(name):
            def run():
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                result = subprocess.run(commands[name], cwd=ROOT, env=env, capture_output=True, text=True,
                                        timeout=120)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                if result.returncode:
                    raise RuntimeError(f"{name} mail check failed ({result.returncode}):\n{result.stdout}{result.stderr}")
                cpu[name].append(1000 * (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime))
            return run

        in_process()  # warm: the first check imports what checks need
        say(f"mail check: {ROUNDS} rounds of {CLI_RUNS} runs of each command, in this process then a new one, in turn")
        rounds = {name: [] for name in commands}
        for _ in range(ROUNDS):
            for name in commands:
                base, measured = in_turn(in_process, new_process(name), CLI_RUNS)
                rounds[name].append((measured, base))
        return {name: {**summary([m / b for m, b in pairs]), "cli_ms": [round(m) for m, _ in pairs],
                       "in_process_ms": [round(b, 1) for _, b in pairs],
                       "cli_cpu_ms": round(statistics.median(cpu[name]))} for name, pairs in rounds.items()}

    # -- 5. and 6. Validate and the sample mail against smtplib ---------------------------------------------

    def smtp(self, send: bool) -> None:
        context = ssl.create_default_context(cadata=self.peer["ca_pem"])
        with smtplib.SMTP(HOST, self.peer["port"], local_hostname="bench.example", timeout=10) as client:
            client.ehlo()
            client.starttls(context=context)
            client.ehlo()
            client.login(self.peer["username"], self.peer["password"])
            if send:
                message = (f"From: {FROM}\r\nTo: {RECIPIENT}\r\nSubject: Mailroom sample mail\r\n"
                           f"Message-ID: <{time.time_ns()}@bench.example>\r\n\r\nA sample.\r\n")
                client.sendmail(FROM, [RECIPIENT], message)
            else:
                client.mail(FROM)
                client.rset()

    def validate(self) -> dict:
        small = self.instances["small"]
        page = small.http.get(f"{small.url}/p/bench/servers/{small.peer_id}/edit", timeout=30).text
        token, fields = mailroom.token_in(page), mailroom.form_fields(page)
        url = f"{small.url}/p/bench/servers/{small.peer_id}/validate"
        headers = {"HX-Request": "true", "X-CSRFToken": token}

        def over_http():
            expect(small.http.post(url, data=fields, headers=headers, timeout=30), "All checks passed", "Validate")

        over_http()
        self.smtp(False)
        say(f"Validate: {ROUNDS} rounds of {REQUESTS} in turn with smtplib's same steps")
        return self.paired(lambda: self.smtp(False), over_http)

    def sample(self) -> dict:
        small = self.instances["small"]
        url = f"{small.url}/p/bench/servers/{small.peer_id}/sample"
        token = mailroom.token_in(small.http.get(url, timeout=30).text)
        headers = {"HX-Request": "true", "X-CSRFToken": token}

        def over_http():
            expect(small.http.post(url, data={"recipient": RECIPIENT, "csrf_token": token}, headers=headers,
                                   timeout=30), "accepted", "the sample mail")

        over_http()
        self.smtp(True)
        say(f"sample mail: {ROUNDS} rounds of {REQUESTS} in turn with smtplib sending one mail")
        return self.paired(lambda: self.smtp(True), over_http)

    @staticmethod
    def paired(bare, over_http) -> dict:
        rounds = []
        for _ in range(ROUNDS):
            base, measured = in_turn(bare, over_http, REQUESTS)
            rounds.append((measured, base))
        return {**summary([m / b for m, b in rounds]), "http_p50_ms": [round(m, 2) for m, _ in rounds],
                "smtplib_p50_ms": [round(b, 2) for _, b in rounds]}


def verdict(value: float, goal: float) -> str:
    return f"{value:.2f} (goal ≤ {goal}): {'met' if value <= goal else 'NOT met'}"


def print_report(record: dict) -> None:
    print("\nIssue 13's goals (ratio: median of the rounds' ratios; the rounds in brackets)")
    for name, figures in record.get("lists", {}).items():
        print(f"  {name}, {figures['data']:,} ÷ {SIZES['small'][LIST_DATA[name]]}, req/s: "
              f"{verdict(figures['ratio'], GOALS[name])} {figures['rounds']}; "
              f"large {figures['large_rps']} req/s ({figures['large_requests']} answers), "
              f"{figures['bytes']['large']:,} B ÷ {figures['bytes']['small']:,} B"
              + (f"; by time per request: {figures['by_latency']}" if figures["by_latency"] else ""))
    if row := record.get("row_action"):
        print(f"  row action, 1,000 servers ÷ 1, p50: {verdict(row['ratio'], GOALS['row action'])} {row['rounds']}; "
              f"{row['p50_ms_1000']} ms ÷ {row['p50_ms_1']} ms")
    for moment, figures in record.get("worker_memory", {}).items():
        print(f"  worker RSS {moment.removeprefix('memory_')} ÷ hello: {verdict(figures['rss_ratio'], GOALS['worker RSS'])}; "
              f"{figures['mailroom_rss_mib']} MiB ÷ {figures['hello_rss_mib']} MiB (PSS ratio {figures['pss_ratio']}: "
              f"{figures['mailroom_pss_mib']} ÷ {figures['hello_pss_mib']} MiB)")
    for name, cli in record.get("cli", {}).items():
        print(f"  {name} mail check ÷ in-process: {verdict(cli['ratio'], GOALS['mail check CLI'])} {cli['rounds']}; "
              f"{cli['cli_ms']} ms ÷ {cli['in_process_ms']} ms; CPU of the new process {cli['cli_cpu_ms']} ms (median)")
    for key, name in (("validate", "Validate"), ("sample", "sample mail")):
        if not (figures := record.get(key)):
            continue
        print(f"  {name} over HTTP ÷ smtplib, p50: {verdict(figures['ratio'], GOALS[name])} {figures['rounds']}; "
              f"{figures['http_p50_ms']} ms ÷ {figures['smtplib_p50_ms']} ms")
    for note in record["notes"]:
        print(f"  note: {note}")


def on_term(_signum, _frame):
    raise KeyboardInterrupt  # the finally below stops what the bench started


def main() -> int:
    signal.signal(signal.SIGTERM, on_term)
    if "lists" in ONLY and not shutil.which("wrk"):
        print("wrk is missing (make bench installs it)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="mailroom-scale-"))
    scale = Scale(work)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    try:
        record = scale.run()
    except (RuntimeError, OSError, requests.RequestException) as error:
        print(f"the bench could not measure: {error}", file=sys.stderr)
        return 1
    finally:
        scale.processes.stop_all()
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    record.update({"commit": commit.strip(), "seconds": round(time.perf_counter() - started),
                   "load": [round(load, 2), round(os.getloadavg()[0], 2)],
                   "at": datetime.now(UTC).isoformat(timespec="seconds")})
    print_report(record)
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    path = results / f"scale-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"\n{record['seconds']} s, load {record['load'][0]} → {record['load'][1]}, commit {record['commit']}; "
          f"{path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
