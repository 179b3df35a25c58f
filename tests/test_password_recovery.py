"""Password recovery by mail (Enterprise Recon): "Forgot your password?" records the request and
queues a job (the same work for every address); the job queues a link through the system-mail
server, which a real SMTP peer (aiosmtpd on loopback) receives from the worker, and the mail's body
is purged once it is sent or failed; the link works once, expires, is stored hashed, ends the user's
sessions; the same answer for unknown addresses; rate limits per address and per client; the System
mail page; admin notices of a portal without a working server go the same way."""
import hashlib
import re
from datetime import timedelta
from email import message_from_bytes
from email import policy as email_policy

import pytest
from sqlalchemy import event
from sqlmodel import select

from webapp import db, systemmail
from webapp.audit import Actor
from webapp.delivery import notices, sweep
from webapp.models import OutboundMail, PasswordReset, RecoveryRequest, Role, utcnow

from .conftest import PASSWORD, Client
from .delivery_fixtures import outbox, smtp_settings  # noqa: F401  (outbox: fixture)

PUBLIC = "https://mailroom.example.com"
FORGOT = "/password/forgot"
SAME_ANSWER = "If an account has this address, a link to choose a new password is on its way to it."


@pytest.fixture
def system_peer(app, make, outbox, smtp_peer):
    """A portal "Operations" whose second server (to a plain SMTP peer) is the system-mail server; its
    first server goes to another peer, which must never see system mail."""
    first, peer = smtp_peer("plain"), smtp_peer("plain")
    operations = make.portal(slug="ops", name="Operations", base_url="")
    make.server(operations, settings=smtp_settings(first), from_address="ops@example.com", description="Ops relay")
    server = make.server(operations, settings=smtp_settings(peer), from_address="mailroom@example.com",
                         description="System relay")
    app.config["PUBLIC_URL"] = PUBLIC
    with app.app_context():
        systemmail.designate(Actor("tests"), server.id)
    peer.first, peer.server_id, peer.portal = first, server.id, operations
    return peer


def ask(client: Client, email: str):
    return client.post(FORGOT, {"email": email})


def jobs(app):
    return app.extensions["mailroom.delivery"]


def deliver_all(app, outbox) -> list[OutboundMail]:
    outbox.run_jobs("recover")
    with app.app_context():
        ids = db.session().exec(select(OutboundMail.id).order_by(OutboundMail.id)).all()
    for mail_id in ids:
        outbox.run(mail_id)
    return [outbox.mail(mail_id) for mail_id in ids]


def answer_of(response, address: str) -> str:
    """The page without the address asked for and the CSRF token (signed with the second it was made)."""
    return re.sub(r'"X-CSRFToken": "[^"]+"', "<token>", response.text.replace(address, "<address>"))


def link_in(received) -> str:
    message = received.message
    text = message.get_body(("plain",)).get_content()
    return re.search(re.escape(PUBLIC) + r"(/password/reset/\S+)", text).group(1)


