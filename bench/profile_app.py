"""Where the time goes: the server page, the section swap, Validate, the sample mail and the floor,
in-process, next to smtplib doing Validate's steps and sending one mail to the same peer.

    .venv/bin/python bench/profile_app.py [N]        (N requests of each, default 200; Validate N/4)

One thread, Flask's test client, no gunicorn and no network between client and app (Validate
still talks to the STARTTLS + AUTH peer of bench/smtp_peer.py --accept over loopback, and its
Deliverability section to a DNS server in this process on 127.0.0.1 that knows no name). A throwaway
instance is set up through the CLI as bench/run.py does. For each request kind it prints the
mean time per request without the profiler, then under cProfile the time by area (the package
each function's own time is spent in) and the functions with the most cumulative time.
cProfile adds a cost to every Python call, so its shares lean towards call-heavy code; the
times without the profiler are the real ones. Not part of `make bench` (it takes about 30 s).
"""
import cProfile
import json
import os
import pstats
import re
import shutil
import smtplib
import ssl
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlencode

import harness
import mailroom

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
AREAS = [  # (area, pattern in the file path or function name), first match wins
    ("webapp", "/webapp/"), ("bench", "/bench/"), ("jinja2", "/jinja2/"), ("markupsafe", "/markupsafe/"),
    ("wtforms", "/wtforms/"), ("flask_wtf", "/flask_wtf/"), ("flask_login", "/flask_login/"),
    ("htmx_flask", "/htmx_flask/"), ("sqlmodel", "/sqlmodel/"), ("sqlalchemy", "/sqlalchemy/"),
    ("werkzeug", "/werkzeug/"), ("flask", "/flask/"), ("itsdangerous", "/itsdangerous/"),
    ("cryptography", "/cryptography/"), ("sqlite3", "sqlite3"), ("ssl", "ssl"), ("socket", "socket"),
    ("smtplib", "smtplib"), ("email", "/email/"), ("stdlib", "/lib/python3"), ("builtins", "~"),
]


def area(filename: str, function: str) -> str:
    for name, pattern in AREAS:
        if pattern in filename or (filename == "~" and pattern in function):
            return name
    return "other"


