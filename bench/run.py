"""Mailroom under gunicorn against a hello-world Flask baseline, on loopback, in under two minutes.

    make bench            (or: .venv/bin/python bench/run.py)

Sets up a throwaway instance (SQLite in a temporary folder) through the CLI, creates one SMTP
server through the real form, serves bench/hello.py and Mailroom under the same gunicorn
settings as the Makefile, runs wrk against three targets and prints each Mailroom figure as a
ratio to the baseline's. Then runs Validate against a TCP listener that never greets while
other threads keep loading the server page. Results also go to bench/results/<timestamp>.json.

The machine is shared and noisy: the targets run interleaved, ROUNDS times (hello, page, swap,
hello, page, swap), and each round's Mailroom figures are divided by the same round's hello
figures; the table shows the mean over the rounds and the spread of the per-round ratios.

Environment (all optional): BENCH_DURATION (wrk seconds per target and round, default 6),
BENCH_ROUNDS (2),
BENCH_CONNECTIONS (16), BENCH_THREADS (2), WORKERS / THREADS (gunicorn, default 2 / 8 as in
the Makefile), BENCH_KEEP=1 keeps the temporary folder (logs, database).
"""
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from html import unescape
from pathlib import Path
from urllib.parse import urlencode

import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"

BUDGET = 115  # seconds for the whole run; everything is stopped when it runs out
DURATION = int(os.environ.get("BENCH_DURATION", "6"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
WARMUP = 2
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
WRK_THREADS = int(os.environ.get("BENCH_THREADS", "2"))
WORKERS = int(os.environ.get("WORKERS", "2"))
THREADS = int(os.environ.get("THREADS", "8"))
GUNICORN_SETTINGS = ["--worker-class", "gthread", "--workers", str(WORKERS), "--threads", str(THREADS),
                     "--timeout", "120"]  # as GUNICORN in the Makefile
# gunicorn 27 opens a control socket at one fixed path (~/.gunicorn/gunicorn.ctl) by default: two
# instances, or one next to someone's `make run`, would take it from each other. Not a speed setting.
GUNICORN_EXTRA = ["--no-control-socket"]

HOST = "127.0.0.1"
SLUG = "bench"
EMAIL = "bench@example.com"
PASSWORD = "bench-password-123"
USER_AGENT = "mailroom-bench/1"  # wrk sends the same one: the session was signed in with it
VALIDATE_TIMEOUT = 2
VALIDATE_GIVE_UP = VALIDATE_TIMEOUT + 10  # the client stops waiting for Validate's answer
HITTERS = 4  # threads loading the server page while Validate waits

SERVER_FIELDS = {
    "description": "Bench relay",
    "protocol": "smtp",
    "host": "smtp.example.com",
    "security": "starttls",
    "port": "587",
    "timeout": "10",
    "verify_cert": "y",
    "from_address": "helpdesk@example.com",
    "sender_name": "Bench Help Desk",
    "max_connections": "5",
    "enabled": "y",
}
TOKEN = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


class OutOfTime(Exception):
    pass


# ---------------------------------------------------------------- processes we start

class Processes:
    """Every long-running process this run starts; all stopped by stop_all(), whatever happened."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, command, log: Path, **kwargs) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, **kwargs)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)  # gunicorn: graceful stop of master and workers
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 8
        for proc in self.started:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # its own process group (start_new_session): the master's pid is the group id
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                print(f"warning: process {proc.pid} did not stop", file=sys.stderr)
        self.started.clear()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_until_answers(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({proc.returncode}):\n{tail(log)}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- the Mailroom instance

def mailroom_env(instance: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_")}
    env["MAILROOM_INSTANCE_PATH"] = str(instance)
    env["MAILROOM_DATABASE_URL"] = f"sqlite:///{instance / 'mailroom.sqlite3'}"
    return env


def flask_cli(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "webapp", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    if result.returncode:
        raise RuntimeError(f"flask {' '.join(args[:1])} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def set_up_instance(env: dict) -> None:
    flask_cli(env, "init", "--email", "first-admin@example.com")
    flask_cli(env, "create-user", EMAIL, "--password", PASSWORD, "--superadmin")
    flask_cli(env, "create-portal", SLUG, "Bench Portal")


def token_in(page: str) -> str:
    match = TOKEN.search(page)
    if not match:
        raise RuntimeError("no csrf_token in the page")
    return match.group(1)


def sign_in(base: str) -> tuple[requests.Session, str]:
    http = requests.Session()
    http.headers["User-Agent"] = USER_AGENT
    token = token_in(http.get(f"{base}/login", timeout=10).text)
    response = http.post(f"{base}/login", data={"email": EMAIL, "password": PASSWORD, "csrf_token": token},
                         allow_redirects=False, timeout=10)
    if response.status_code != 303:
        raise RuntimeError(f"sign-in answered {response.status_code}")
    return http, token


def create_server(http: requests.Session, base: str) -> int:
    token = token_in(http.get(f"{base}/p/{SLUG}/servers/new", timeout=10).text)
    response = http.post(f"{base}/p/{SLUG}/servers/new", data={**SERVER_FIELDS, "csrf_token": token},
                         allow_redirects=False, timeout=10)
    if response.status_code != 303:
        raise RuntimeError(f"creating the server answered {response.status_code}:\n{response.text[:2000]}")
    listing = http.get(f"{base}/p/{SLUG}/servers/", timeout=10).text
    ids = re.findall(rf"/p/{SLUG}/servers/(\d+)/edit", listing)
    if not ids:
        raise RuntimeError("the new server is not in the list")
    return int(ids[0])


def server_page_form(page: str) -> dict:
    """The form fields as the browser posts them (hx-include="closest form"), for the section swap."""
    version = re.search(r'name="version" type="hidden" value="([^"]*)"', page) or \
        re.search(r'id="version" name="version" type="hidden" value="([^"]*)"', page)
    return {
        "csrf_token": token_in(page),
        "version": unescape(version.group(1)) if version else "",
        **{k: v for k, v in SERVER_FIELDS.items() if k != "security"},
        "security": "tls",  # the admin just picked SSL/TLS: the port follows to 465
        "ca_cert": "",
        "reply_to": "",
        "admin_address": "",
    }


# ---------------------------------------------------------------- wrk

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
SIZES = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


def to_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()
    return float(number) * UNITS[unit]


def parse_wrk(output: str) -> dict:
    percentiles = {int(p): to_ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.M)}
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"(\d+) requests in ([\d.]+\w+), ([\d.]+)(\w+) read", output)
    if not (rps and total and 50 in percentiles and 99 in percentiles):
        raise RuntimeError(f"cannot parse wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    requests_done = int(total.group(1))
    read = float(total.group(3)) * SIZES[total.group(4)]
    return {
        "requests_per_s": float(rps.group(1)),
        "p50_ms": percentiles[50],
        "p75_ms": percentiles.get(75),
        "p90_ms": percentiles.get(90),
        "p99_ms": percentiles[99],
        "requests": requests_done,
        "bytes_per_response": round(read / requests_done) if requests_done else None,
        "non_2xx_3xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  map(int, socket_errors.groups()))) if socket_errors else {},
    }


def combine(runs: list[dict]) -> dict:
    """One target's rounds: requests/s and latencies averaged, counts summed."""
    mean = lambda key: round(statistics.fmean(r[key] for r in runs), 3)  # noqa: E731
    return {
        "requests_per_s": round(statistics.fmean(r["requests_per_s"] for r in runs), 1),
        "p50_ms": mean("p50_ms"), "p75_ms": mean("p75_ms"), "p90_ms": mean("p90_ms"), "p99_ms": mean("p99_ms"),
        "requests": sum(r["requests"] for r in runs),
        "bytes_per_response": round(statistics.fmean(r["bytes_per_response"] or 0 for r in runs)),
        "non_2xx_3xx": sum(r["non_2xx_3xx"] for r in runs),
        "socket_errors": {k: sum(r["socket_errors"].get(k, 0) for r in runs)
                          for k in ("connect", "read", "write", "timeout")},
    }


def ratios_to_hello(rounds: list[dict], name: str) -> dict:
    """Each round against the same round's hello; the mean, and the lowest and highest round."""
    keys = {"requests_per_s": "requests_per_s", "p50": "p50_ms", "p99": "p99_ms"}
    ratios = {}
    for label, key in keys.items():
        per_round = [r[name][key] / r["hello GET /"][key] for r in rounds]
        ratios[label] = round(statistics.fmean(per_round), 3 if label == "requests_per_s" else 2)
        ratios[f"{label}_range"] = [round(min(per_round), 3), round(max(per_round), 3)]
    return ratios


def wrk(url: str, duration: int, headers: dict | None = None, script: Path | None = None,
        env: dict | None = None) -> tuple[dict, str]:
    command = ["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    if script:
        command += ["-s", str(script)]
    command.append(url)
    result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 20,
                            env={**os.environ, **(env or {})})
    if result.returncode:
        raise RuntimeError(f"wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return parse_wrk(result.stdout), result.stdout


# ---------------------------------------------------------------- Validate against a silent port

class SilentListener:
    """Accepts TCP connections on 127.0.0.1 and never says a word (no SMTP greeting)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                connection, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.held.append(connection)

    def close(self):
        self.stopping.set()
        self.thread.join(2)
        for connection in self.held:
            connection.close()
        self.sock.close()


def validate_while_loading(base: str, server_id: int, cookies, page_form: dict) -> dict:
    page_url = f"{base}/p/{SLUG}/servers/{server_id}/edit"
    listener = SilentListener()
    samples: list[tuple[float, float, int]] = []  # (start, end, status)
    stop = threading.Event()

    def hit():
        http = requests.Session()
        http.headers.update({"User-Agent": USER_AGENT, "Connection": "close"})  # new connection each time:
        http.cookies.update(cookies)                                             # both workers get some
        while not stop.is_set():
            start = time.monotonic()
            try:
                status = http.get(page_url, timeout=10, allow_redirects=False).status_code
            except requests.RequestException:
                status = 0
            samples.append((start, time.monotonic(), status))

    try:
        hitters = [threading.Thread(target=hit, daemon=True) for _ in range(HITTERS)]
        for thread in hitters:
            thread.start()
        time.sleep(1.0)
        http = requests.Session()
        http.headers.update({"User-Agent": USER_AGENT, "HX-Request": "true", "HX-Target": "report"})
        http.cookies.update(cookies)
        form = {**page_form, "security": "none", "host": HOST, "port": str(listener.port),
                "timeout": str(VALIDATE_TIMEOUT)}
        started = time.monotonic()
        try:
            response = http.post(f"{base}/p/{SLUG}/servers/{server_id}/validate", data=form,
                                 headers={"X-CSRFToken": page_form["csrf_token"]},
                                 timeout=VALIDATE_GIVE_UP)
            status, report = response.status_code, report_summary(response.text)
        except requests.RequestException as error:
            status, report = None, f"no answer: {type(error).__name__} after {VALIDATE_GIVE_UP}s"
        ended = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in hitters:
            thread.join(15)
        accepted = len(listener.held)
        listener.close()

    elapsed = ended - started
    before = [e - s for s, e, st in samples if e < started]
    during = [(e - s, st) for s, e, st in samples if s < ended and e > started]
    latencies = [lat for lat, _ in during]
    # the longest gap without any page answer while Validate waited: a stalled server shows here
    finishes = sorted([started] + [e for s, e, _ in samples if started <= e <= ended] + [ended])
    longest_gap = max(b - a for a, b in zip(finishes, finishes[1:]))
    return {
        "validate_status": status,
        "validate_report": report,
        "timeout_s": VALIDATE_TIMEOUT,
        "elapsed_s": round(elapsed, 3),
        "elapsed_over_timeout": round(elapsed / VALIDATE_TIMEOUT, 2),
        "within_timeout_plus_1s": elapsed <= VALIDATE_TIMEOUT + 1,
        "connections_accepted_by_listener": accepted,
        "page_loaders": HITTERS,
        "page_before_p50_ms": round(statistics.median(before) * 1e3, 1) if before else None,
        "page_during_count": len(during),
        "page_during_ok": sum(1 for _, st in during if st == 200),
        "page_during_p50_ms": round(statistics.median(latencies) * 1e3, 1) if latencies else None,
        "page_during_max_ms": round(max(latencies) * 1e3, 1) if latencies else None,
        "page_during_longest_gap_ms": round(longest_gap * 1e3, 1),
    }


def report_summary(html: str) -> str:
    header = re.search(r"<header>(.*?)</header>", html, re.S)
    text = re.sub(r"<[^>]+>", " ", header.group(1) if header else html)
    return re.sub(r"\s+", " ", unescape(text)).strip()[:300]


# ---------------------------------------------------------------- the run

def gunicorn_command(port: int, app: str) -> list[str]:
    binary = Path(sys.executable).parent / "gunicorn"
    launcher = [str(binary)] if binary.exists() else [sys.executable, "-m", "gunicorn"]
    return [*launcher, *GUNICORN_SETTINGS, *GUNICORN_EXTRA, "--bind", f"{HOST}:{port}", app]


def code_version() -> dict:
    """Others edit the app while this runs: say which code was measured."""
    def git(*args):
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return result.stdout.strip()
    smtp = ROOT / "webapp" / "mail" / "smtp.py"
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted": git("status", "--porcelain", "--untracked-files=all", "webapp").splitlines(),
            "smtp_py_sha256": hashlib.sha256(smtp.read_bytes()).hexdigest()[:16] if smtp.exists() else None}


def on_alarm(_signum, _frame):
    raise OutOfTime(f"the run took longer than {BUDGET}s")


def on_term(signum, _frame):
    raise SystemExit(128 + signum)


def main() -> int:
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(BUDGET)
    began = time.monotonic()
    now = datetime.now(timezone.utc).astimezone()
    work = Path(tempfile.mkdtemp(prefix="mailroom-bench-"))
    instance = work / "instance"
    processes = Processes()
    code_before = code_version()
    try:
        env = mailroom_env(instance)
        print(f"Setting up a throwaway instance in {instance}")
        set_up_instance(env)

        hello_port, mailroom_port = free_port(), free_port()
        while mailroom_port == hello_port:
            mailroom_port = free_port()
        hello_cmd = gunicorn_command(hello_port, "hello:app")
        mailroom_cmd = gunicorn_command(mailroom_port, "webapp:create_app()")
        hello = processes.start(hello_cmd, work / "hello.log", cwd=BENCH)
        mailroom = processes.start(mailroom_cmd, work / "mailroom.log", cwd=ROOT, env=env)
        hello_url, base = f"http://{HOST}:{hello_port}", f"http://{HOST}:{mailroom_port}"
        wait_until_answers(f"{hello_url}/", hello, work / "hello.log")
        wait_until_answers(f"{base}/login", mailroom, work / "mailroom.log")

        http, _ = sign_in(base)
        server_id = create_server(http, base)
        page_url = f"{base}/p/{SLUG}/servers/{server_id}/edit"
        swap_url = f"{base}/p/{SLUG}/servers/{server_id}/section/tls"
        page = http.get(page_url, timeout=10)
        if page.status_code != 200:
            raise RuntimeError(f"the server page answered {page.status_code}")
        form = server_page_form(page.text)
        cookie = "; ".join(f"{c.name}={c.value}" for c in http.cookies)
        body = urlencode(form)

        # What wrk will send must get the real answers, not a redirect to the sign-in page.
        plain = {"User-Agent": USER_AGENT, "Cookie": cookie}
        swap_headers = {**plain, "Content-Type": "application/x-www-form-urlencoded", "HX-Request": "true",
                        "HX-Trigger": "security", "HX-Trigger-Name": "security", "HX-Target": "section-tls",
                        "X-CSRFToken": form["csrf_token"]}
        check_page = requests.get(page_url, headers=plain, allow_redirects=False, timeout=10)
        check_swap = requests.post(swap_url, data=body, headers=swap_headers, allow_redirects=False, timeout=10)
        if check_page.status_code != 200 or "server-form" not in check_page.text:
            raise RuntimeError(f"the server page with wrk's headers answered {check_page.status_code}")
        if check_swap.status_code != 200 or 'id="section-tls"' not in check_swap.text or \
                'value="465"' not in check_swap.text:
            raise RuntimeError(f"the section swap answered {check_swap.status_code}:\n{check_swap.text[:1500]}")
        notes = []
        for name, response in (("server page", check_page), ("section swap", check_swap)):
            if "Set-Cookie" in response.headers:
                notes.append(f"{name} sets a cookie on every request: {response.headers['Set-Cookie'][:80]}")

        swap_env = {"BENCH_BODY": body, "BENCH_COOKIE": cookie, "BENCH_CSRF": form["csrf_token"],
                    "BENCH_UA": USER_AGENT}
        targets = [
            ("hello GET /", dict(url=f"{hello_url}/")),
            ("server page GET", dict(url=page_url, headers=plain)),
            ("section swap POST", dict(url=swap_url, script=BENCH / "section_swap.lua", env=swap_env)),
        ]
        print(f"wrk: {WARMUP}s warm-up per target", flush=True)
        for name, target in targets:
            wrk(duration=WARMUP, **target)
        rounds, raw = [], {name: [] for name, _ in targets}
        for number in range(1, ROUNDS + 1):
            rounds.append({})
            for name, target in targets:
                print(f"wrk: round {number}/{ROUNDS}: {name} ({DURATION}s)", flush=True)
                rounds[-1][name], output = wrk(duration=DURATION, **target)
                raw[name].append(output)
                figures = rounds[-1][name]
                if figures["non_2xx_3xx"] or any(figures["socket_errors"].values()):
                    notes.append(f"{name}, round {number}: {figures['non_2xx_3xx']} non-2xx/3xx, "
                                 f"socket errors {figures['socket_errors']}")
        results = {name: combine([r[name] for r in rounds]) for name, _ in targets}
        expected = {"server page GET": check_page, "section swap POST": check_swap}
        for name, response in expected.items():  # a run of redirects would show as far smaller responses
            size = len(response.content)
            if results[name]["bytes_per_response"] < size:
                notes.append(f"{name}: {results[name]['bytes_per_response']} bytes per response under wrk, "
                             f"body alone was {size} before: some answers were not the page")

        print("Validate against a silent port while the server page is loaded", flush=True)
        validate = validate_while_loading(base, server_id, http.cookies, form)
        if mailroom.poll() is not None:
            notes.append(f"Mailroom's gunicorn exited ({mailroom.returncode})")

        if code_version() != code_before:
            notes.append("the app's code changed during the run (see code.uncommitted, smtp.py hash at start)")
        ratios = {name: ratios_to_hello(rounds, name) for name in results if name != "hello GET /"}
        record = {
            "date": now.isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "loadavg_at_start": os.getloadavg()},
            "code": code_before,
            "settings": {"gunicorn": GUNICORN_SETTINGS, "wrk": f"-t{WRK_THREADS} -c{CONNECTIONS} "
                         f"-d{DURATION}s --latency, {ROUNDS} interleaved rounds (after a {WARMUP}s warm-up)",
                         "gunicorn_hello": hello_cmd, "gunicorn_mailroom": mailroom_cmd},
            "results": results,
            "rounds": rounds,
            "ratios_to_hello": ratios,
            "validate_silent_port": validate,
            "notes": notes,
            "wall_s": round(time.monotonic() - began, 1),
        }
        print_report(record)
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{now.strftime('%Y%m%dT%H%M%S')}.json"
        out.write_text(json.dumps({**record, "wrk_output": raw}, indent=2) + "\n")
        print(f"\nWritten to {out.relative_to(ROOT)}")
        return 0 if validate["within_timeout_plus_1s"] and validate["validate_status"] == 200 else 1
    except Exception as error:
        print(f"\nbench failed: {error}", file=sys.stderr)
        for log in ("mailroom.log", "hello.log"):
            if (work / log).exists():
                print(f"--- {log} (tail)\n{tail(work / log)}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        print("\ninterrupted: stopping what this run started", file=sys.stderr)
        raise
    finally:
        signal.alarm(0)
        processes.stop_all()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def print_report(record: dict) -> None:
    results, ratios = record["results"], record["ratios_to_hello"]
    print(f"\n{record['date']}  {record['machine']['cpus']} CPUs  load {record['machine']['loadavg_at_start']}")
    print(f"gunicorn {' '.join(record['settings']['gunicorn'])}; wrk {record['settings']['wrk']}\n")
    print(f"{'target':<20}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}   {'req/s ×':>8}{'p50 ×':>8}{'p99 ×':>8}"
          "   (× = Mailroom / hello; spread over rounds)")
    for name, r in results.items():
        ratio = ratios.get(name)
        line = f"{name:<20}{r['requests_per_s']:>10.1f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}   "
        if ratio is None:
            print(line + f"{'1':>8}{'1':>8}{'1':>8}   (baseline)")
            continue
        spread = "  ".join(f"{k} {ratio[k + '_range'][0]:g}–{ratio[k + '_range'][1]:g}"
                           for k in ("requests_per_s", "p50", "p99"))
        print(line + f"{ratio['requests_per_s']:>8.3f}{ratio['p50']:>8.2f}{ratio['p99']:>8.2f}   ({spread})")
    v = record["validate_silent_port"]
    print(f"\nValidate, silent port, timeout {v['timeout_s']}s: HTTP {v['validate_status']} after "
          f"{v['elapsed_s']}s = {v['elapsed_over_timeout']} × timeout "
          f"({'ok' if v['within_timeout_plus_1s'] else 'OVER'} timeout + 1s)\n  report: {v['validate_report']}")
    print(f"  meanwhile {v['page_loaders']} threads loaded the server page: {v['page_during_count']} answers "
          f"({v['page_during_ok']} × 200), p50 {v['page_during_p50_ms']} ms, max {v['page_during_max_ms']} ms, "
          f"longest gap {v['page_during_longest_gap_ms']} ms (before: p50 {v['page_before_p50_ms']} ms)")
    for note in record["notes"]:
        print(f"note: {note}")
    print(f"wall time {record['wall_s']}s")


if __name__ == "__main__":
    sys.exit(main())
