"""Mailroom's benchmark goals, measured as ratios within one run, on loopback, in about 2½ minutes.

    make bench            (or: .venv/bin/python bench/run.py)

1. Throughput: the server page and the section swap against the floor (an empty signed-in GET /
   CSRF-checked POST that loads the portal as every portal route does, bench/app.py) and against
   a hello-world app, all under the same gunicorn; wrk, interleaved rounds, per-round ratios.
2. The section swap's bytes on the wire against the page's (raw socket).
3. Validate against a local STARTTLS + AUTH SMTP peer (bench/smtp_peer.py, its own process):
   p50/p90 as the client sees it, next to the floor POST measured the same way.
4. How gunicorn spreads kept-alive connections over its workers: the Makefile's settings against
   the proposed ones (bench/serving.py), counted per worker pid.
5. The server page while 20 Validates hang on a port that never greets, under both settings.

gunicorn's settings come from the Makefile (make expands GUNICORN; WORKERS / THREADS from the
environment work as for `make run`). See bench/README.md for what each figure means.

Environment (all optional): BENCH_DURATION (wrk seconds per target and round, 3), BENCH_ROUNDS (4),
BENCH_WARMUP (2), BENCH_CONNECTIONS (16), BENCH_THREADS (wrk threads, 2), BENCH_VALIDATIONS (60),
BENCH_SPREAD_RUNS (8), BENCH_SPREAD_DURATION (1), BENCH_HANG_CHECKS (20), BENCH_HANG_TIMEOUT (10),
BENCH_SETTINGS=proposed (goals 1-3 under the proposed gunicorn line instead of the Makefile's),
BENCH_RETRIES (2: how often a wrk run in which one worker did over 80% of the work is measured
again, see throughput.py; 0 keeps it),
BENCH_KEEP=1 keeps the temporary folder (logs, database, Makefile.proposed).
"""
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import requests

import checks
import harness
import mailroom
import report
import serving
import throughput
import workers
from harness import HOST, OutOfTime, Processes

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"


def setting(name: str, default: str) -> str:
    return os.environ.get(name, default)


DURATION = int(setting("BENCH_DURATION", "3"))
ROUNDS = int(setting("BENCH_ROUNDS", "4"))
WARMUP = int(setting("BENCH_WARMUP", "2"))
CONNECTIONS = int(setting("BENCH_CONNECTIONS", "16"))
WRK_THREADS = int(setting("BENCH_THREADS", "2"))
VALIDATIONS = int(setting("BENCH_VALIDATIONS", "60"))
SPREAD_RUNS = int(setting("BENCH_SPREAD_RUNS", "8"))
SPREAD_DURATION = int(setting("BENCH_SPREAD_DURATION", "1"))
HANG_CHECKS = int(setting("BENCH_HANG_CHECKS", "20"))
HANG_TIMEOUT = int(setting("BENCH_HANG_TIMEOUT", "10"))
HANG_LOADERS = 4
RETRIES = int(setting("BENCH_RETRIES", "2"))  # a lopsided wrk run is measured again, at most this often
PRIMARY = setting("BENCH_SETTINGS", "makefile")
# The whole run stops when this runs out (an alarm): the wrk time, plus Validate hanging twice.
BUDGET = int(60 + (5 * ROUNDS * DURATION + 3 * RETRIES * DURATION + 5 * WARMUP) * 1.3
             + 2 * SPREAD_RUNS * (SPREAD_DURATION + 1) + 2 * (HANG_TIMEOUT + 10) + 30)

# Once the Makefile has the proposed line, goals 4 and 5 compare it with the same line without this.
PROPOSED_OPTION = "--reuse-port"
# gunicorn 27 opens a control socket at one fixed path (~/.gunicorn/gunicorn.ctl) unless told not to: two
# instances, or one next to someone's `make run`, would take it from each other. Not a speed setting.
NO_CONTROL_SOCKET = "--no-control-socket"

GOALS = {"page / floor GET": 0.40, "swap / floor POST": 0.65, "swap bytes / page bytes": 0.15,
         "validate p50 ms": 10.0}


def say(text: str) -> None:
    print(text, flush=True)


def gunicorn_command(options: list[str], port: int, app: str) -> list[str]:
    binary = Path(sys.executable).parent / "gunicorn"
    launcher = [str(binary)] if binary.exists() else [sys.executable, "-m", "gunicorn"]
    extra = [] if NO_CONTROL_SOCKET in options else [NO_CONTROL_SOCKET]
    return [*launcher, *options, *extra, "--bind", f"{HOST}:{port}", app]


