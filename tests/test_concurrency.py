"""The invariants hold when people act at the same moment, on SQLite and on PostgreSQL.

Real threads, each with its own app context (so its own database session and connection),
call the service functions (or post to the pages of a live server) and are released together
by a barrier, so that their transactions overlap. Each case is repeated; the assertions are on
the invariants and on what each caller got (a success or a Conflict), never on timings:

1. a portal keeps an admin (two admins demoting or removing each other, or being disabled or
   removed as users);
2. a portal's servers keep the positions 1..n (concurrent creations, moves and removals);
   an action on a server that another request removed meanwhile is no error;
3. a duplicate slug, email or membership is one success and Conflicts, never a database error
   (through the services, and through the pages: 303 or 422, never 500); a request of a user
   removed meanwhile is no database error either;
4. Mailroom keeps an active super-admin (two super-admins disabling, demoting or removing
   each other, with and without portals).

Run with -s to see what happened in each case (successes and Conflicts).
"""
import threading
from collections import Counter

import pytest
import requests
from flask import g, has_app_context
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import func, select

from tests.conftest import PASSWORD, csrf_token_in
from webapp import db, mailservers, people
from webapp.audit import Actor
from webapp.credentials import CredentialValues
from webapp.models import AuditEvent, CredentialKind, MailServer, Membership, Portal, Role, User

TRIALS = 10
OK = "ok"
NEEDS_ADMIN = ("A portal needs at least one admin", "is the only admin of the portal")  # member, user pages
NEEDS_SUPERADMIN = "Mailroom needs an active super-admin"
ACTOR = Actor("concurrency test")


# -- running calls together ------------------------------------------------------------------

def together(app, *setups, in_app=True, timeout=60):
    """Run each setup in its own thread (inside its own app context when in_app); a setup
    prepares (loads what it needs in its own session) and returns the action. The actions
    start together at a barrier. Returns, per setup, OK or the exception its action raised.
    A setup that fails, or a thread that does not finish, fails the test."""
    barrier = threading.Barrier(len(setups))
    results: list = [None] * len(setups)
    setup_errors: list = []

    def run(index, setup):
        try:
            if in_app:
                with app.app_context():
                    _prepare_and_act(index, setup, barrier, results)
            else:
                _prepare_and_act(index, setup, barrier, results)
        except BaseException as error:  # noqa: BLE001 - reported to the test below
            setup_errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i, setup), name=f"racer-{i}", daemon=True)
               for i, setup in enumerate(setups)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish in time"
    assert not setup_errors, f"a setup failed: {setup_errors!r}"
    return results


def _prepare_and_act(index, setup, barrier, results):
    action = setup()
    if db_session_open():
        db.session().commit()  # gives the connection back: PostgreSQL's pool is smaller than the crowd
    barrier.wait(timeout=60)
    try:
        action()
    except Exception as error:  # noqa: BLE001 - what the caller would have got
        results[index] = error
    else:
        results[index] = OK


def db_session_open() -> bool:
    return has_app_context() and "db_session" in g


def now(function, *args, **kwargs):
    """A setup with nothing to prepare."""
    return lambda: lambda: function(*args, **kwargs)


def tally(results) -> Counter:
    """OK, or the exception's class name, counted."""
    return Counter(OK if result == OK else type(result).__name__ for result in results)


def sources(results) -> Counter:
    """Where the Conflicts came from: the check before writing, or the database's constraint
    (the write raced another one: the Conflict was raised while handling an IntegrityError)."""
    return Counter("Conflict from the constraint" if isinstance(result.__context__, IntegrityError)
                   else "Conflict from the check" for result in results if isinstance(result, people.Conflict))


def only_ok_or_conflict(results, messages: str | tuple[str, ...]) -> None:
    """Each result is a success or a Conflict saying one of `messages`."""
    messages = (messages,) if isinstance(messages, str) else messages
    for result in results:
        if result != OK:
            assert isinstance(result, people.Conflict), f"not a Conflict: {result!r}"
            assert any(message in str(result) for message in messages), str(result)


def report(title: str, counts: Counter) -> None:
    print(f"\n{title}: {dict(counts)}")


# -- 1. a portal keeps an admin ----------------------------------------------------------------

