"""The HTTP API: every bad request gets a 4xx JSON error naming the field; a message is committed before
the 202; the Idempotency-Key; the key alone authorizes (no session, cookie, CSRF token or Origin
check); keys are rate-limited and their use is remembered without a write per request."""
import base64
import hashlib
import json
import re
import threading
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import redis
import requests
from sqlmodel import Session, select

from webapp import apikeys, create_app, db, outbox
from webapp.audit import Actor
from webapp.models import ApiKey, DeliveryAttempt, OutboundMail, utcnow

from .test_sessions import REDIS, redis_answers

URL = "/api/v1/portals/help/messages"
MESSAGE = {"to": ["ann@example.org"], "subject": "Hello", "text": "Hi Ann\n"}


def new_key(app, portal, name="Ticket system") -> str:
    with app.app_context():
        return apikeys.create(Actor("tests"), portal, name)[1]


@pytest.fixture
def key(app, make, portal):
    make.server(portal, from_address="helpdesk@example.com", sender_name="Help Desk")
    return new_key(app, portal)


@pytest.fixture
def api(app, key):
    """A client of the API with the portal's key: no cookie jar in use, no CSRF token."""
    http = app.test_client(use_cookies=False)

    def call(method="POST", url=URL, body=MESSAGE, headers=None, **kwargs):
        headers = {"Authorization": f"Bearer {key}", **(headers or {})}
        if method == "POST" and "data" not in kwargs:
            kwargs["json"] = body
        response = http.open(url, method=method, headers=headers, **kwargs)
        assert "Set-Cookie" not in response.headers, response.headers
        assert response.mimetype == "application/json", response.text
        return response
    return call


def error_of(response) -> tuple[int, str, str | None]:
    error = response.get_json()["error"]
    assert error["message"]
    return response.status_code, error["code"], error["field"]


# -- handing a message in -----------------------------------------------------------------------------

def test_a_message_is_committed_before_the_202_and_readable_by_its_location(api, migrated):
    response = api(body={**MESSAGE, "cc": ["Bob <bob@example.org>"], "bcc": ["hidden@example.org"],
                         "html": "<p>Hi Ann</p>", "reply_to": "support@example.com",
                         "headers": {"X-Ticket-Id": "42"},
                         "attachments": [{"filename": "report.pdf", "content_type": "application/pdf",
                                          "content": base64.b64encode(b"%PDF-1.7\x00").decode()}]})
    assert response.status_code == 202
    answer = response.get_json()
    with Session(migrated) as other:  # another connection: the row was committed when the 202 left
        stored = other.get(OutboundMail, answer["id"])
    assert stored is not None and stored.state == "queued" and stored.source == "api"
    assert stored.submitted_by == "Ticket system" and stored.client_address == "127.0.0.1"
    assert answer["status"] == "queued" and answer["message_id"] == stored.message_id
    assert [r["address"] for r in answer["recipients"]] == ["ann@example.org", "bob@example.org",
                                                            "hidden@example.org"]
    assert response.headers["Location"] == f"{URL}/{answer['id']}"
    message = message_from_bytes(stored.raw, policy=policy.default)
    assert message["From"] == "Help Desk <helpdesk@example.com>" and message["Reply-To"] == "support@example.com"
    assert message["X-Ticket-Id"] == "42" and message["Cc"] == "Bob <bob@example.org>"
    assert [a.get_filename() for a in message.iter_attachments()] == ["report.pdf"]
    again = api("GET", response.headers["Location"])
    assert again.status_code == 200 and again.get_json() == answer


def test_the_status_shows_attempts_and_each_recipients_outcome(app, api):
    answer = api().get_json()
    with app.app_context():
        mail = db.session().get(OutboundMail, answer["id"])
        mail.state, mail.recipients = "failed", [{**mail.recipients[0], "state": "failed", "code": 550,
                                                  "reply": "5.1.1 no such user"}]
        db.session().add(DeliveryAttempt(mail_id=mail.id, server_label="Relay", outcome="failed", code=550,
                                         reply="5.1.1 no such user"))
        db.session().commit()
    status = api("GET", f"{URL}/{answer['id']}").get_json()
    assert status["status"] == "failed" and status["next_attempt_at"] is None
    assert status["recipients"] == [{"address": "ann@example.org", "status": "failed", "code": 550,
                                     "reply": "5.1.1 no such user"}]
    assert [(a["server"], a["outcome"], a["code"], a["reply"]) for a in status["attempts"]] == [
        ("Relay", "failed", 550, "5.1.1 no such user")]