def code_version() -> dict:
    """Others edit the app while this runs: say which code was measured."""
    def git(*args):
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return result.stdout.strip()
    digest = hashlib.sha256()
    for path in sorted((ROOT / "webapp").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".html"):
            digest.update(path.read_bytes())
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted": git("status", "--porcelain", "--untracked-files=all", "webapp", "Makefile").splitlines(),
            "webapp_sha256": digest.hexdigest()[:16]}


def on_alarm(_signum, _frame):
    raise OutOfTime(f"the run took longer than {BUDGET}s")


def on_term(signum, _frame):
    raise SystemExit(128 + signum)


@dataclass
class Served:
    """One gunicorn this run started."""
    proc: subprocess.Popen
    url: str
    command: list[str]


class Run:
    """One run: the instance, what it serves, the signed-in admin and servers, what it measured."""

    def __init__(self, work: Path):
        self.work = work
        self.env = mailroom.env_for(work / "instance")
        self.processes = Processes()
        self.notes: list[str] = []
        self.wrk = harness.Wrk(WRK_THREADS, CONNECTIONS)

    # -- setting up ------------------------------------------------------------------

    def start_gunicorn(self, name: str, options: list[str], app: str) -> Served:
        port = harness.free_port()
        command = gunicorn_command(options, port, app)
        proc = self.processes.start(command, self.work / f"{name}.log", cwd=ROOT, env=self.env)
        return Served(proc, f"http://{HOST}:{port}", command)

    def start_peer(self) -> dict:
        log = self.work / "smtp-peer.log"
        proc = self.processes.start([sys.executable, str(BENCH / "smtp_peer.py"), str(self.work)], log, cwd=ROOT)
        harness.wait_for_file(self.work / "peer.json", proc, log)
        return {**json.loads((self.work / "peer.json").read_text()), "pid": proc.pid}

    def choose_settings(self) -> None:
        """The Makefile's gunicorn line, and the one to compare it with: the proposed line, or the
        Makefile's without --reuse-port once it has the proposal. Goals 1-3 run under `primary`."""
        makefile = serving.makefile_options()
        proposed = serving.proposed_options(self.work)
        if proposed != makefile:
            other, options = "proposed", proposed
        else:
            other, options = "before", [o for o in makefile if o != PROPOSED_OPTION]
        self.settings = {"makefile": makefile, other: options}
        self.primary = "makefile" if PRIMARY == "makefile" else other
        self.secondary = other if self.primary == "makefile" else "makefile"
        for name, options in self.settings.items():
            say(f"gunicorn, {name}: {' '.join(options)}")
        say(f"goals 1-3 under the {self.primary} settings")

    def serve(self) -> None:
        self.hello = self.start_gunicorn("hello", self.settings[self.primary], "bench.hello:app")
        self.main = self.start_gunicorn(f"mailroom-{self.primary}", self.settings[self.primary],
                                        "bench.app:create_app()")
        self.other = self.start_gunicorn(f"mailroom-{self.secondary}", self.settings[self.secondary],
                                         "bench.app:create_app()")
        for name, served, path in (("hello", self.hello, "/"), (f"mailroom-{self.primary}", self.main, "/login"),
                                   (f"mailroom-{self.secondary}", self.other, "/login")):
            harness.wait_until_answers(served.url + path, served.proc, self.work / f"{name}.log")

    def create_servers(self, peer: dict, silent_port: int) -> None:
        """The signed-in admin (the session works on both Mailroom servers: one instance, one key) and
        three servers made through the real form: a relay nobody connects to (goals 1, 2), the STARTTLS
        peer (goal 3), the silent port (goal 5)."""
        base = self.main.url
        self.http = mailroom.sign_in(base)
        self.cookie = mailroom.cookie_header(self.http)
        self.relay_id = mailroom.create_server(self.http, base, mailroom.RELAY_FIELDS)
        self.peer_id = mailroom.create_server(self.http, base, {
            **mailroom.RELAY_FIELDS, "description": "Bench STARTTLS peer", "host": HOST, "port": str(peer["port"]),
            "security": "starttls", "verify_cert": "y", "ca_cert": peer["ca_pem"], "auth_type": "basic",
            "username": peer["username"], "password": peer["password"], "confirm_password": peer["password"],
            "mechanism": "auto"})
        self.silent_id = mailroom.create_server(self.http, base, {
            **mailroom.RELAY_FIELDS, "description": "Bench silent port", "host": HOST, "port": str(silent_port),
            "security": "none", "timeout": str(HANG_TIMEOUT)})

    def page_fields(self, server_id: int) -> tuple[str, list]:
        """The server's page as the admin opens it: its CSRF token and its form's fields."""
        page = self.http.get(f"{self.main.url}/p/{mailroom.SLUG}/servers/{server_id}/edit", timeout=10)
        if page.status_code != 200:
            raise RuntimeError(f"the page of server {server_id} answered {page.status_code}")
        return mailroom.token_in(page.text), mailroom.form_fields(page.text)

    # -- measuring -------------------------------------------------------------------

    def measure(self) -> dict:
        say(f"Setting up a throwaway instance in {self.work / 'instance'}")
        mailroom.set_up_instance(self.env)
        self.notes.append(mailroom.allow_loopback(self.env))
        peer = self.peer = self.start_peer()
        self.choose_settings()
        self.serve()
        listener = checks.SilentListener()
        try:
            self.create_servers(peer, listener.port)
            record = {"settings": {"gunicorn": self.settings, "goals_1_3_under": self.primary,
                                   "commands": {"hello": self.hello.command, self.primary: self.main.command,
                                                self.secondary: self.other.command},
                                   "wrk": f"-t{WRK_THREADS} -c{CONNECTIONS} -d{DURATION}s --latency, {ROUNDS} "
                                          f"interleaved rounds after a {WARMUP}s warm-up of each target"}}
            record.update(self.throughput())
            record["validate"] = self.validate()
            record["spread"] = {"by_setting": self.spread(),
                                "goal_1_runs": lopsided_count(record["rounds"], self.primary)}
            record["hang"] = self.hang(listener)
        finally:
            listener.close()
        for served, name in ((self.main, self.primary), (self.other, self.secondary)):
            if served.proc.poll() is not None:
                self.notes.append(f"the {name} Mailroom gunicorn exited ({served.proc.returncode})")
        return record

    def throughput(self) -> dict:
        """Goals 1 and 2."""
        csrf, fields = self.page_fields(self.relay_id)
        # The admin picks SSL/TLS: htmx posts the whole form (hx-include="closest form") with it.
        swap_fields = mailroom.with_values(fields, security="tls")
        all_targets = throughput.targets(self.hello.url, self.main.url, mailroom.SLUG, self.relay_id, self.cookie,
                                         swap_fields, csrf, hello_master=self.hello.proc.pid,
                                         master=self.main.proc.pid)
        self.check_targets(all_targets)
        rounds, raw = throughput.interleaved(self.wrk, all_targets, ROUNDS, DURATION, WARMUP, self.notes, say,
                                             retries=RETRIES, retry_budget=3 * RETRIES)
        results = {name: harness.combine([r[name] for r in rounds]) for name in rounds[0]}
        for target in all_targets:  # a run of redirects or errors would show as smaller answers
            if results[target.name]["bytes_per_response"] < target.expected_bytes:
                self.notes.append(f"{target.name}: {results[target.name]['bytes_per_response']} bytes per answer "
                                  f"under wrk, the body alone was {target.expected_bytes}: some answers were not it")
        by_name = {t.name: t for t in all_targets}
        wire = throughput.wire_sizes(by_name["server page GET"], by_name["section swap POST"], results)
        return {"throughput": results, "rounds": rounds, "ratios": throughput.ratios(rounds), "wire": wire,
                "wrk_output": raw}

    def check_targets(self, all_targets) -> None:
        """What wrk will send must get the real answers (not a redirect to sign-in or the password page)."""
        for target in all_targets:
            if target.script:
                response = requests.post(target.url, data=target.env["BENCH_BODY"],
                                         headers=throughput.swap_headers(target), allow_redirects=False, timeout=10)
            else:
                response = requests.get(target.url, headers=target.headers, allow_redirects=False, timeout=10)
            if response.status_code != 200:
                raise RuntimeError(f"{target.name} answered {response.status_code} "
                                   f"{response.headers.get('Location', '')}:\n{response.text[:1000]}")
            if "Set-Cookie" in response.headers:
                self.notes.append(f"{target.name} sets a cookie: {response.headers['Set-Cookie'][:80]}")
            target.expected_bytes = len(response.content)
            if target.name == "section swap POST" and not ('id="port-group"' in response.text
                                                           and 'value="465"' in response.text):
                raise RuntimeError(f"the section swap did not answer with the port part for port 465:\n"
                                   f"{response.text[:1500]}")

    def validate(self) -> dict:
        """Goal 3."""
        say(f"Validate against the STARTTLS + AUTH peer: {VALIDATIONS} × floor POST, then {VALIDATIONS} × Validate")
        csrf, fields = self.page_fields(self.peer_id)
        return checks.validate_goal(self.main.url, mailroom.SLUG, self.peer_id, fields, self.http.cookies, csrf,
                                    VALIDATIONS, harness.worker_pids(self.main.proc.pid), self.peer["pid"])

    def spread(self) -> dict:
        """Goal 4."""
        say(f"Spread over workers: {SPREAD_RUNS} wrk runs of {SPREAD_DURATION}s on the floor GET per setting")
        floor = f"/bench-floor/{mailroom.SLUG}"
        servers = {self.primary: (self.main.url + floor, self.main.proc.pid),
                   self.secondary: (self.other.url + floor, self.other.proc.pid)}
        return workers.spread(self.wrk, servers, self.cookie, SPREAD_RUNS, SPREAD_DURATION)

    def hang(self, listener: checks.SilentListener) -> dict:
        """Goal 5, under both settings."""
        csrf, fields = self.page_fields(self.silent_id)
        out = {}
        for name, served in ((self.primary, self.main), (self.secondary, self.other)):
            say(f"{HANG_CHECKS} Validates hanging on a silent port (timeout {HANG_TIMEOUT}s) while {HANG_LOADERS} "
                f"threads load the server page: {name} settings")
            out[name] = checks.page_while_checks_hang(
                served.url, mailroom.SLUG, self.relay_id, self.silent_id, fields, self.http.cookies, csrf, listener,
                HANG_CHECKS, HANG_LOADERS, HANG_TIMEOUT, give_up=HANG_TIMEOUT + 5)
        return out