def _membership_id(app, portal, user) -> int:
    with app.app_context():
        return db.session().exec(select(Membership.id).where(
            Membership.portal_id == portal.id, Membership.user_id == user.id)).one()


def _user(app, email, superadmin=False) -> User:
    """As make.user, without hashing a password (for users who never sign in): trials stay quick."""
    with app.app_context():
        user = User(email=email, password_hash="x", is_superadmin=superadmin)
        db.session().add(user)
        db.session().commit()
        return user


def _member(app, portal, email, role=Role.ADMIN) -> User:
    """As make.member, for a user who never signs in."""
    user = _user(app, email)
    with app.app_context():
        db.session().add(Membership(user_id=user.id, portal_id=portal.id, role=role))
        db.session().commit()
    return user


def _admins_of(app, portal) -> int:
    with app.app_context():
        return db.session().exec(select(func.count()).select_from(Membership).join(User).where(
            Membership.portal_id == portal.id, Membership.role == Role.ADMIN, User.is_active)).one()


def _demote(portal, user, membership_id):
    return now(people.change_role, ACTOR, portal, membership_id, Role.STAFF)


def _remove(portal, user, membership_id):
    return now(people.remove_member, ACTOR, portal, membership_id)


def _disable_user(portal, user, membership_id):
    def setup():
        loaded = db.session().get(User, user.id)  # as the page does: loaded in the request's session
        return lambda: people.update_user(ACTOR, loaded, loaded.email, loaded.name, False, False)
    return setup


def _remove_user(portal, user, membership_id):
    def setup():
        loaded = db.session().get(User, user.id)
        return lambda: people.remove_user(ACTOR, loaded)
    return setup


@pytest.mark.parametrize("first,second", [(_demote, _demote), (_remove, _remove), (_demote, _remove),
                                          (_disable_user, _demote), (_remove_user, _remove)],
                         ids=["both-change-role", "both-remove-member", "change-role-and-remove-member",
                              "disable-user-and-change-role", "remove-user-and-remove-member"])
def test_two_admins_acting_on_each_other_leave_an_admin(app, make, first, second):
    """Ann's action targets Bob, Bob's targets Ann, at the same moment: one wins, the other is
    told the portal needs an admin; the portal keeps exactly one."""
    counts = Counter()
    for trial in range(TRIALS):
        portal = make.portal(slug=f"race-{trial}", name=f"Race {trial}")
        ann = _member(app, portal, f"ann{trial}@example.com")
        bob = _member(app, portal, f"bob{trial}@example.com")
        results = together(app, first(portal, bob, _membership_id(app, portal, bob)),
                           second(portal, ann, _membership_id(app, portal, ann)))
        only_ok_or_conflict(results, NEEDS_ADMIN)
        counts.update(tally(results))
        assert _admins_of(app, portal) == 1, f"trial {trial}: {results!r}"
        assert sorted(tally(results).elements()) == ["Conflict", OK], f"trial {trial}: {results!r}"
    report(f"{first.__name__} vs {second.__name__}, {TRIALS} trials", counts)


# -- 2. positions stay 1..n --------------------------------------------------------------------

SERVER_COLUMNS = {"description": "Relay", "protocol": "smtp", "enabled": True, "timeout": 10, "max_connections": 5,
                  "from_address": "helpdesk@example.com", "sender_name": "Help Desk", "reply_to": ""}
SERVER_SETTINGS = {"host": "smtp.example.com", "port": 587, "security": "starttls", "verify_cert": True,
                   "ca_cert": "", "local_hostname": "", "plaintext_auth": False}


def _create_server(portal, number: int):
    credential = CredentialValues(kind=CredentialKind.PASSWORD, username=f"mailer{number}@example.com",
                                  mechanism="auto", secret={"password": f"Secret-{number}"})
    return now(mailservers.save, ACTOR, portal, None, None, {**SERVER_COLUMNS, "description": f"Relay {number}"},
               dict(SERVER_SETTINGS), credential)


def _positions(app, portal) -> list[int]:
    with app.app_context():
        return list(db.session().exec(select(MailServer.position).where(MailServer.portal_id == portal.id)
                                      .order_by(MailServer.position)))


def _server_ids(app, portal) -> list[int]:
    with app.app_context():
        return list(db.session().exec(select(MailServer.id).where(MailServer.portal_id == portal.id)
                                      .order_by(MailServer.position)))