# -- every bad request names its field ----------------------------------------------------------------

@pytest.mark.parametrize("body, status, code, field", [
    ({**MESSAGE, "to": ["ann@example.org", "ann at example"]}, 422, "invalid", "to[1]"),
    ({**MESSAGE, "bcc": ["@example.org"]}, 422, "invalid", "bcc[0]"),
    ({**MESSAGE, "from": "ceo@example.com"}, 422, "invalid", "from"),
    ({**MESSAGE, "subject": "Hi\r\nBcc: victim@example.org"}, 422, "invalid", "subject"),
    ({**MESSAGE, "headers": {"X-Note": "a\nBcc: victim@example.org"}}, 422, "invalid", "headers.X-Note"),
    ({**MESSAGE, "headers": {"Bcc": "victim@example.org"}}, 422, "invalid", "headers"),
    ({**MESSAGE, "reply_to": "Support <support@>"}, 422, "invalid", "reply_to"),
    ({"subject": "s", "text": "t"}, 422, "invalid", "to"),
    ({"to": ["ann@example.org"], "subject": "s"}, 422, "invalid", "text"),
    ({**MESSAGE, "attachments": [{"filename": "a.pdf", "content": "%%%"}]}, 422, "invalid", "attachments[0].content"),
    ({**MESSAGE, "attachments": [{"content": "AAAA"}]}, 422, "invalid", "attachments[0].filename"),
    ({**MESSAGE, "to": "ann@example.org"}, 422, "invalid", "to"),
    ({**MESSAGE, "sender": "x@example.org"}, 422, "invalid", "sender"),
    (["ann@example.org"], 422, "invalid", None),
])
def test_a_bad_body_is_refused_naming_the_field(api, app, body, status, code, field):
    response = api(body=body)
    assert error_of(response) == (status, code, field)
    with app.app_context():
        assert db.session().exec(select(OutboundMail)).all() == []


def test_not_json_and_not_declared_json(api):
    assert error_of(api(data="{not json", content_type="application/json")) == (400, "invalid_json", None)
    assert error_of(api(data="to=ann@example.org", content_type="application/x-www-form-urlencoded")) == (
        415, "unsupported_media_type", "Content-Type")


def test_too_large_requests_and_attachments_are_413(api, app, key, live_url):
    app.config.update(API_REQUEST_MAX_BYTES=2000, ATTACHMENTS_MAX_BYTES=600)
    big = {**MESSAGE, "text": "x" * 3000}
    assert error_of(api(body=big)) == (413, "too_large", "body")
    files = {**MESSAGE, "attachments": [{"filename": "a.bin", "content": base64.b64encode(b"x" * 601).decode()}]}
    assert error_of(api(body=files)) == (413, "too_large", "attachments")
    chunked = requests.post(live_url + URL, data=iter([b'{"to": ["ann@example.org"], "text": "', b"x" * 3000, b'"}']),
                            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, timeout=30)
    assert "Content-Length" not in chunked.request.headers  # chunked: the limit holds while reading
    assert (chunked.status_code, chunked.json()["error"]["field"]) == (413, "body")


def test_keys_missing_unknown_revoked_or_of_another_portal_are_401(api, app, make, portal, key):
    for headers, code in [({"Authorization": ""}, "unauthorized"), ({"Authorization": "Basic YTpi"}, "unauthorized"),
                          ({"Authorization": "Bearer mr_unknown"}, "invalid_key"),
                          ({"Authorization": "Bearer " + key[:-1]}, "invalid_key")]:
        response = api(headers=headers)
        assert error_of(response) == (401, code, "Authorization")
        assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")
    other = make.portal(slug="other", name="Other")
    make.server(other, from_address="other@example.com")
    others = new_key(app, other)
    response = api(headers={"Authorization": f"Bearer {others}"})
    assert error_of(response) == (401, "invalid_key", "Authorization")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    with app.app_context():
        stored = db.session().exec(select(ApiKey).where(ApiKey.portal_id == portal.id)).one()
        apikeys.revoke(Actor("tests"), portal, stored)
    assert error_of(api()) == (401, "invalid_key", "Authorization")


def test_an_unknown_portal_is_404_for_a_valid_key_only(api):
    assert error_of(api(url="/api/v1/portals/nowhere/messages")) == (404, "unknown_portal", "slug")
    assert error_of(api(url="/api/v1/portals/nowhere/messages", headers={"Authorization": ""}))[0] == 401