def test_the_link_arrives_through_the_system_server_and_sets_a_new_password_once(
        app, make, client, outbox, system_peer):
    user = make.user("ann@example.com")
    signed_in = Client(app).login("ann@example.com")
    assert "Forgot your password?" in client.get("/login").text

    response = ask(client, "Ann@Example.com")
    assert response.status_code == 200 and SAME_ANSWER in response.text
    [mail] = deliver_all(app, outbox)
    assert mail.state == "sent" and mail.source == "system" and mail.pinned_server_id == system_peer.server_id
    assert mail.raw is None and mail.purged_at is not None  # the link is not kept in the outbox
    assert mail.portal_id == system_peer.portal.id
    assert mail.expires_at is not None and mail.expires_at.replace(tzinfo=None) <= (
        utcnow() + timedelta(minutes=30)).replace(tzinfo=None)
    assert system_peer.first.messages == []  # only the designated server
    [received] = system_peer.messages
    assert received.rcpt_tos == ["ann@example.com"]
    assert received.message["From"] == "Mailroom <mailroom@example.com>"
    path = link_in(received)
    token = path.rsplit("/", 1)[1]
    with app.app_context():
        [reset] = db.session().exec(select(PasswordReset)).all()
        assert reset.id == hashlib.sha256(token.encode()).hexdigest() and reset.user_id == user.id
        assert token not in reset.id

    form = client.get(path)
    assert form.status_code == 200 and "Choose a new password" in form.text
    assert form.headers["Referrer-Policy"] == "same-origin"  # the token never goes to another site
    short = client.post(path, {"new": "short", "confirm": "short"})
    assert short.status_code == 422 and "Use at least 10 characters." in short.text
    mismatch = client.post(path, {"new": "a new long password", "confirm": "another one"})
    assert mismatch.status_code == 422 and "The passwords do not match." in mismatch.text
    done = client.post(path, {"new": "a new long password", "confirm": "a new long password"})
    assert done.status_code == 303 and done.headers["Location"] == "/login"

    assert signed_in.get("/").status_code == 302  # every other session ended
    Client(app).login("ann@example.com", "a new long password")
    assert client.post("/login", {"email": "ann@example.com", "password": PASSWORD}).status_code == 422
    again = client.post(path, {"new": "yet another password", "confirm": "yet another password"})
    assert again.status_code == 404 and "This link does not work" in again.text
    assert client.get(path).status_code == 404
    Client(app).login("ann@example.com", "a new long password")  # unchanged by the refused second use


def test_the_same_answer_for_an_unknown_or_disabled_address_and_nothing_is_sent(app, make, client, outbox,
                                                                                system_peer):
    make.user("gone@example.com", is_active=False)
    known = make.user("ann@example.com")
    answers = [ask(client, address) for address in ("nobody@example.com", "gone@example.com")]
    assert all(a.status_code == 200 and SAME_ANSWER in a.text for a in answers)
    assert answer_of(answers[0], "nobody@example.com") == answer_of(answers[1], "gone@example.com")
    assert deliver_all(app, outbox) == [] and system_peer.messages == []
    bad = ask(client, "not an address")
    assert bad.status_code == 422 and 'aria-invalid="true"' in bad.text
    assert known.id is not None


def test_a_link_expires(app, make, client, outbox, system_peer):
    make.user("ann@example.com")
    ask(client, "ann@example.com")
    deliver_all(app, outbox)
    path = link_in(system_peer.messages[0])
    with app.app_context():
        reset = db.session().exec(select(PasswordReset)).one()
        reset.expires_at = utcnow() - timedelta(seconds=1)
        db.session().commit()
    assert client.get(path).status_code == 404
    refused = client.post(path, {"new": "a new long password", "confirm": "a new long password"})
    assert refused.status_code == 404
    client.login("ann@example.com")  # the old password still works


def test_a_password_changed_otherwise_uses_the_open_links_up(app, make, client, outbox, system_peer):
    make.user("ann@example.com")
    ask(client, "ann@example.com")
    deliver_all(app, outbox)
    path = link_in(system_peer.messages[0])
    me = Client(app).login("ann@example.com")
    assert me.post("/account/password", {"current": PASSWORD, "new": "changed the usual way",
                                         "confirm": "changed the usual way"}).status_code == 303
    assert client.get(path).status_code == 404


def test_rate_limited_per_address_and_per_client(app, make, client, outbox, system_peer):
    make.user("ann@example.com")
    app.config.update(PASSWORD_RESET_LIMIT_PER_ADDRESS="2 per hour", PASSWORD_RESET_LIMIT_PER_CLIENT="5 per hour")
    assert [ask(client, "ann@example.com").status_code for _ in range(3)] == [200, 200, 429]
    other_client = Client(app)
    other_client.http.environ_base["REMOTE_ADDR"] = "127.0.0.2"
    assert ask(other_client, "ann@example.com").status_code == 429  # per address, from anywhere
    assert [ask(other_client, "nobody@example.com").status_code for _ in range(3)] == [200, 200, 429]  # the same
    assert [ask(client, "third@example.com").status_code for _ in range(3)] == [200, 200, 429]  # 5 from this client
    assert len(deliver_all(app, outbox)) == 2