def test_concurrent_server_creations_take_positions_1_to_n(app, portal):
    rounds, per_round = 3, 40
    counts = Counter()
    for round_ in range(rounds):
        results = together(app, *(_create_server(portal, round_ * per_round + i) for i in range(per_round)))
        counts.update(tally(results))
        assert results == [OK] * per_round, [r for r in results if r != OK][:3]
        assert _positions(app, portal) == list(range(1, (round_ + 1) * per_round + 1))
    report(f"{rounds} x {per_round} concurrent creations", counts)


def _move(portal, server_id, step):
    def setup():
        server = mailservers.get_server(portal, server_id)
        return lambda: mailservers.move(ACTOR, portal, server, step)
    return setup


def _remove_server(portal, server_id):
    def setup():
        server = mailservers.get_server(portal, server_id)
        return lambda: mailservers.remove(ACTOR, portal, server)
    return setup


def test_creations_moves_and_removals_at_once_keep_positions_unique_and_contiguous(app, portal):
    rounds, created, existing = 3, 30, 12
    counts = Counter()
    number = 0
    for _ in range(existing):
        together(app, _create_server(portal, number := number + 1))
    for round_ in range(rounds):
        ids = _server_ids(app, portal)
        removed, moved = ids[0:8:2], ids[1:8:2]  # distinct servers: moving one being removed is another case
        setups = [_create_server(portal, number + i) for i in range(created)]
        number += created
        setups += [_remove_server(portal, server_id) for server_id in removed]
        setups += [_move(portal, server_id, step) for server_id, step in zip(moved, [1, -1, 1, -1])]
        results = together(app, *setups)
        counts.update(tally(results))
        assert results == [OK] * len(setups), [r for r in results if r != OK][:3]
        remaining = _server_ids(app, portal)
        assert not set(removed) & set(remaining)
        assert len(remaining) == len(ids) + created - len(removed)
        assert _positions(app, portal) == list(range(1, len(remaining) + 1))
    report(f"{rounds} rounds of {created} creations + 4 removals + 4 moves", counts)


def _move_down(portal, server):
    mailservers.move(ACTOR, portal, server, 1)


def _disable_server(portal, server):
    mailservers.set_enabled(ACTOR, portal, server, False)


def _remove_again(portal, server):
    mailservers.remove(ACTOR, portal, server)


@pytest.mark.parametrize("action", [
    pytest.param(_move_down, id="move"),
    pytest.param(_disable_server, id="enable-or-disable"),
    pytest.param(_remove_again, id="remove-again"),
])
def test_an_action_on_a_server_removed_meanwhile_is_no_error(app, portal, action):
    """Two requests load the same server; one removes it, then the other acts on it (the
    removal commits between the page loading the server and the service taking the lock).
    The latecomer gets nothing done, or StaleEdit; never another error; one removal recorded."""
    for number in range(3):
        together(app, _create_server(portal, number))
    ids = _server_ids(app, portal)
    removed = threading.Event()

    def remover():
        server = mailservers.get_server(portal, ids[1])

        def act():
            try:
                mailservers.remove(ACTOR, portal, server)
            finally:
                removed.set()
        return act

    def latecomer():
        server = mailservers.get_server(portal, ids[1])

        def act():
            assert removed.wait(30)
            action(portal, server)
        return act

    results = together(app, remover, latecomer)
    assert results[0] == OK, results
    assert results[1] == OK or isinstance(results[1], mailservers.StaleEdit), f"{results[1]!r}"
    assert _server_ids(app, portal) == [ids[0], ids[2]]
    assert _positions(app, portal) == [1, 2]
    with app.app_context():
        records = db.session().exec(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.portal_id == portal.id, AuditEvent.action == "server.removed")).one()
    assert records == 1, f"{records} removals recorded"


# -- 3. a duplicate is a Conflict, never a database error --------------------------------------