def test_a_message_of_another_portal_is_not_found(api, app, make):
    other = make.portal(slug="other", name="Other")
    make.server(other, from_address="other@example.com")
    with app.app_context():
        theirs = outbox.submit(other, outbox.Submission(to=["a@example.org"], text="t"),
                               outbox.Submitter(outbox.Source.PYTHON, "tests"))
    assert error_of(api("GET", f"{URL}/{theirs.id}")) == (404, "not_found", "message_id")
    assert error_of(api("GET", f"{URL}/99999999999")) == (404, "not_found", None)  # beyond any id: no route
    assert error_of(api("DELETE", f"{URL}/1"))[0] == 405


# -- idempotency --------------------------------------------------------------------------------------

def test_a_repeated_request_with_its_idempotency_key_returns_the_same_message(api, app):
    first = api(headers={"Idempotency-Key": "order-17"})
    again = api(headers={"Idempotency-Key": '"order-17"'})  # as an RFC 8941 string, as the IETF draft writes it
    assert first.status_code == again.status_code == 202
    assert first.get_json()["id"] == again.get_json()["id"]
    other = api(body={**MESSAGE, "subject": "Another"}, headers={"Idempotency-Key": "order-17"})
    assert error_of(other) == (422, "idempotency_key_reused", "Idempotency-Key")
    assert error_of(api(headers={"Idempotency-Key": "x" * 201})) == (422, "invalid", "Idempotency-Key")
    with app.app_context():
        assert len(db.session().exec(select(OutboundMail)).all()) == 1


def test_two_requests_with_one_idempotency_key_at_the_same_moment_store_one_message(app, key, live_url):
    barrier, answers = threading.Barrier(4), []

    def post():
        barrier.wait(10)
        answers.append(requests.post(live_url + URL, json=MESSAGE, timeout=30, headers={
            "Authorization": f"Bearer {key}", "Idempotency-Key": "same-moment"}))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    assert [a.status_code for a in answers] == [202] * 4
    assert len({a.json()["id"] for a in answers}) == 1
    with app.app_context():
        assert len(db.session().exec(select(OutboundMail)).all()) == 1


# -- the key, not the session -------------------------------------------------------------------------

def test_a_signed_in_session_authorizes_nothing_and_no_cookie_is_read_or_set(app, admin, key):
    admin.get("/p/help/servers/")  # the admin's browser has a live session cookie
    assert admin.http.get_cookie("session") is not None
    response = admin.http.post(URL, json=MESSAGE)
    assert error_of(response) == (401, "unauthorized", "Authorization")
    assert "Set-Cookie" not in response.headers and "Cookie" not in response.headers.get("Vary", "")
    with_key = admin.http.post(URL, json=MESSAGE, headers={"Authorization": f"Bearer {key}"})
    assert with_key.status_code == 202 and "Set-Cookie" not in with_key.headers


def test_no_csrf_token_and_no_origin_check(api):
    """A browser cannot send the key by itself (it is no cookie), so a foreign page gains nothing."""
    response = api(headers={"Origin": "https://elsewhere.example"})
    assert response.status_code == 202


def test_a_key_is_rate_limited(api, app):
    app.config["API_LIMIT_PER_KEY"] = "2 per minute"
    accepted = api()
    assert accepted.status_code == 202 and accepted.headers["X-RateLimit-Remaining"] == "1"
    assert "Retry-After" not in accepted.headers  # "wait before the next request" only when refused
    assert api("GET", f"{URL}/{accepted.get_json()['id']}").status_code == 200
    response = api()
    assert error_of(response) == (429, "rate_limited", "Authorization")
    assert int(response.headers["Retry-After"]) > 0


def test_last_use_is_remembered_at_most_once_a_minute(api, app):
    def last_used():
        with app.app_context():
            return db.session().exec(select(ApiKey)).one().last_used_at

    assert last_used() is None
    api()
    first = last_used()
    assert first is not None
    api()
    assert last_used() == first  # no write within the minute
    with app.app_context():
        stored = db.session().exec(select(ApiKey)).one()
        stored.last_used_at = utcnow() - timedelta(minutes=2)
        db.session().commit()
    api()
    assert last_used() - first < timedelta(minutes=1) and last_used() > first