def test_without_a_public_url_or_a_server_nothing_is_sent_and_the_super_admin_is_told(app, make, client, outbox,
                                                                                      system_peer):
    make.user("ann@example.com")
    app.config["PUBLIC_URL"] = None
    page = client.get(FORGOT)
    assert page.status_code == 503 and "not set up in this Mailroom" in page.text and "MAILROOM" not in page.text
    assert client.post(FORGOT, {"email": "ann@example.com"}).status_code == 503
    assert deliver_all(app, outbox) == []

    make.user("root@example.com", superadmin=True)
    root = Client(app).login("root@example.com")
    status = root.get("/settings/system-mail").text
    assert "MAILROOM_PUBLIC_URL is not configured" in status
    assert root.post("/settings/system-mail", {"server": ""}).status_code == 303
    app.config["PUBLIC_URL"] = PUBLIC
    status = root.get("/settings/system-mail").text
    assert "No server is designated for system mail" in status and "MAILROOM_PUBLIC_URL is not" not in status
    assert client.get(FORGOT).status_code == 503

    assert root.post("/settings/system-mail", {"server": "999999"}).status_code == 422
    assert root.post("/settings/system-mail", {"server": str(system_peer.server_id)}).status_code == 303
    ready = root.get("/settings/system-mail").text
    assert "Password recovery by mail works" in ready and PUBLIC in ready
    assert "Operations — #2 System relay (mailroom@example.com)" in ready
    assert client.get(FORGOT).status_code == 200


def test_a_portal_without_a_working_server_gets_its_notices_through_the_system_server(
        app, make, portal, outbox, system_peer):
    held = make.server(portal, from_address="helpdesk@example.com", held_since=utcnow(), held_reason="535 no")
    with app.app_context():
        db.session().get(type(portal), portal.id).admin_address = "admins@help.example.com"
        db.session().commit()
        notices.held(db.session().get(type(portal), portal.id), "mail is held", "“Relay” refuses its credentials")
    [(kind, mail)] = outbox.notices(portal)
    assert mail.portal_id == portal.id and mail.pinned_server_id == system_peer.server_id  # its own queue
    outbox.run(mail.id)
    assert outbox.mail(mail.id).state == "sent"
    [received] = system_peer.messages
    assert received.rcpt_tos == ["admins@help.example.com"]
    assert received.message["From"] == "Mailroom <mailroom@example.com>"
    assert held.id != system_peer.server_id


def test_a_portal_with_a_working_server_sends_its_notices_itself(app, make, portal, outbox, system_peer):
    make.server(portal, from_address="helpdesk@example.com")
    with app.app_context():
        db.session().get(type(portal), portal.id).admin_address = "admins@help.example.com"
        db.session().commit()
        notices.held(db.session().get(type(portal), portal.id), "mail is held", "a reason")
    [(kind, mail)] = outbox.notices(portal)
    assert mail.pinned_server_id is None


def test_staff_and_portal_admins_cannot_open_the_system_mail_page(app, make, portal, admin, staff):
    assert admin.get("/settings/system-mail").status_code == 403
    assert staff.post("/settings/system-mail", {"server": ""}).status_code == 403
    assert make.member(portal, "x@example.com", Role.STAFF).id


def test_the_public_url_is_checked_at_start():
    from webapp.config import public_url
    assert public_url("https://mailroom.example.com/") == "https://mailroom.example.com"
    assert public_url("https://example.com/mailroom") == "https://example.com/mailroom"
    assert public_url("") is None
    for bad in ("mailroom.example.com", "javascript:alert(1)", "https://example.com/?next=x", "https:// x"):
        with pytest.raises(ValueError, match="PUBLIC_URL"):
            public_url(bad)


def test_the_system_servers_portal_admins_see_the_recovery_mail_but_never_its_link(app, make, client, outbox,
                                                                                   system_peer):
    make.user("ann@example.com")
    ask(client, "ann@example.com")
    [mail] = deliver_all(app, outbox)
    token = link_in(system_peer.messages[0]).rsplit("/", 1)[1]
    make.member(system_peer.portal, "ops-admin@example.com", Role.ADMIN)
    ops = Client(app).login("ops-admin@example.com")
    listing = ops.get("/p/ops/queue/").text
    assert "Reset your Mailroom password" in listing and token not in listing
    page = ops.get(f"/p/ops/queue/{mail.id}")
    assert page.status_code == 200 and "ann@example.com" in page.text and token not in page.text
    assert "as soon as it was sent or failed" in page.text


