"""Goals 1 and 2: requests/s of the server page and the section swap against the floor (and hello),
interleaved rounds; the swap's bytes on the wire against the page's."""
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import harness
from mailroom import USER_AGENT

BENCH = Path(__file__).resolve().parent


@dataclass
class Target:
    name: str
    url: str
    headers: dict = field(default_factory=dict)
    script: Path | None = None
    env: dict = field(default_factory=dict)
    master: int = 0  # the gunicorn serving it: its workers' CPU time is watched during each run
    expected_bytes: int = 0  # the body's size outside wrk (bench/run.py checks it before the rounds)

    def wrk_args(self) -> dict:
        return dict(url=self.url, headers=self.headers, script=self.script, env=self.env, master=self.master)


def targets(hello_url: str, base: str, slug: str, server_id: int, cookie: str, swap_fields: list,
            csrf: str, hello_master: int = 0, master: int = 0) -> list[Target]:
    """hello, then each Mailroom target right after its floor (floor GET, page, floor POST, swap), so a
    ratio compares two runs next to each other. The floor POST is the very request the swap is (same
    body and headers, bench/section_swap.lua), to another view."""
    plain = {"User-Agent": USER_AGENT, "Cookie": cookie}
    post_env = {"BENCH_BODY": urlencode(swap_fields), "BENCH_COOKIE": cookie, "BENCH_CSRF": csrf,
                "BENCH_UA": USER_AGENT}
    swap_script = BENCH / "section_swap.lua"
    floor = f"{base}/bench-floor/{slug}"
    return [
        Target("hello GET /", f"{hello_url}/", master=hello_master),
        Target("floor GET", floor, plain, master=master),
        Target("server page GET", f"{base}/p/{slug}/servers/{server_id}/edit", plain, master=master),
        Target("floor POST", floor, script=swap_script, env=post_env, master=master),
        Target("section swap POST", f"{base}/p/{slug}/servers/{server_id}/section/tls", script=swap_script,
               env=post_env, master=master),
    ]


def swap_headers(target: Target) -> dict:
    """The headers section_swap.lua sends, for a check of the same request outside wrk."""
    env = target.env
    return {"User-Agent": env["BENCH_UA"], "Cookie": env["BENCH_COOKIE"], "X-CSRFToken": env["BENCH_CSRF"],
            "Content-Type": "application/x-www-form-urlencoded", "HX-Request": "true", "HX-Trigger": "security",
            "HX-Trigger-Name": "security", "HX-Target": "port-group"}


def interleaved(wrk: harness.Wrk, all_targets: list[Target], rounds: int, duration: int, warmup: int,
                notes: list, say=print, retries: int = 2, retry_budget: int = 6) -> tuple[list[dict], dict]:
    """Every target for `duration` s, one after the other, `rounds` times, after a warm-up of each.

    With one listening socket shared by the workers, wrk's 16 kept-alive connections sometimes
    all land on one worker (goal 4): that run then measures one core, not the app. Such a run
    (one worker did more than LOPSIDED of the CPU work) is noted and measured again with new
    connections, up to `retries` times (`retry_budget` in all); the figures keep the last run,
    and every run is in the raw output."""
    say(f"wrk: {warmup}s warm-up per target")
    for target in all_targets:
        wrk.run(duration=warmup, **target.wrk_args())
    figures, raw = [], {t.name: [] for t in all_targets}
    for number in range(1, rounds + 1):
        figures.append({})
        for target in all_targets:
            say(f"wrk: round {number}/{rounds}: {target.name} ({duration}s)")
            lopsided = []
            while True:
                result, output = wrk.run(duration=duration, **target.wrk_args())
                raw[target.name].append(output)
                if (result.get("busiest_cpu_share") or 0) <= LOPSIDED:
                    break
                lopsided.append({k: result[k] for k in ("requests_per_s", "worker_cpu_s", "busiest_cpu_share")})
                if len(lopsided) > retries or retry_budget <= 0:
                    break
                retry_budget -= 1
                say(f"     one worker did {result['busiest_cpu_share']:.0%} of the work: measured again")
            if lopsided:
                result["lopsided_runs"] = lopsided
                rates = ", ".join(f"{r['requests_per_s']:.0f}" for r in lopsided)
                kept = "kept the last, lopsided too" if lopsided[-1]["busiest_cpu_share"] == \
                    result["busiest_cpu_share"] else "kept the balanced run"
                notes.append(f"{target.name}, round {number}: {len(lopsided)} run(s) where one worker did over "
                             f"{LOPSIDED:.0%} of the work ({rates} req/s); {kept}")
            figures[-1][target.name] = result
            if result["non_2xx_3xx"] or any(result["socket_errors"].values()):
                notes.append(f"{target.name}, round {number}: {result['non_2xx_3xx']} non-2xx/3xx, "
                             f"socket errors {result['socket_errors']}")
    return figures, raw


