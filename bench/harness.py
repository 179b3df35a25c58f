"""Plumbing for bench/run.py: processes it starts, free ports, wrk and its output, small statistics."""
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

HOST = "127.0.0.1"


class OutOfTime(Exception):
    pass


# ---------------------------------------------------------------- processes we start

class Processes:
    """Every long-running process this run starts; all stopped by stop_all(), whatever happened."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, command, log: Path, **kwargs) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, **kwargs)
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM (gunicorn: graceful stop of master and workers), then SIGKILL to its process group."""
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        self._reap(proc, time.monotonic() + 8)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 8
        for proc in self.started:
            self._reap(proc, deadline)
        self.started.clear()

    @staticmethod
    def _reap(proc: subprocess.Popen, deadline: float) -> None:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:  # its own process group (start_new_session): the leader's pid is the group id
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            print(f"warning: process {proc.pid} did not stop", file=sys.stderr)


def leave(work: Path, say) -> None:
    """A bench's temporary folder: removed, or kept (and said) with BENCH_KEEP=1."""
    if not os.environ.get("BENCH_KEEP"):
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"kept {work}")


def write_record(record: dict, name: str) -> Path:
    """The run's record as bench/results/<name>-<UTC time>.json."""
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    out = results / f"{name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(record, indent=1, default=str))
    return out


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


def wait_for_file(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[1:3]} exited ({proc.returncode}):\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path.name} did not appear within {timeout}s:\n{tail(log)}")
        time.sleep(0.1)


def wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Until `text` appears in the process's log (case-insensitive): it is ready."""
    deadline = time.monotonic() + timeout
    while text.lower() not in (log.read_text(errors="replace").lower() if log.exists() else ""):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[1:6]} exited ({proc.returncode}):\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"“{text}” did not appear in {log.name} within {timeout}s:\n{tail(log)}")
        time.sleep(0.1)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def worker_pids(master: int) -> list[int]:
    """The gunicorn workers of a master (its children), from /proc."""
    children = Path(f"/proc/{master}/task/{master}/children")
    try:
        return sorted(int(pid) for pid in children.read_text().split())
    except OSError:
        return []


def cpu_seconds(pids: list[int]) -> list[float]:
    """CPU time (user + system) each process has used so far, from /proc/<pid>/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / tick)  # utime, stime: fields 14 and 15
        except (OSError, IndexError, ValueError):
            out.append(0.0)
    return out


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
    pids = {pid: int(n) for pid, n in re.findall(r"^pid (\d+) (\d+)$", output, re.M)}
    return {
        "requests_per_s": float(rps.group(1)),
        "p50_ms": percentiles[50],
        "p75_ms": percentiles.get(75),
        "p90_ms": percentiles.get(90),
        "p99_ms": percentiles[99],
        "requests": requests_done,
        # wrk's "MB read" over requests: status line, headers and body as received; rounded by wrk
        # to two decimals of its unit (about 0.5% for a few MB)
        "bytes_per_response": round(read / requests_done) if requests_done else None,
        "non_2xx_3xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  map(int, socket_errors.groups()))) if socket_errors else {},
        **({"requests_by_pid": pids} if pids else {}),
    }


class Wrk:
    def __init__(self, threads: int, connections: int):
        self.threads, self.connections = threads, connections

    def run(self, url: str, duration: int, headers: dict | None = None, script: Path | None = None,
            env: dict | None = None, connections: int | None = None, master: int | None = None) -> tuple[dict, str]:
        """One wrk run. `master`: a gunicorn master pid; the CPU time each of its workers used during
        the run is added (worker_cpu_s, busiest_cpu_share): how the load was spread, at no cost."""
        connections = connections or self.connections
        workers = worker_pids(master) if master else []
        cpu_before = cpu_seconds(workers)
        command = ["wrk", f"-t{min(self.threads, connections)}", f"-c{connections}", f"-d{duration}s", "--latency"]
        for name, value in (headers or {}).items():
            command += ["-H", f"{name}: {value}"]
        if script:
            command += ["-s", str(script)]
        command.append(url)
        result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 20,
                                env={**os.environ, **(env or {})})
        if result.returncode:
            raise RuntimeError(f"wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        figures = parse_wrk(result.stdout)
        if workers:
            used = [round(after - before, 2) for before, after in zip(cpu_before, cpu_seconds(workers))]
            figures["worker_cpu_s"] = used
            # with one worker there is nothing to spread
            figures["busiest_cpu_share"] = round(max(used) / sum(used), 3) if sum(used) and len(used) > 1 else None
        return figures, result.stdout


def combine(runs: list[dict]) -> dict:
    """One target's rounds: requests/s and latencies averaged, counts summed."""
    def mean(key):
        return round(statistics.fmean(r[key] for r in runs), 3)
    shares = [r["busiest_cpu_share"] for r in runs if r.get("busiest_cpu_share") is not None]
    return {
        "busiest_cpu_share_rounds": shares,
        "requests_per_s": round(statistics.fmean(r["requests_per_s"] for r in runs), 1),
        "p50_ms": mean("p50_ms"), "p75_ms": mean("p75_ms"), "p90_ms": mean("p90_ms"), "p99_ms": mean("p99_ms"),
        "requests": sum(r["requests"] for r in runs),
        "bytes_per_response": round(statistics.fmean(r["bytes_per_response"] or 0 for r in runs)),
        "non_2xx_3xx": sum(r["non_2xx_3xx"] for r in runs),
        "socket_errors": {k: sum(r["socket_errors"].get(k, 0) for r in runs)
                          for k in ("connect", "read", "write", "timeout")},
    }


def ratio(rounds: list[dict], name: str, base: str) -> dict:
    """Each round's figures over the same round's `base` figures: the median over the rounds (the
    headline: one round hit by a burst of load from elsewhere does not move it), the mean, and each
    round's. requests/s: higher is better; latencies: the × it takes longer."""
    out = {}
    for label, key in {"requests_per_s": "requests_per_s", "p50": "p50_ms", "p99": "p99_ms"}.items():
        per_round = [r[name][key] / r[base][key] for r in rounds]
        digits = 3 if label == "requests_per_s" else 2
        out[label] = round(statistics.median(per_round), digits)
        out[f"{label}_mean"] = round(statistics.fmean(per_round), digits)
        out[f"{label}_range"] = [round(min(per_round), 3), round(max(per_round), 3)]
        out[f"{label}_rounds"] = [round(x, 3) for x in per_round]
    return out


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)