def test_a_known_and_an_unknown_address_cost_the_request_the_same_work(app, make, client, system_peer):
    make.user("ann@example.com")
    make.user("gone@example.com", is_active=False)
    huey = jobs(app).huey
    ask(client, "warm-up@example.com")  # what a first request opens (the job queue's storage) is opened
    huey.flush()

    def request_for(address):
        statements = []

        def note(connection, cursor, statement, *rest):
            statements.append(statement)
        engine = app.extensions["mailroom.engine"]
        event.listen(engine, "before_cursor_execute", note)
        try:
            answer = ask(client, address)
        finally:
            event.remove(engine, "before_cursor_execute", note)
        queued = [(task.name, len(task.args)) for task in huey.pending()]
        huey.flush()
        return answer_of(answer, address), statements, queued

    known, unknown, disabled = (request_for(a) for a in ("ann@example.com", "nobody@example.com",
                                                          "gone@example.com"))
    assert known == unknown == disabled
    assert known[2] == [("recover", 1)] and any("recovery_request" in s for s in known[1])
    untouched = ('"user"', "FROM user", "password_reset", "outbound_mail", "audit_event")  # the job's tables
    assert not any(table in statement for statement in known[1] for table in untouched)


def test_the_sweep_answers_a_request_whose_job_was_lost(app, make, client, outbox, system_peer):
    make.user("ann@example.com")
    ask(client, "ann@example.com")
    jobs(app).huey.flush()  # the worker that took the job was killed
    with app.app_context():
        assert sweep.sweep(jobs(app))["recovery_requests"] == 1
        assert db.session().exec(select(RecoveryRequest)).all() == []
    [mail] = deliver_all(app, outbox)
    assert mail.state == "sent" and system_peer.messages[0].rcpt_tos == ["ann@example.com"]


def test_a_request_waits_while_no_recovery_mail_can_go_out(app, make, client, outbox, system_peer):
    make.user("ann@example.com")
    ask(client, "ann@example.com")
    with app.app_context():
        systemmail.designate(Actor("tests"), None)  # the server went away before the job ran
    assert deliver_all(app, outbox) == []
    with app.app_context():
        assert len(db.session().exec(select(RecoveryRequest)).all()) == 1
        systemmail.designate(Actor("tests"), system_peer.server_id)
        sweep.sweep(jobs(app))
    [mail] = deliver_all(app, outbox)
    assert mail.state == "sent" and len(system_peer.messages) == 1


def test_a_recovery_mail_that_fails_has_its_body_purged_at_once(app, make, client, outbox, system_peer):
    make.user("ann@example.com")
    ask(client, "ann@example.com")
    outbox.run_jobs("recover")
    with app.app_context():
        mail = db.session().exec(select(OutboundMail)).one()
        mail.expires_at = utcnow() - timedelta(seconds=1)  # the link's lifetime ran out before a server took it
        db.session().commit()
    [failed] = deliver_all(app, outbox)
    assert failed.state == "failed" and failed.raw is None and failed.purged_at is not None
    assert system_peer.messages == []


def test_held_recovery_mail_past_its_lifetime_has_its_body_purged(app, make, client, outbox, system_peer):
    make.user("ann@example.com")
    ask(client, "ann@example.com")
    outbox.run_jobs("recover")
    other = outbox.queue(system_peer.portal, subject="Kept")
    with app.app_context():
        for mail in db.session().exec(select(OutboundMail)).all():
            mail.state, mail.expires_at = "held", utcnow() - timedelta(seconds=1)
        db.session().commit()
        assert sweep.expire_held(timedelta(hours=1), utcnow()) == 2
    recovery_mail, kept = outbox.all(system_peer.portal)
    assert recovery_mail.state == kept.state == "failed" and kept.id == other
    assert recovery_mail.raw is None and recovery_mail.purged_at is not None
    assert kept.raw is not None and kept.purged_at is None