@pytest.mark.parametrize("message_id", ["0", "-1", "01", str(2**63 - 1), str(2**63), str(10**30), "abc", "999999"])
def test_a_hostile_message_id_is_404_json(api, message_id):
    response = api("GET", f"{URL}/{message_id}")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_another_portals_key_id_cannot_be_revoked_here(app, admin, make, portal):
    other = make.portal(slug="other", name="Other")
    with app.app_context():
        theirs = apikeys.create(Actor("tests"), other, "Theirs")[0]
    assert admin.get(f"/p/help/api-keys/{theirs.id}/revoke").status_code == 404
    assert admin.post(f"/p/help/api-keys/{theirs.id}/revoke").status_code == 404
    with app.app_context():
        assert db.session().get(ApiKey, theirs.id).revoked_at is None


def test_the_keys_page_refuses_an_empty_name_and_lists_without_the_key(app, admin, portal):
    assert admin.post("/p/help/api-keys", {"name": ""}).status_code == 422
    created = admin.post("/p/help/api-keys", {"name": "Ticket system"})
    assert created.status_code == 200
    plain = re.search(r'value="(mr_[^"]+)"', created.text).group(1)
    assert "https://help.example.com/api/v1/portals/help/messages" in created.text  # the portal's base URL
    listing = admin.get("/p/help/api-keys").text
    assert "Ticket system" in listing and plain[:11] in listing and plain not in listing
    with app.app_context():
        stored = db.session().exec(select(ApiKey)).one()
    assert stored.key_hash != plain and plain not in repr(stored.model_dump())


def test_with_redis_the_count_per_key_is_kept_there_for_every_host(app, key):
    """The count lives in Redis, which every host shares (the local server, db 15)."""
    if not redis_answers():
        pytest.fail("no Redis on 127.0.0.1:6379: the suite needs one (make test and CI run with it)")
    url = f"redis://{REDIS[0]}:{REDIS[1]}/15"
    config = {**app.config, "REDIS_URL": url, "API_LIMIT_PER_KEY": "2 per minute"}
    config.pop("RATELIMIT_STORAGE_URI", None)
    host = create_app(config, instance_path=app.instance_path)
    store = redis.Redis.from_url(url)
    counter = f"*api-key:{hashlib.sha256(key.encode()).hexdigest()[:16]}*"  # this key's, of this test only

    def post():
        return host.test_client().post(URL, json=MESSAGE, headers={"Authorization": f"Bearer {key}"}).status_code

    try:
        assert post() == 202
        assert [int(store.get(name)) for name in store.keys(counter)] == [1]
        assert [post(), post()] == [202, 429]
    finally:
        for name in store.keys(counter):
            store.delete(name)
        host.extensions["mailroom.engine"].dispose()


def test_the_readme_example_is_accepted_as_written(api):
    """A new user's first try is the README's curl example: its body and headers, as they stand there."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("curl -i https://mailroom.example.com/api/v1/portals/help/messages", 1)[1]
    example = example.split("\n# HTTP/1.1", 1)[0]
    body = json.loads(re.search(r"-d '(.*?)'", example, re.S).group(1))
    headers = dict(h.split(": ", 1) for h in re.findall(r"-H '([^']*)'", example) if not h.startswith("Content-Type"))
    assert "Idempotency-Key" in headers and body["attachments"]

    response = api(body=body, headers=headers)

    assert response.status_code == 202, response.get_json()
    answer = api(method="GET", url=response.headers["Location"]).get_json()
    assert answer["subject"] == body["subject"] and answer["status"] == "queued"


def test_history_calls_a_created_and_revoked_key_an_api_key(app, admin, portal):
    """The event's field is "key", as the Gmail form's service-account key is called: History names it
    for what it is."""
    created = admin.post("/p/help/api-keys", {"name": "Ticket system"})
    plain = re.search(r'value="(mr_[^"]+)"', created.text).group(1)
    with app.app_context():
        stored = db.session().exec(select(ApiKey)).one()
    assert admin.post(f"/p/help/api-keys/{stored.id}/revoke").status_code in (200, 303)

    rows = re.findall(r"<tr>(.*?)</tr>", admin.get("/p/help/history").text, re.S)
    created_row = next(r for r in rows if "Created the API key" in r)
    revoked_row = next(r for r in rows if "Revoked the API key" in r)
    for row in (created_row, revoked_row):
        assert "API key:</span>" in row and "Service-account key" not in row
    assert plain[:11] in created_row and plain not in created_row
