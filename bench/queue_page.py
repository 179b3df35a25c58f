"""The Mail Queue page with 100,000 messages against the same page with 10 (issue 12's goal: p50 ≤ 3×).

    .venv/bin/python bench/queue_page.py          # about a minute; BENCH_QUEUE_ROUNDS, BENCH_QUEUE_REQUESTS

Two throwaway instances (SQLite in a temporary folder, migrated as `make run` does), each with one
portal, two servers and a signed-in admin; one outbox holds 10 messages, the other 100,000 (arrived
over 30 days, 90 % sent, 4 % queued, 4 % failed, 2 % held; one attempt each, so about 3,300 attempts
fall in the chart's last 24 hours), written with the app's models in bulk. Each request is the app
in-process (Flask's test client: the whole request, session and CSRF included, no network), timed
with perf_counter. In each round, for each view of the large instance (the page; filters, a deep
page, searches), REQUESTS requests alternate one by one with the small instance's plain page, so
that load from elsewhere falls on both alike; the round's ratio is the large p50 ÷ the small p50,
and the headline is the median of the rounds' ratios (each round's follows in brackets). Nothing
is asserted: the figures go to bench/README.md by hand.
"""
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from webapp import create_app, db  # noqa: E402
from webapp.models import (Credential, DeliveryAttempt, MailServer, Membership, OutboundMail, Portal, Role,  # noqa: E402
                           User)
from webapp.security import hash_password  # noqa: E402

PASSWORD = "bench password 1"
ROUNDS = int(os.environ.get("BENCH_QUEUE_ROUNDS", 5))
REQUESTS = int(os.environ.get("BENCH_QUEUE_REQUESTS", 30))
STATES = ["sent"] * 90 + ["queued"] * 4 + ["failed"] * 4 + ["held"] * 2
OUTCOME = {"sent": "sent", "queued": "deferred", "failed": "failed", "held": "held"}


def instance(folder: Path, messages: int):
    app = create_app({"DATABASE_URL": f"sqlite:///{folder / 'mailroom.sqlite3'}", "SECRET_KEY": "bench",
                      "SECRET_KEYS": Fernet.generate_key().decode(), "AUTO_MIGRATE": True, "LOG_LEVEL": "WARNING"},
                     instance_path=str(folder))
    now = datetime.now(UTC)
    with app.app_context():
        session = db.session()
        user = User(email="admin@bench.example", password_hash=hash_password(PASSWORD))
        portal = Portal(slug="bench", name="Bench")
        session.add_all([user, portal])
        session.flush()
        session.add(Membership(user_id=user.id, portal_id=portal.id, role=Role.ADMIN))
        servers = []
        for position, name in enumerate(("Office relay", "Backup relay"), start=1):
            server = MailServer(portal_id=portal.id, position=position, description=name, settings={"host": "127.0.0.1"})
            server.credential = Credential()
            servers.append(server)
        session.add_all(servers)
        session.commit()
        rng = random.Random(7)
        for first in range(0, messages, 5000):
            rows, attempts = [], []
            for i in range(first, min(messages, first + 5000)):
                arrived = now - timedelta(days=30) + timedelta(seconds=i * 30 * 86400 / messages)
                state = rng.choice(STATES)
                rows.append(dict(
                    portal_id=portal.id, state=state, source="api", submitted_by="key “Help desk”",
                    client_address="192.0.2.7", request_hash="", message_id=f"<{i}@bench.example>",
                    mail_from="helpdesk@bench.example", subject=f"Ticket #{i} was updated",
                    recipients=[{"address": f"user{i % 5000}@example.com", "state": "pending", "code": None,
                                 "reply": ""}],
                    to_summary=f"user{i % 5000}@example.com", size=2048, raw=b"x" * 2048, attempts=1,
                    created_at=arrived, updated_at=arrived, next_attempt_at=arrived + timedelta(minutes=10),
                    last_attempt_at=arrived, server_id=servers[i % 2].id, lease_owner="",
                    last_error="421 4.7.0 Try again later" if state != "sent" else ""))
            session.execute(insert(OutboundMail), rows)
            ids = list(session.execute(select(OutboundMail.id).order_by(OutboundMail.id.desc()).limit(len(rows))))
            for (mail_id,), row in zip(reversed(ids), rows):
                attempts.append(dict(mail_id=mail_id, at=row["last_attempt_at"], server_id=row["server_id"],
                                     server_label="Office relay", outcome=OUTCOME[row["state"]], reply="",
                                     elapsed=0.2, worker=""))
            session.execute(insert(DeliveryAttempt), attempts)
            session.commit()
    client = app.test_client()
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', client.get("/login").text).group(1)
    answer = client.post("/login", data={"email": "admin@bench.example", "password": PASSWORD, "csrf_token": token})
    assert answer.status_code == 303, answer.text
    return app, client


def timed(client, url: str) -> float:
    started = time.perf_counter()
    answer = client.get(url)
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise SystemExit(f"{url}: {answer.status_code}\n{answer.text[:2000]}")
    return elapsed * 1000


def paired_p50(small, large, url: str, base: str) -> tuple[float, float]:
    """p50 of `url` on the large instance and of `base` on the small one, request by request in
    turn, so that load from elsewhere falls on both alike."""
    pairs = [(timed(small, base), timed(large, url)) for _ in range(REQUESTS)]
    return statistics.median(b for b, _ in pairs), statistics.median(ms for _, ms in pairs)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mailroom-queue-bench-") as folder:
        started = time.perf_counter()
        _, small = instance(Path(folder) / "small", 10)
        big_app, large = instance(Path(folder) / "large", 100_000)
        with big_app.app_context():
            some_server = db.session().exec(select(MailServer.id)).first()[0]
        print(f"set up in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        page = "/p/bench/queue/"
        since = (datetime.now(UTC) - timedelta(days=20)).strftime("%Y-%m-%dT%H:%M")
        views = {
            "the page, 100,000 ÷ 10": page,
            "state=failed": page + "?state=failed",
            "server filter": page + f"?server={some_server}",
            "arrived in one day, 20 days ago": page + f"?since={since}&until=" + (
                datetime.now(UTC) - timedelta(days=19)).strftime("%Y-%m-%dT%H:%M"),
            "a deep page (id < 50,000)": page + "?page=%3Ei%3A50000",
            "recipient search": page + "?recipient=user4999%40example.com",
            "words in the subject": page + "?q=ticket+%2399999",
            "a later page of 200 rows": page + "?size=200&page=%3Ei%3A90000",
        }
        for client in (small, large):  # warm-up: templates compiled, caches filled
            for url in views.values():
                for _ in range(3):
                    timed(client, url)
        rounds = {name: [] for name in views}
        smalls = []
        for _ in range(ROUNDS):
            for name, url in views.items():
                base, large_ms = paired_p50(small, large, url, page)
                rounds[name].append((large_ms, base))
                smalls.append(base)
        print(f"small instance, the page: p50 {statistics.median(smalls):.2f} ms (rounds: "
              + " ".join(f"{v:.2f}" for v in smalls) + ")")
        figures = {}
        for name, pairs in rounds.items():
            ratios = [large_ms / base for large_ms, base in pairs]
            figures[name] = {"ratio": statistics.median(ratios), "rounds": ratios,
                             "large_p50_ms": statistics.median(ms for ms, _ in pairs)}
            print(f"{name:38s} p50 {figures[name]['large_p50_ms']:7.2f} ms   ratio {figures[name]['ratio']:.2f} "
                  f"({' '.join(f'{r:.2f}' for r in ratios)})")
        print(json.dumps({"small_p50_ms": statistics.median(smalls), "views": figures}, indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