def lopsided_count(rounds: list[dict], setting_name: str) -> dict:
    """Goal 1's wrk runs, retries included, and those in which one worker did most of the work."""
    runs = lopsided = 0
    for figures in rounds:
        for result in figures.values():
            again = result.get("lopsided_runs", [])
            lopsided += len(again)
            runs += len(again) + (0 if again and again[-1]["busiest_cpu_share"] == result["busiest_cpu_share"] else 1)
    return {"setting": setting_name, "runs": runs, "lopsided": lopsided, "threshold": throughput.LOPSIDED}


def verdicts(record: dict) -> dict:
    """Each goal: its figure, its target, met or not. A throughput ratio with a round in which one
    worker did most of the work (target or base, after the retries) measured the accept lottery
    as much as the app: it says so ("lopsided_rounds")."""
    r, wire, validate = record["ratios"], record["wire"], record["validate"]
    out = {
        "page / floor GET": (r["page / floor GET"]["requests_per_s"], ">=", GOALS["page / floor GET"]),
        "swap / floor POST": (r["swap / floor POST"]["requests_per_s"], ">=", GOALS["swap / floor POST"]),
        "swap bytes / page bytes": (wire["swap_over_page"], "<=", GOALS["swap bytes / page bytes"]),
        "validate p50 ms": (validate["validate"].get("in_app_p50_ms", validate["validate"]["p50_ms"]), "<=",
                            GOALS["validate p50 ms"]),
    }
    verdict = {name: {"figure": figure, "goal": f"{op} {goal}",
                      "met": figure >= goal if op == ">=" else figure <= goal}
               for name, (figure, op, goal) in out.items()}
    for label in ("page / floor GET", "swap / floor POST"):
        target, base = throughput.RATIOS[label]
        verdict[label]["lopsided_rounds"] = [
            number for number, figures in enumerate(record["rounds"], start=1)
            if any((figures[name].get("busiest_cpu_share") or 0) > throughput.LOPSIDED for name in (target, base))]
    return verdict