LOPSIDED = 0.8  # a round where one worker did more than this share of the CPU work is noted

RATIOS = {  # name: (target, base)
    "page / floor GET": ("server page GET", "floor GET"),
    "swap / floor POST": ("section swap POST", "floor POST"),
    "floor GET / hello": ("floor GET", "hello GET /"),
    "floor POST / hello": ("floor POST", "hello GET /"),
    "page / hello": ("server page GET", "hello GET /"),
    "swap / hello": ("section swap POST", "hello GET /"),
}


def ratios(rounds: list[dict]) -> dict:
    return {label: harness.ratio(rounds, target, base) for label, (target, base) in RATIOS.items()}


# ---------------------------------------------------------------- goal 2: bytes on the wire

def raw_exchange(target: Target, method: str, body: str = "", leave_out: tuple[str, ...] = ()) -> dict:
    """Send one request over a plain socket and count what comes back, status line, headers and
    body, byte for byte as gunicorn sent it. `leave_out` names request headers not to send."""
    parts = urlsplit(target.url)
    headers = {"Host": parts.netloc, **(swap_headers(target) if method == "POST" else target.headers)}
    headers = {k: v for k, v in headers.items() if k not in leave_out}
    if method == "POST":
        headers["Content-Length"] = str(len(body.encode()))
    request = f"{method} {parts.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request.encode() + b"\r\n" + body.encode())
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"{target.name}: the connection closed before the headers ended")
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        length = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
        if not length:
            raise RuntimeError(f"{target.name}: no Content-Length in the answer:\n{head.decode(errors='replace')}")
        while len(rest) < int(length.group(1)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    status = int(head.split(b" ", 2)[1])
    return {"status": status, "header_bytes": len(head) + 4, "body_bytes": len(rest),
            "total_bytes": len(head) + 4 + len(rest), "headers": head.decode("latin-1").split("\r\n")[1:]}


def wire_sizes(page: Target, swap: Target, throughput: dict) -> dict:
    """Goal 2. The raw socket counts are the measure; wrk's bytes read per answer is the cross-check
    (it is what wrk received under load, rounded by wrk's own unit)."""
    body = swap.env["BENCH_BODY"]
    page_bytes = [raw_exchange(page, "GET") for _ in range(3)]
    swap_bytes = [raw_exchange(swap, "POST", body) for _ in range(3)]
    for name, answers in (("page", page_bytes), ("swap", swap_bytes)):
        if any(a["status"] != 200 for a in answers):
            raise RuntimeError(f"{name} over a raw socket answered {[a['status'] for a in answers]}")
    p, s = page_bytes[-1], swap_bytes[-1]
    wrk_page = throughput["server page GET"]["bytes_per_response"]
    wrk_swap = throughput["section swap POST"]["bytes_per_response"]
    return {
        "method": "raw socket: one request, every byte of the answer counted (status line, headers, body)",
        "page": {k: p[k] for k in ("header_bytes", "body_bytes", "total_bytes")},
        "swap": {k: s[k] for k in ("header_bytes", "body_bytes", "total_bytes")},
        "swap_over_page": round(s["total_bytes"] / p["total_bytes"], 4),
        "swap_over_page_body_only": round(s["body_bytes"] / p["body_bytes"], 4),
        "sizes_stable": len({a["total_bytes"] for a in page_bytes}) == 1 and
                        len({a["total_bytes"] for a in swap_bytes}) == 1,
        "swap_headers": s["headers"],
        "wrk_bytes_per_answer": {"page": wrk_page, "swap": wrk_swap,
                                 "swap_over_page": round(wrk_swap / wrk_page, 4) if wrk_page else None},
    }

