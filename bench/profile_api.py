"""Where the API's enqueue spends its time above the API floor, in-process.

    .venv/bin/python bench/profile_api.py [N]        (N requests of each, default 300)

One thread, Flask's test client (no gunicorn, no network), on a throwaway SQLite instance set up
through the CLI as bench/delivery.py sets it up (one server made through the real form, an API
key made with `apikeys.create`), with bench/delivery.py's body. For the floor
(`POST /api/v1/bench-floor/<slug>`) and the enqueue (`POST /api/v1/portals/<slug>/messages`) it
prints the time per request without the profiler, then bench/profile_app.py's breakdown under
cProfile. Not part of `make bench`.
"""
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import mailroom
from delivery import API_BODY, RECIPIENT, SENDER
from profile_app import profile

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def set_up(work: Path):
    """A throwaway instance with the bench's server and API key; the test client and the two POSTs."""
    env = {**mailroom.env_for(work / "instance"), "MAILROOM_LOG_LEVEL": "WARNING",
           "MAILROOM_API_LIMIT_PER_KEY": "100000000 per minute"}
    mailroom.set_up_instance(env)
    os.environ.update({k: v for k, v in env.items() if k.startswith("MAILROOM_")})
    sys.path.insert(0, str(ROOT))
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
    response = client.post(f"/p/{mailroom.SLUG}/servers/new", headers=headers, data={
        **mailroom.RELAY_FIELDS, "host": "127.0.0.1", "port": "2525", "security": "none",
        "from_address": SENDER, "csrf_token": token(f"/p/{mailroom.SLUG}/servers/new")})
    assert response.status_code == 303, response.get_data(as_text=True)[:1000]
    with app.app_context():
        from sqlmodel import select

        from webapp import apikeys, db
        from webapp.audit import Actor
        from webapp.models import Portal
        portal = db.session().exec(select(Portal).where(Portal.slug == mailroom.SLUG)).one()
        _, key = apikeys.create(Actor("bench"), portal, "Bench")
    api = {**headers, "Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def post(path):
        def call():
            answer = client.post(path, headers=api, data=API_BODY)
            assert answer.status_code == 202, (answer.status_code, answer.get_data(as_text=True)[:800])
        return call

    return {"api floor": post(f"/api/v1/bench-floor/{mailroom.SLUG}"),
            "api enqueue": post(f"/api/v1/portals/{mailroom.SLUG}/messages")}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    work = Path(tempfile.mkdtemp(prefix="mailroom-profile-api-"))
    try:
        kinds = set_up(work)
        results = {name: profile(name, call, count) for name, call in kinds.items()}
        floor, enqueue = results["api floor"]["ms_per_request"], results["api enqueue"]["ms_per_request"]
        print(f"\nfloor {floor:.2f} ms, enqueue {enqueue:.2f} ms per request: enqueue ÷ floor in requests/s "
              f"{floor / enqueue:.3f} (one request at a time; {RECIPIENT})")
        out = BENCH / "results" / f"profile-api-{time.strftime('%Y%m%dT%H%M%S')}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"Written to {out.relative_to(ROOT)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