def main() -> int:
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(BUDGET)
    began = time.monotonic()
    now = datetime.now(timezone.utc).astimezone()
    load_at_start = os.getloadavg()
    code_before = code_version()
    run = Run(Path(tempfile.mkdtemp(prefix="mailroom-bench-")))
    try:
        measured = run.measure()
        if code_version() != code_before:
            run.notes.append("the app's code changed during the run (see code.uncommitted and webapp_sha256)")
        raw = measured.pop("wrk_output")
        record = {"date": now.isoformat(timespec="seconds"),
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                              "python": platform.python_version(), "loadavg_at_start": load_at_start,
                              "loadavg_at_end": os.getloadavg()},
                  "code": code_before, **measured, "notes": run.notes,
                  "wall_s": round(time.monotonic() - began, 1)}
        record["goals"] = verdicts(record)
        report.print_report(record)
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{now.strftime('%Y%m%dT%H%M%S')}.json"
        out.write_text(json.dumps({**record, "wrk_output": raw}, indent=2) + "\n")
        say(f"\nWritten to {out.relative_to(ROOT)}")
        return 0 if record["validate"]["all_passed"] else 1
    except Exception as error:
        print(f"\nbench failed: {type(error).__name__}: {error}", file=sys.stderr)
        for log in sorted(run.work.glob("*.log")):
            print(f"--- {log.name} (tail)\n{harness.tail(log)}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        print("\ninterrupted: stopping what this run started", file=sys.stderr)
        raise
    finally:
        signal.alarm(0)
        run.processes.stop_all()
        if os.environ.get("BENCH_KEEP"):
            say(f"kept {run.work}")
        else:
            shutil.rmtree(run.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
