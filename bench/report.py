"""The table bench/run.py prints at the end (the JSON in bench/results/ has everything)."""


def print_report(record: dict) -> None:
    machine, settings = record["machine"], record["settings"]
    load = lambda values: " ".join(f"{v:.2f}" for v in values)  # noqa: E731
    print(f"\n{record['date']}  commit {record['code']['commit']}  {machine['cpus']} CPUs  "
          f"load {load(machine['loadavg_at_start'])} at start, {load(machine['loadavg_at_end'])} at the end")
    for name, options in settings["gunicorn"].items():
        mark = "  <- goals 1-3" if name == settings["goals_1_3_under"] else ""
        print(f"gunicorn ({name}): {' '.join(options)}{mark}")
    print(f"wrk {settings['wrk']}")

    print("\nGoal 1 - throughput")
    print(f"  {'target':<20}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'bytes/answer':>14}   busiest worker's CPU share")
    for name, r in record["throughput"].items():
        shares = " ".join(f"{x:.0%}" for x in r["busiest_cpu_share_rounds"])
        print(f"  {name:<20}{r['requests_per_s']:>9.1f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['bytes_per_response']:>14}   {shares}")
    print(f"\n  {'req/s ratio':<22}{'median':>7}   {'per round':<28} p50 ×")
    for label, ratio in record["ratios"].items():
        rounds = " ".join(f"{x:.3f}" for x in ratio["requests_per_s_rounds"])
        print(f"  {label:<22}{ratio['requests_per_s']:>7.3f}   {rounds:<28} {ratio['p50']:.2f}{_goal(record, label)}")

    wire = record["wire"]
    print(f"\nGoal 2 - bytes on the wire (raw socket): page {wire['page']['total_bytes']} B "
          f"(headers {wire['page']['header_bytes']}), swap {wire['swap']['total_bytes']} B "
          f"(headers {wire['swap']['header_bytes']}): {wire['swap_over_page']:.3f} of the page"
          f"{_goal(record, 'swap bytes / page bytes')}")
    w = wire["wrk_bytes_per_answer"]
    print(f"  wrk's bytes read per answer: page {w['page']}, swap {w['swap']} -> {w['swap_over_page']}")

    v = record["validate"]
    f, c = v["floor_post"], v["validate"]
    print(f"\nGoal 3 - Validate against the STARTTLS + AUTH peer, {c['n']} in a row, in the app: "
          f"p50 {c.get('in_app_p50_ms')} ms, p90 {c.get('in_app_p90_ms')} ms, max {c.get('in_app_max_ms')} ms"
          f"{_goal(record, 'validate p50 ms')}")
    print(f"  as the client sees it: p50 {c['p50_ms']} ms, p90 {c['p90_ms']} ms, max {c['max_ms']} ms; the floor POST "
          f"in the app: p50 {f.get('in_app_p50_ms')} ms")
    passed = "every answer said All checks passed" if v["all_passed"] else \
        f"NOT all passed: {c['statuses']} {c['first_unexpected']}"
    print(f"  floor POST the same way: p50 {f['p50_ms']} ms, p90 {f['p90_ms']} ms -> Validate above the floor: "
          f"{v['validate_above_floor_p50_ms']} ms at p50; {passed}")
    print(f"  CPU per request: Validate {c['app_cpu_ms_per_request']} ms in the app's workers and "
          f"{c['peer_cpu_ms_per_request']} ms in the SMTP peer; floor POST {f['app_cpu_ms_per_request']} ms")

    print("\nGoal 4 - requests per gunicorn worker under wrk's kept-alive connections (floor GET)")
    for name, s in record["spread"]["by_setting"].items():
        runs = "  ".join("/".join(str(n) for n in r["by_worker"]) for r in s["runs"])
        print(f"  {name:<9} {s['workers']} workers: {runs}   busiest worker {s['busiest_share_mean']:.0%} of "
              f"the answers on average, {s['runs_on_one_worker']}/{len(s['runs'])} runs on one worker only, "
              f"{s['requests_per_s_mean']:.0f} req/s")
    s = record["spread"]["goal_1_runs"]
    print(f"  goal 1's own wrk runs ({s['setting']} settings): {s['lopsided']} of {s['runs']} had one worker doing "
          f"over {s['threshold']:.0%} of the work (the workers' CPU time)")

    print("\nGoal 5 - the server page while Validates hang on a silent port")
    for name, h in record["hang"].items():
        answers = ", ".join(f"{n} × {kind}" for kind, n in h["validate_answers"].items())
        e = h["validate_elapsed_s"] or {}
        print(f"  {name}: {h['checks']} Validates (timeout {h['timeout_s']}s): {answers}; "
              f"answered after {e.get('min')}-{e.get('max')} s (p50 {e.get('p50')})")
        print(f"    page: {h['page_during_count']} answers ({h['page_during_ok']} × 200) during {h['window_s']} s, "
              f"p50 {h['page_during_p50_ms']} ms, max {h['page_during_max_ms']} ms, longest gap "
              f"{h['page_longest_gap_ms']} ms (p50 before: {h['page_before_p50_ms']} ms)")
    for note in record["notes"]:
        print(f"note: {note}")
    print(f"wall time {record['wall_s']}s")


def _goal(record: dict, name: str) -> str:
    goal = record["goals"].get(name)
    if not goal:
        return ""
    lopsided = goal.get("lopsided_rounds")
    caveat = f" (round {', '.join(map(str, lopsided))}: one worker did most of the work)" if lopsided else ""
    return f"   goal {goal['goal']}: {'met' if goal['met'] else 'NOT MET'}{caveat}"
