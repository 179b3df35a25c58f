"""Goals 3 and 5: Validate against a real STARTTLS + AUTH peer, timed one request after another
next to the floor POST; and the server page while 20 Validates hang on a port that never greets."""
import collections
import re
import socket
import statistics
import threading
import time

import requests

import harness
from mailroom import USER_AGENT, report_summary

HTMX = {"HX-Request": "true", "HX-Target": "report"}  # the Validate button has no id: no HX-Trigger


def timed_posts(url: str, fields: list, cookies, csrf: str, count: int, expect: str | None = None,
                watch: dict[str, list[int]] | None = None) -> dict:
    """`count` POSTs one after the other on one kept-alive connection, as htmx sends Validate;
    the wall time of each as the client sees it. `expect`: text every answer must contain.
    `watch`: name -> pids whose CPU time per request is reported (the app's workers, the peer)."""
    http = requests.Session()
    http.headers.update({"User-Agent": USER_AGENT, **HTMX, "X-CSRFToken": csrf, "X-Bench-Time": "1"})
    http.cookies.update(cookies)
    times, in_app, statuses, wrong = [], [], collections.Counter(), []
    http.post(url, data=fields, timeout=30)  # one more first: the connection open, caches warm
    watch = watch or {}
    cpu_before = {name: sum(harness.cpu_seconds(pids)) for name, pids in watch.items()}
    for _ in range(count):
        started = time.perf_counter()
        response = http.post(url, data=fields, timeout=30)
        times.append(time.perf_counter() - started)
        if "X-App-Ms" in response.headers:
            in_app.append(float(response.headers["X-App-Ms"]) / 1000)
        statuses[response.status_code] += 1
        if response.status_code != 200 or (expect and expect not in response.text):
            wrong.append(f"{response.status_code}: {report_summary(response.text)}")
    cpu = {f"{name}_cpu_ms_per_request": round((sum(harness.cpu_seconds(pids)) - cpu_before[name]) / count * 1e3, 2)
           for name, pids in watch.items()}
    app_time = {f"in_app_{k}": v for k, v in summarize(in_app).items() if k != "n"} if in_app else {}
    return {**summarize(times), **app_time, **cpu, "statuses": dict(statuses), "not_as_expected": len(wrong),
            "first_unexpected": wrong[:3]}


def summarize(times: list[float]) -> dict:
    return {"n": len(times), "p50_ms": harness.ms(statistics.median(times)),
            "p90_ms": harness.ms(harness.percentile(times, 90)), "min_ms": harness.ms(min(times)),
            "max_ms": harness.ms(max(times))}


def validate_goal(base: str, slug: str, server_id: int, fields: list, cookies, csrf: str, count: int,
                  app_pids: list[int], peer_pid: int) -> dict:
    """Goal 3: the floor POST, then Validate, each `count` times in a row, same request shape. The
    time in the app (X-App-Ms, bench/app.py: from the WSGI call to the status line) and the client's
    wall time; the CPU time the app's workers and the SMTP peer spent per request (the
    peer runs on the same cores: its share of the wall time is not the app's)."""
    watch = {"app": app_pids, "peer": [peer_pid]}
    floor = timed_posts(f"{base}/bench-floor/{slug}", fields, cookies, csrf, count, watch=watch)
    validate = timed_posts(f"{base}/p/{slug}/servers/{server_id}/validate", fields, cookies, csrf, count,
                           expect="All checks passed", watch=watch)
    return {"floor_post": floor, "validate": validate,
            "validate_above_floor_p50_ms": round(validate["p50_ms"] - floor["p50_ms"], 2),
            "all_passed": validate["not_as_expected"] == 0 and validate["statuses"] == {200: count}}


# ---------------------------------------------------------------- goal 5

class SilentListener:
    """Accepts TCP connections on 127.0.0.1 and never says a word (no SMTP greeting)."""

    def __init__(self):
        self.sock = socket.create_server((harness.HOST, 0), backlog=64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True, name="silent-listener")
        self.thread.start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                self.held.append(self.sock.accept()[0])
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return

    def close(self):
        self.stopping.set()
        self.thread.join(2)
        for connection in self.held:
            connection.close()
        self.sock.close()