def profile(name: str, call, count: int, top: int = int(os.environ.get("BENCH_PROFILE_TOP", 12))) -> dict:
    call()  # caches warm
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        call()
    wall, cpu = (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        call()
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(row[2] for row in stats.values())  # own time of every function: the whole
    by_area = defaultdict(float)
    for (filename, _, function), (_, _, own, _, _) in stats.items():
        by_area[area(filename, function)] += own

    def rows(order: int, keep) -> list[dict]:
        ranked = sorted(((row[order], key) for key, row in stats.items() if keep(key)), reverse=True)[:top]
        return [{"share": round(t / total, 3), "function": function,
                 "where": f"{re.sub(r'.*/(site-packages|work/main)/', '', filename)}:{line}"}
                for t, (filename, line, function) in ranked]

    own_app = rows(3, lambda key: "/webapp/" in key[0] or "/bench/" in key[0])  # cumulative, the app's own code
    own_leaf = rows(2, lambda key: True)  # own time, anywhere
    print(f"\n== {name}: {wall * 1e3:.2f} ms per request (CPU {cpu * 1e3:.2f} ms) without the profiler, "
          f"{count} requests")
    print("   own time by area: " + ", ".join(f"{a} {t / total:.0%}" for a, t in
                                                 sorted(by_area.items(), key=lambda x: -x[1]) if t / total >= 0.02))
    print("   the app's functions, cumulative share of the request under cProfile:")
    for row in own_app:
        print(f"   {row['share']:6.1%}  {row['function']:<34} {row['where']}")
    print("   the most own time (anywhere):")
    for row in own_leaf[:8]:
        print(f"   {row['share']:6.1%}  {row['function']:<34} {row['where']}")
    return {"ms_per_request": round(wall * 1e3, 3), "cpu_ms_per_request": round(cpu * 1e3, 3),
            "areas": {a: round(t / total, 3) for a, t in sorted(by_area.items(), key=lambda x: -x[1])},
            "app_cumulative": own_app, "own_time": own_leaf}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    work = Path(tempfile.mkdtemp(prefix="mailroom-profile-"))
    processes = harness.Processes()
    sys.path.insert(0, str(ROOT))
    from tests.peers.dns import DnsPeer

    dns = DnsPeer()
    try:
        env = {**mailroom.env_for(work / "instance"), "MAILROOM_LOG_LEVEL": "WARNING",
               "MAILROOM_DNS_RESOLVER": dns.address, "MAILROOM_SAMPLE_LIMIT_PER_USER": "100000 per minute"}
        mailroom.set_up_instance(env)
        mailroom.allow_loopback(env)
        log = work / "smtp-peer.log"
        peer_proc = processes.start([sys.executable, str(BENCH / "smtp_peer.py"), str(work), "--accept"], log)
        harness.wait_for_file(work / "peer.json", peer_proc, log)
        peer = json.loads((work / "peer.json").read_text())
        os.environ.update({k: v for k, v in env.items() if k.startswith("MAILROOM_")})
        from bench.app import create_app

        app = create_app()
        client = app.test_client()
        headers = {"User-Agent": mailroom.USER_AGENT}

        def token(path):
            return mailroom.token_in(client.get(path, headers=headers).get_data(as_text=True))

        client.post("/login", headers=headers, data={"email": mailroom.EMAIL, "password": mailroom.FIRST_PASSWORD,
                                                      "csrf_token": token("/login")})
        client.post("/account/password", headers=headers, data={
            "current": mailroom.FIRST_PASSWORD, "new": mailroom.PASSWORD, "confirm": mailroom.PASSWORD,
            "csrf_token": token("/account/password")})

        def create(fields):
            response = client.post(f"/p/{mailroom.SLUG}/servers/new", headers=headers,
                                   data={**fields, "csrf_token": token(f"/p/{mailroom.SLUG}/servers/new")})
            assert response.status_code == 303, response.get_data(as_text=True)[:1000]
            listing = client.get(f"/p/{mailroom.SLUG}/servers/", headers=headers).get_data(as_text=True)
            return max(int(i) for i in re.findall(r"/servers/(\d+)/edit", listing))

        relay = create(mailroom.RELAY_FIELDS)
        peer_id = create({**mailroom.RELAY_FIELDS, "host": "127.0.0.1", "port": str(peer["port"]),
                          "ca_cert": peer["ca_pem"], "auth_type": "basic", "username": peer["username"],
                          "password": peer["password"], "confirm_password": peer["password"]})
        page_path = f"/p/{mailroom.SLUG}/servers/{relay}/edit"
        page = client.get(page_path, headers=headers).get_data(as_text=True)
        csrf = mailroom.token_in(page)
        swap_body = urlencode(mailroom.with_values(mailroom.form_fields(page), security="tls"))
        htmx = {**headers, "HX-Request": "true", "X-CSRFToken": csrf,
                "Content-Type": "application/x-www-form-urlencoded"}
        swap_headers = {**htmx, "HX-Trigger": "security", "HX-Trigger-Name": "security", "HX-Target": "port-group"}
        peer_page = client.get(f"/p/{mailroom.SLUG}/servers/{peer_id}/edit", headers=headers).get_data(as_text=True)
        validate_body = urlencode(mailroom.form_fields(peer_page))
        floor = f"/bench-floor/{mailroom.SLUG}"
        sample_path = f"/p/{mailroom.SLUG}/servers/{peer_id}/sample"
        sample_body = urlencode({"recipient": "someone@example.com", "csrf_token": token(sample_path)})

        def bare_smtp(send: bool) -> None:
            context = ssl.create_default_context(cadata=peer["ca_pem"])
            with smtplib.SMTP("127.0.0.1", peer["port"], local_hostname="bench.example", timeout=10) as smtp:
                smtp.ehlo()
                smtp.starttls(context=context)
                smtp.ehlo()
                smtp.login(peer["username"], peer["password"])
                if send:
                    smtp.sendmail("helpdesk@example.com", ["someone@example.com"],
                                  "From: helpdesk@example.com\r\nTo: someone@example.com\r\nSubject: sample\r\n\r\nA sample.\r\n")
                else:
                    smtp.mail("helpdesk@example.com")
                    smtp.rset()

        def expect(response, text=None):
            body = response.get_data(as_text=True)
            assert response.status_code == 200 and (text is None or text in body), (response.status_code, body[:800])

        kinds = {
            "floor GET": (lambda: expect(client.get(floor, headers=headers)), count),
            "floor POST": (lambda: expect(client.post(floor, headers=swap_headers, data=swap_body)), count),
            "server page GET": (lambda: expect(client.get(page_path, headers=headers), "server-form"), count),
            "section swap POST": (lambda: expect(client.post(f"/p/{mailroom.SLUG}/servers/{relay}/section/tls",
                                                             headers=swap_headers, data=swap_body),
                                                 'id="port-group"'), count),
            "Validate POST": (lambda: expect(client.post(f"/p/{mailroom.SLUG}/servers/{peer_id}/validate",
                                                         headers={**htmx, "HX-Target": "report"},
                                                         data=validate_body), "All checks passed"),
                              max(20, count // 4)),
            "smtplib, Validate's steps": (lambda: bare_smtp(False), max(20, count // 4)),
            "sample mail POST": (lambda: expect(client.post(sample_path, headers={**htmx, "HX-Target": "sample"},
                                                            data=sample_body), "accepted"), max(20, count // 4)),
            "smtplib, one mail": (lambda: bare_smtp(True), max(20, count // 4)),
        }
        results = {name: profile(name, call, n) for name, (call, n) in kinds.items()}
        out = BENCH / "results" / f"profile-{time.strftime('%Y%m%dT%H%M%S')}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nWritten to {out.relative_to(ROOT)}")
    finally:
        processes.stop_all()
        dns.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
