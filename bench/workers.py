"""Goal 4: does gunicorn spread kept-alive connections over every worker?

wrk opens its connections once and keeps them alive: each stays with the worker that
accepted it. Several short wrk runs (each a fresh set of connections) against the floor
GET, with bench/count_pids.lua counting the X-Worker-Pid of every answer, show how often
the workers share the load and how often one of them gets it all.
"""
import statistics
from pathlib import Path

import harness
from mailroom import USER_AGENT

SCRIPT = Path(__file__).resolve().parent / "count_pids.lua"


def spread(wrk: harness.Wrk, servers: dict[str, tuple[str, int]], cookie: str, runs: int,
           duration: float) -> dict:
    """servers: name -> (floor URL, gunicorn master pid). The runs alternate between the servers,
    so a burst of load from elsewhere hits them alike."""
    workers = {name: harness.worker_pids(master) for name, (_, master) in servers.items()}
    per_run = {name: [] for name in servers}
    for _ in range(runs):
        for name, (url, _) in servers.items():
            result, _ = wrk.run(url, duration, headers={"User-Agent": USER_AGENT, "Cookie": cookie},
                                script=SCRIPT)
            counts = result.get("requests_by_pid", {})
            total = sum(counts.values()) or 1
            per_run[name].append({
                "requests_per_s": result["requests_per_s"],
                "by_worker": [counts.get(str(pid), 0) for pid in workers[name]],
                "busiest_share": round(max(counts.values(), default=0) / total, 3),
                "workers_used": sum(1 for n in counts.values() if n),
                "not_from_a_worker": sum(n for pid, n in counts.items()
                                         if pid == "none" or int(pid) not in workers[name]),
            })
    return {name: _summary(len(workers[name]), runs_of) for name, runs_of in per_run.items()}


def _summary(workers: int, runs: list[dict]) -> dict:
    shares = [r["busiest_share"] for r in runs]
    return {
        "workers": workers,
        "runs": runs,
        "busiest_share_mean": round(statistics.fmean(shares), 3),
        "runs_on_one_worker": sum(1 for r in runs if r["workers_used"] == 1),
        "runs_on_every_worker": sum(1 for r in runs if r["workers_used"] == workers),
        "requests_per_s_mean": round(statistics.fmean(r["requests_per_s"] for r in runs), 1),
    }
