"""Sessions that end: replayed cookies after sign-out or a password change are worth nothing,
the session is renewed at sign-in, idle and old sessions end; on the database and on Redis.
And sign-in is throttled, with the same answer for unknown users and wrong passwords."""
import re
import socket
import uuid
from datetime import timedelta

import limits
import pytest
import werkzeug.security
from sqlmodel import select

from tests.conftest import PASSWORD, Client, csrf_token_in
from webapp import create_app, db
from webapp.models import User, UserSession, utcnow

REDIS = ("127.0.0.1", 6379)


def redis_answers() -> bool:
    try:
        socket.create_connection(REDIS, timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(params=["database", "redis"])
def store_app(request, app):
    """The app with its sessions in the database, or in Redis (the local server, as in CI)."""
    if request.param == "database":
        return app
    if not redis_answers():
        pytest.fail("no Redis on 127.0.0.1:6379: the suite needs one (make test and CI run with it)")
    config = {**app.config, "REDIS_URL": f"redis://{REDIS[0]}:{REDIS[1]}/15", "TESTING": True,
              "RATELIMIT_KEY_PREFIX": f"mailroom-test-{uuid.uuid4().hex}"}
    config.pop("RATELIMIT_STORAGE_URI", None)
    return create_app(config, instance_path=app.instance_path)


@pytest.fixture
def someone(make):
    return make.user("someone@example.com")


def copy_of(client: Client, app) -> Client:
    """Another browser with the same cookie (an attacker who copied it)."""
    other = Client(app)
    other.http.set_cookie("session", client.http.get_cookie("session").value)
    return other


def signed_in(client: Client) -> bool:
    response = client.get("/")
    return response.status_code == 200 and "Sign out" in response.text


def test_a_cookie_copied_before_sign_out_is_worth_nothing_after_it(store_app, someone):
    browser = Client(store_app).login("someone@example.com")
    stolen = copy_of(browser, store_app)
    token = csrf_token_in(browser.get("/").text)
    assert signed_in(stolen)
    browser.post("/logout")
    assert not signed_in(stolen)
    assert stolen.get("/").headers["Location"].startswith("/login")
    forged = stolen.http.post("/account/password", data={"csrf_token": token, "current": PASSWORD,
                                                           "new": "taken over 123", "confirm": "taken over 123"})
    assert forged.status_code == 400 and "The form expired" in forged.text  # the old CSRF token means nothing


def test_a_password_change_ends_every_other_session(store_app, someone):
    first = Client(store_app).login("someone@example.com")
    second = Client(store_app).login("someone@example.com")
    assert first.post("/account/password", {"current": PASSWORD, "new": "a brand new one 1",
                                            "confirm": "a brand new one 1"}).status_code == 303
    assert signed_in(first)
    assert not signed_in(second)


def test_resetting_or_disabling_a_user_ends_their_sessions(store_app, make, someone):
    make.user("root@example.com", superadmin=True)
    victim = Client(store_app).login("someone@example.com")
    root = Client(store_app).login("root@example.com")
    root.post(f"/users/{someone.id}/reset-password")
    assert not signed_in(victim)
    other = make.user("other@example.com")
    victim = Client(store_app).login("other@example.com")
    root.post(f"/users/{other.id}", {"email": "other@example.com"})  # is_active unticked
    assert not signed_in(victim)


def test_the_session_is_renewed_at_sign_in_and_the_csrf_token_with_it(store_app, someone):
    browser = Client(store_app)
    anonymous_token = browser.csrf_token()
    anonymous_cookie = browser.http.get_cookie("session").value
    browser.login("someone@example.com")
    cookie = browser.http.get_cookie("session").value
    assert cookie != anonymous_cookie and cookie.startswith("s1:")
    assert csrf_token_in(browser.get("/").text) != anonymous_token
    stale = browser.http.post("/logout", data={"csrf_token": anonymous_token})
    assert stale.status_code == 400 and signed_in(browser)


def test_idle_and_old_sessions_end(app, someone):
    browser = Client(app).login("someone@example.com")
    with app.app_context():
        record = db.session().exec(select(UserSession)).one()
        record.last_seen_at = utcnow() - timedelta(minutes=app.config["SESSION_IDLE_MINUTES"] + 1)
        db.session().commit()
    assert not signed_in(browser)
    browser = Client(app).login("someone@example.com")
    with app.app_context():
        record = db.session().exec(select(UserSession)).one()
        record.created_at = utcnow() - timedelta(hours=app.config["SESSION_MAX_HOURS"], minutes=1)
        db.session().commit()
    assert not signed_in(browser)


def test_a_signed_cookie_alone_signs_nobody_in(app, someone):
    """Even with the app's secret key, a cookie that claims a user without a server-side record fails."""
    from flask.sessions import SecureCookieSessionInterface

    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    forged = Client(app)
    forged.http.set_cookie("session", serializer.dumps({"_user_id": str(someone.id), "_fresh": True}))
    assert not signed_in(forged)


def test_sign_in_is_throttled_per_account_from_one_address(app, someone):
    attacker = Client(app)
    answers = [attacker.post("/login", {"email": "someone@example.com", "password": f"guess {n}"}).status_code
               for n in range(12)]
    assert answers[:10] == [422] * 10 and answers[10:] == [429, 429]
    blocked = attacker.post("/login", {"email": "someone@example.com", "password": PASSWORD})
    assert blocked.status_code == 429 and "Too many sign-in attempts" in blocked.text
    other_account = attacker.post("/login", {"email": "nobody@example.com", "password": "x"})
    assert other_account.status_code == 422  # the limit is per account (the address has room left)


def from_address(app, address: str, email: str, password: str):
    client = Client(app)
    return client.http.post("/login", environ_base={"REMOTE_ADDR": address},
                            data={"email": email, "password": password, "csrf_token": client.csrf_token()})


def test_a_wrong_password_flood_from_one_address_does_not_lock_the_owner_out_elsewhere(app, someone):
    attacker = Client(app)
    answers = [attacker.post("/login", {"email": "someone@example.com", "password": f"guess {n}"}).status_code
               for n in range(15)]
    assert answers[:10] == [422] * 10 and set(answers[10:]) == {429}
    owner = from_address(app, "192.0.2.10", "someone@example.com", PASSWORD)
    assert owner.status_code == 303  # the owner, at home, signs in


def test_an_account_is_locked_everywhere_only_at_a_much_higher_count(app, someone):
    pair = limits.parse(app.config["SIGN_IN_LIMIT_PER_ACCOUNT_AND_ADDRESS"])
    account = limits.parse(app.config["SIGN_IN_LIMIT_PER_ACCOUNT"])
    assert account.amount >= 5 * pair.amount  # the defaults: a flood must be large to lock the owner out
    app.config["SIGN_IN_LIMIT_PER_ACCOUNT"] = "12 per 15 minutes"  # the same rule, quicker to reach
    answers = [from_address(app, f"198.51.100.{n // 4}", "someone@example.com", "wrong").status_code
               for n in range(12)]  # from three addresses, none reaching its own limit
    assert answers == [422] * 12
    owner = from_address(app, "192.0.2.10", "someone@example.com", PASSWORD)
    assert owner.status_code == 429 and "Too many sign-in attempts" in owner.text


def test_sign_in_is_throttled_per_client_address(app, someone):
    attacker = Client(app)
    answers = [attacker.post("/login", {"email": f"user{n}@example.com", "password": "guess"}).status_code
               for n in range(31)]
    assert answers[:30] == [422] * 30 and answers[30] == 429
    elsewhere = Client(app).http.post("/login", environ_base={"REMOTE_ADDR": "127.0.0.2"},
                                      data={"email": "someone@example.com", "password": PASSWORD,
                                            "csrf_token": attacker.csrf_token()})
    assert elsewhere.status_code != 429


def test_unknown_users_and_wrong_passwords_cost_the_same_and_read_the_same(app, someone, monkeypatch):
    hashed = []
    real = werkzeug.security.check_password_hash
    monkeypatch.setattr("webapp.people.check_password_hash",
                        lambda stored, password: hashed.append(stored.split("$")[0]) or real(stored, password))
    client = Client(app)
    wrong = client.post("/login", {"email": "someone@example.com", "password": "wrong one"})
    unknown = client.post("/login", {"email": "nobody@example.com", "password": "wrong one"})
    assert wrong.status_code == unknown.status_code == 422
    def page(response):  # without the CSRF tokens and the echoed email, which differ by design
        text = re.sub(r'value="[^"]*"', "", response.text)
        return re.sub(r"hx-headers='[^']*'", "", text)
    assert page(wrong) == page(unknown)
    assert "The email or password is not right." in wrong.text
    with app.app_context():
        method = db.session().exec(select(User)).one().password_hash.split("$")[0]
    assert hashed == [method, method]  # one hash of the same kind each: the same work, the same time