def page_while_checks_hang(base: str, slug: str, page_id: int, silent_id: int, silent_fields: list, cookies,
                           csrf: str, listener: SilentListener, checks: int, loaders: int, timeout: int,
                           give_up: float) -> dict:
    """Goal 5: `loaders` threads keep loading the server page (a new connection each time, so every
    worker gets some); then `checks` Validates of the silent server start at once, each on its own
    connection. Reports how the page fared while they were out, and how each was answered."""
    page_url = f"{base}/p/{slug}/servers/{page_id}/edit"
    validate_url = f"{base}/p/{slug}/servers/{silent_id}/validate"
    samples: list[tuple[float, float, int]] = []  # page loads: (start, end, status)
    answers: list[dict] = []
    stop = threading.Event()
    go = threading.Barrier(checks + 1)

    def load_page():
        http = requests.Session()
        http.headers.update({"User-Agent": USER_AGENT, "Connection": "close"})
        http.cookies.update(cookies)
        while not stop.is_set():
            start = time.monotonic()
            try:
                status = http.get(page_url, timeout=give_up, allow_redirects=False).status_code
            except requests.RequestException:
                status = 0
            samples.append((start, time.monotonic(), status))

    def validate():
        http = requests.Session()
        http.headers.update({"User-Agent": USER_AGENT, **HTMX, "X-CSRFToken": csrf})
        http.cookies.update(cookies)
        go.wait()
        start = time.monotonic()
        try:
            response = http.post(validate_url, data=silent_fields, timeout=give_up)
            answer = {"status": response.status_code, "summary": report_summary(response.text),
                      "retry_after": response.headers.get("Retry-After")}
        except requests.RequestException as error:
            answer = {"status": None, "summary": f"no answer within {give_up:g}s ({type(error).__name__})"}
        answers.append({**answer, "start": start, "end": time.monotonic()})

    loaders_threads = [threading.Thread(target=load_page, daemon=True) for _ in range(loaders)]
    check_threads = [threading.Thread(target=validate, daemon=True) for _ in range(checks)]
    try:
        for thread in loaders_threads + check_threads:
            thread.start()
        time.sleep(1.0)
        go.wait()
        started = time.monotonic()
        for thread in check_threads:
            thread.join(give_up + 5)
        ended = max([a["end"] for a in answers] + [started])
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in loaders_threads:
            thread.join(give_up + 5)

    before = [e - s for s, e, _ in samples if e < started]
    during = [(e - s, st) for s, e, st in samples if s < ended and e > started]
    latencies = [lat for lat, _ in during]
    finishes = sorted([started, ended] + [e for _, e, _ in samples if started <= e <= ended])
    longest_gap = max(b - a for a, b in zip(finishes, finishes[1:]))
    kinds = collections.Counter(f"{a['status']} {_kind(a['summary'], timeout)}" for a in answers)
    elapsed = sorted(a["end"] - a["start"] for a in answers)
    return {
        "checks": checks, "page_loaders": loaders, "timeout_s": timeout, "client_gives_up_s": give_up,
        "window_s": round(ended - started, 2),
        "validate_answers": dict(kinds.most_common()),
        "validate_elapsed_s": {"min": round(elapsed[0], 2), "p50": round(statistics.median(elapsed), 2),
                               "max": round(elapsed[-1], 2)} if elapsed else None,
        "validate_examples": sorted({a["summary"] for a in answers})[:4],
        "connections_accepted_by_listener": len(listener.held),
        "page_before_p50_ms": harness.ms(statistics.median(before)) if before else None,
        "page_during_count": len(during),
        "page_during_ok": sum(1 for _, st in during if st == 200),
        "page_during_p50_ms": harness.ms(statistics.median(latencies)) if latencies else None,
        "page_during_max_ms": harness.ms(max(latencies)) if latencies else None,
        "page_longest_gap_ms": harness.ms(longest_gap),
    }


def _kind(summary: str, timeout: int) -> str:
    """A short name for what a Validate answer said."""
    text = summary.lower()
    if "busy" in text or "try again" in text:
        return "busy"
    if "no answer within" in text and "s (" in text:
        return "client gave up"
    if "validation failed" in text:
        return "failed: " + re.split(r"”[.:]", summary, maxsplit=1)[-1].strip()[:60]
    if "all checks passed" in text:
        return "passed"
    return summary[:60] or "(empty)"