@pytest.mark.parametrize("what", ["portal", "user", "membership"])
def test_concurrent_duplicates_give_one_success_and_conflicts(app, make, what):
    crowd, trials = 10, 3
    counts = Counter()
    for trial in range(trials):
        if what == "portal":
            setups = [now(people.create_portal, ACTOR, f"same-{trial}", f"Same {i}") for i in range(crowd)]
            message = "already exists"
        elif what == "user":
            setups = [now(people.create_user, ACTOR, f"Same{trial}@Example.com", "a long password", f"Same {i}")
                      for i in range(crowd)]
            message = "already exists"
        else:
            portal = make.portal(slug=f"members-{trial}")
            user = _user(app, f"member{trial}@example.com")
            setups = [now(people.add_member, ACTOR, portal, user, Role.STAFF if i % 2 else Role.ADMIN)
                      for i in range(crowd)]
            message = "is already a member"
        results = together(app, *setups)
        counts.update(tally(results) + sources(results))
        only_ok_or_conflict(results, message)
        assert results.count(OK) == 1, results
    with app.app_context():
        portals = db.session().exec(select(Portal.slug).where(Portal.slug.startswith("same-"))).all()
        users = db.session().exec(select(User.email).where(User.email.startswith("same"))).all()
        memberships = db.session().exec(select(func.count()).select_from(Membership)).one()
    assert len(portals) == (trials if what == "portal" else 0)
    assert len(users) == (trials if what == "user" else 0)
    assert memberships == (trials if what == "membership" else 0)
    report(f"{crowd} concurrent creations of the same {what}, {trials} trials", counts)


class WebClient:
    """A browser of its own: a signed-in session and the CSRF token of a form page."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.http = requests.Session()
        self.http.trust_env = False  # 127.0.0.1 directly, whatever the proxy settings say

    def sign_in(self, email: str) -> "WebClient":
        token = csrf_token_in(self.get("/login").text)
        response = self.http.post(f"{self.base_url}/login", allow_redirects=False, timeout=30,
                                  data={"email": email, "password": PASSWORD, "csrf_token": token})
        assert response.status_code == 303, response.status_code
        return self

    def get(self, path: str):
        response = self.http.get(f"{self.base_url}{path}", allow_redirects=False, timeout=30)
        assert response.status_code == 200, (path, response.status_code)
        return response

    def form_poster(self, path: str, data: dict):
        """Opens the form page (for its token) and returns the post of `data` to it."""
        token = csrf_token_in(self.get(path).text)
        return lambda: self.http.post(f"{self.base_url}{path}", data={**data, "csrf_token": token},
                                      allow_redirects=False, timeout=60)


def _web_post(base_url, email, path, data, answers, index):
    def setup():
        post = WebClient(base_url).sign_in(email).form_poster(path, data)

        def act():
            response = post()
            answers[index] = (response.status_code, response.text)
        return act
    return setup


@pytest.mark.parametrize("what", ["portal", "user", "membership"])
def test_concurrent_duplicates_through_the_pages_are_303_or_422(app, make, live_url, what):
    crowd, trials = 10, 2
    make.user("root@example.com", superadmin=True)
    counts = Counter()
    for trial in range(trials):
        if what == "portal":
            signer, path, message = "root@example.com", "/portals/new", "already exists"
            data = {"name": "Same", "slug": f"same-{trial}", "base_url": "https://same.example.com"}
        elif what == "user":
            signer, path, message = "root@example.com", "/users/new", "already exists"
            data = {"email": f"same{trial}@example.com", "name": "Same", "password": "a long password"}
        else:
            portal = make.portal(slug=f"web-{trial}")
            signer, path, message = f"admin{trial}@example.com", f"/p/web-{trial}/members", "is already a member"
            make.member(portal, signer, Role.ADMIN)
            _user(app, f"member{trial}@example.com")
            data = {"email": f"member{trial}@example.com", "role": "staff"}
        answers: list = [None] * crowd
        results = together(app, *(_web_post(live_url, signer, path, data, answers, i) for i in range(crowd)),
                           in_app=False)
        assert results == [OK] * crowd, results  # no request failed on the client's side
        statuses = [status for status, _ in answers]
        counts.update(statuses)
        assert statuses.count(303) == 1, statuses
        for status, text in answers:
            assert status in (303, 422), (status, text[:2000])
            if status == 422:
                assert message in text, text[:2000]
    report(f"{crowd} concurrent posts of the same {what} to {path}, {trials} trials (HTTP statuses)", counts)


def _acting_user_removed_meanwhile(app, doomed: User, action):
    """`doomed`'s request is under way (signed in, its objects loaded) when a super-admin
    removes them; then it acts. Returns what the action gave."""
    removed = threading.Event()

    def remover():
        loaded = db.session().get(User, doomed.id)

        def act():
            try:
                people.remove_user(ACTOR, loaded)
            finally:
                removed.set()
        return act

    def latecomer():
        def act():
            assert removed.wait(30)
            action()
        return act

    results = together(app, remover, latecomer)
    assert results[0] == OK, results
    return results[1]


@pytest.mark.parametrize("what", ["change-role", "create-portal"])
def test_a_request_of_a_user_removed_meanwhile_is_no_database_error(app, make, what):
    """Not a duplicate, so not a 'duplicate' Conflict; and never an IntegrityError."""
    portal = make.portal()
    _member(app, portal, "ann@example.com")
    _user(app, "root@example.com", superadmin=True)
    if what == "change-role":
        doomed = _member(app, portal, "bob@example.com")
        carl = _member(app, portal, "carl@example.com", Role.STAFF)
        membership_id = _membership_id(app, portal, carl)
        result = _acting_user_removed_meanwhile(app, doomed, lambda: people.change_role(
            Actor.of(doomed), portal, membership_id, Role.ADMIN))
    else:
        doomed = _user(app, "bob@example.com", superadmin=True)
        result = _acting_user_removed_meanwhile(app, doomed, lambda: people.create_portal(
            Actor.of(doomed), "brand-new", "Brand New"))
    assert result == OK or (isinstance(result, people.Conflict) and "already" not in str(result)), f"{result!r}"


# -- 4. Mailroom keeps an active super-admin ---------------------------------------------------

def _only_these_superadmins(app, *emails) -> list[User]:
    """Everyone else loses super-admin and active (earlier trials); these two become both."""
    with app.app_context():
        session = db.session()
        session.execute(update(User).values(is_superadmin=False, is_active=False))
        users = []
        for email in emails:
            user = User(email=email, password_hash="x", is_superadmin=True, is_active=True)
            session.add(user)
            users.append(user)
        session.commit()
        return users


def _active_superadmins(app) -> int:
    with app.app_context():
        return db.session().exec(select(func.count()).select_from(User).where(
            User.is_superadmin, User.is_active)).one()


def _update_user(actor_user, user_id, superadmin: bool, active: bool):
    def setup():
        user = db.session().get(User, user_id)  # as the page does: the user loaded in the request's session
        return lambda: people.update_user(Actor.of(actor_user), user, user.email, user.name, superadmin, active)
    return setup


def _disable(actor_user, user):
    return _update_user(actor_user, user.id, True, False)


def _unmake_superadmin(actor_user, user):
    return _update_user(actor_user, user.id, False, True)


def _remove_superadmin(actor_user, user):
    def setup():
        loaded = db.session().get(User, user.id)
        return lambda: people.remove_user(Actor.of(actor_user), loaded)
    return setup


@pytest.mark.parametrize("portals", [pytest.param(0, id="no-portal"),
                                     pytest.param(2, id="with-portals")])
@pytest.mark.parametrize("first,second", [(_disable, _disable), (_unmake_superadmin, _unmake_superadmin),
                                          (_disable, _unmake_superadmin), (_remove_superadmin, _disable)],
                         ids=["both-disable", "both-unmake-superadmin", "disable-and-unmake", "remove-and-disable"])
def test_two_superadmins_acting_on_each_other_leave_an_active_superadmin(app, make, portals, first, second):
    for number in range(portals):
        make.portal(slug=f"portal-{number}", name=f"Portal {number}")
    counts = Counter()
    for trial in range(TRIALS):
        ann, bob = _only_these_superadmins(app, f"ann{trial}@example.com", f"bob{trial}@example.com")
        results = together(app, first(ann, bob), second(bob, ann))
        only_ok_or_conflict(results, NEEDS_SUPERADMIN)
        counts.update(tally(results))
        assert _active_superadmins(app) == 1, f"trial {trial}: {results!r}"
        assert sorted(tally(results).elements()) == ["Conflict", OK], f"trial {trial}: {results!r}"
    report(f"{first.__name__} vs {second.__name__}, {portals} portal(s), {TRIALS} trials", counts)
