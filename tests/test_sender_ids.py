"""Alternative sender IDs (eG): the portal's list (Settings), a member's Mail sender (Members), and the
From of mail on that member's behalf: the sample mail (to a real SMTP peer), the API (with a key they
own) and the SMTP submission listener (a real smtplib client, a credential they own). The API and the
listener refuse a From the portal does not allow."""
import re
import smtplib
from email import message_from_bytes
from email import policy as email_policy

import pytest
from sqlmodel import select

from webapp import apikeys, db, senders
from webapp.audit import Actor
from webapp.models import AuditEvent, Membership, OutboundMail, Role, SenderId, SmtpCredential, User
from webapp.submission import credentials
from webapp.submission.credentials import CredentialValues

from .delivery_fixtures import smtp_settings
from .test_submission import SCAN, relay, starttls, stored, submit  # noqa: F401  (relay: fixture)

SETTINGS = "/p/help/settings"


def sender_ids(app, portal) -> list[str]:
    with app.app_context():
        return [s.address for s in senders.all_of(portal)]


def membership_of(app, portal, user) -> Membership:
    with app.app_context():
        return db.session().exec(select(Membership).where(Membership.portal_id == portal.id,
                                                          Membership.user_id == user.id)).one()


def sender_id(app, portal, address) -> int:
    with app.app_context():
        return db.session().exec(select(SenderId.id).where(SenderId.portal_id == portal.id,
                                                           SenderId.address == address)).one()


def assign(admin, app, portal, user, address: str | None):
    membership = membership_of(app, portal, user)
    value = str(sender_id(app, portal, address)) if address else ""
    return admin.post(f"/p/help/members/{membership.id}/sender", {"sender": value})


# -- the list and the assignment ------------------------------------------------------------------

def test_an_admin_adds_validated_sender_ids_and_bad_ones_come_back_beside_the_field(app, admin, portal):
    response = admin.post("/p/help/sender-ids", {"address": "Alerts@Customer-A.example"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/settings#senders")
    assert sender_ids(app, portal) == ["alerts@customer-a.example"]
    for bad, words in (("not an address", "An email address must have an @-sign"),
                       ("alerts@customer-a.example", "is a sender ID of this portal already"),
                       ("", "This field is required")):
        response = admin.post("/p/help/sender-ids", {"address": bad})
        assert response.status_code == 422
        field = re.search(r'<input[^>]*name="address"[^>]*>', response.text).group(0)
        assert 'aria-invalid="true"' in field
        assert words in response.text
    assert sender_ids(app, portal) == ["alerts@customer-a.example"]
    page = admin.get(SETTINGS).text
    assert "alerts@customer-a.example" in page and 'id="senders"' in page
    with app.app_context():
        actions = db.session().exec(select(AuditEvent.action).where(AuditEvent.portal_id == portal.id)).all()
    assert "sender_id.added" in actions
    assert "Added the sender ID" in admin.get("/p/help/history").text


def test_the_list_is_paginated(app, admin, portal):
    with app.app_context():
        for number in range(30):
            senders.add(Actor("tests"), portal, f"customer{number:02d}@example.com")
    first = admin.get(SETTINGS).text
    assert "customer00@example.com" in first and "customer29@example.com" not in first
    following = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = admin.get(following).text
    assert "customer29@example.com" in second and "customer00@example.com" not in second
    assert 'rel="prev"' in second


def test_a_portal_keeps_at_most_its_limit(app, admin, portal, monkeypatch):
    monkeypatch.setattr(senders, "MAX_PER_PORTAL", 2)
    assert admin.post("/p/help/sender-ids", {"address": "a@example.com"}).status_code == 303
    assert admin.post("/p/help/sender-ids", {"address": "b@example.com"}).status_code == 303
    response = admin.post("/p/help/sender-ids", {"address": "c@example.com"})
    assert response.status_code == 422 and "at most 2 sender IDs" in response.text
    assert sender_ids(app, portal) == ["a@example.com", "b@example.com"]


def test_a_member_is_assigned_one_and_removing_it_falls_back_to_the_servers_from(app, admin, make, portal):
    member = make.member(portal, "agent@example.com", Role.STAFF)
    admin.post("/p/help/sender-ids", {"address": "alerts@customer-a.example"})
    page = admin.get("/p/help/members").text
    assert "Mail sender" in page and "The server&#39;s From address" in page
    assert assign(admin, app, portal, member, "alerts@customer-a.example").status_code == 303
    assert membership_of(app, portal, member).sender_id == sender_id(app, portal, "alerts@customer-a.example")
    page = admin.get("/p/help/members").text
    assert re.search(r'<option value="\d+" selected>alerts@customer-a.example</option>', page)
    history = " ".join(re.sub(r"<[^>]+>", " ", admin.get("/p/help/history").text).split())
    assert "Changed the mail sender of" in history
    assert "Mail sender: the server&#39;s From → alerts@customer-a.example" in history
    assert "Sender ID: alerts@customer-a.example" in history and "address:" not in history

    response = admin.post(f"/p/help/sender-ids/{sender_id(app, portal, 'alerts@customer-a.example')}/remove")
    assert response.status_code == 303
    assert membership_of(app, portal, member).sender_id is None
    assert sender_ids(app, portal) == []


def test_a_sender_id_of_another_portal_cannot_be_assigned_or_removed_here(app, admin, make, portal):
    member = make.member(portal, "agent@example.com", Role.STAFF)
    other = make.portal(slug="other", name="Other")
    with app.app_context():
        foreign = senders.add(Actor("tests"), other, "theirs@example.net").id
    membership = membership_of(app, portal, member)
    response = admin.post(f"/p/help/members/{membership.id}/sender", {"sender": str(foreign)})
    assert response.status_code == 422 and "Not a sender ID of this portal." in response.text
    assert membership_of(app, portal, member).sender_id is None
    assert admin.post(f"/p/help/sender-ids/{foreign}/remove").status_code == 404
    assert sender_ids(app, other) == ["theirs@example.net"]


# -- the From of mail on a member's behalf ---------------------------------------------------------

@pytest.fixture
def agent(app, make, portal, admin):
    """A staff member whose Mail sender is alerts@customer-a.example."""
    user = make.member(portal, "agent@example.com", Role.STAFF)
    admin.post("/p/help/sender-ids", {"address": "alerts@customer-a.example"})
    assert assign(admin, app, portal, user, "alerts@customer-a.example").status_code == 303
    return user


def test_the_sample_mail_of_a_member_goes_from_their_sender_id(app, make, portal, agent, admin, smtp_peer):
    from .conftest import Client
    peer = smtp_peer("plain")
    server = make.server(portal, settings=smtp_settings(peer), from_address="helpdesk@example.com",
                         sender_name="Help Desk")
    client = Client(app).login("agent@example.com")
    response = client.post(f"/p/help/servers/{server.id}/sample", {"recipient": "someone@example.org"})
    assert response.status_code == 200, response.text
    admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "someone@example.org"})
    mine, admins = peer.messages
    assert mine.message["From"] == "Help Desk <alerts@customer-a.example>"
    assert mine.mail_from == "alerts@customer-a.example"
    assert admins.message["From"] == "Help Desk <helpdesk@example.com>"  # no sender ID: the server's From


def api_post(app, key, body):
    return app.test_client(use_cookies=False).post(
        "/api/v1/portals/help/messages", json=body, headers={"Authorization": f"Bearer {key}"})


def raw_of(app, mail_id):
    with app.app_context():
        mail = db.session().get(OutboundMail, mail_id)
        return mail, message_from_bytes(mail.raw, policy=email_policy.default)


def test_the_api_uses_the_key_owners_sender_id_and_refuses_a_from_the_portal_does_not_allow(app, make, portal, agent):
    make.server(portal, from_address="helpdesk@example.com", sender_name="Help Desk")
    with app.app_context():
        mine = apikeys.create(Actor.of(agent), portal, "Agent's script")[1]
        anyones = apikeys.create(Actor("tests"), portal, "No owner")[1]
    body = {"to": ["ann@example.org"], "subject": "Hello", "text": "Hi\n"}

    response = api_post(app, mine, body)
    assert response.status_code == 202, response.text
    mail, message = raw_of(app, response.get_json()["id"])
    assert message["From"] == "Help Desk <alerts@customer-a.example>" and mail.mail_from == "alerts@customer-a.example"

    response = api_post(app, anyones, body)
    assert raw_of(app, response.get_json()["id"])[1]["From"] == "Help Desk <helpdesk@example.com>"

    response = api_post(app, anyones, {**body, "from": "Customer A <Alerts@customer-a.example>"})
    assert response.status_code == 202  # any key may use a sender ID of the portal explicitly
    assert raw_of(app, response.get_json()["id"])[1]["From"] == "Customer A <alerts@customer-a.example>"

    response = api_post(app, mine, {**body, "from": "boss@example.com"})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["field"] == "from" and "boss@example.com is not a From address of this portal" in error["message"]
    assert "alerts@customer-a.example" in error["message"] and "helpdesk@example.com" in error["message"]


def credential_of(app, portal, user, **values):
    from webapp.audit import Actor as Who
    with app.app_context():
        credential, password = credentials.create(Who.of(user), portal, CredentialValues(name="Agent's printer",
                                                                                         **values))
        return credential.username, password, credential.owner_id


def test_smtp_rewrite_from_uses_the_credential_owners_sender_id(app, make, portal, agent, relay):
    make.server(portal, from_address="helpdesk@example.com", sender_name="Help Desk")
    username, password, owner = credential_of(app, portal, agent, from_policy="rewrite")
    assert owner == agent.id
    with starttls(relay()) as client:
        client.login(username, password)
        code, reply = submit(client)
        assert code == 250, reply
    [mail] = stored(app)
    message = message_from_bytes(mail.raw, policy=email_policy.default)
    assert message["From"] == "Scanner <alerts@customer-a.example>" and mail.mail_from == "alerts@customer-a.example"


def test_smtp_listed_from_must_be_allowed_by_the_portal_too(app, make, portal, agent, relay):
    make.server(portal, from_address="helpdesk@example.com", sender_name="Help Desk")
    username, password, _ = credential_of(
        app, portal, agent, from_addresses="scanner@example.com\nalerts@customer-a.example")
    with starttls(relay()) as client:
        client.login(username, password)
        code, reply = submit(client)  # From: scanner@example.com: the credential's, but not the portal's
        assert code == 550
        assert reply.startswith(b"5.7.1 The From address scanner@example.com is not one this portal allows")
        client.rset()
        allowed = SCAN.replace(b"scanner@example.com", b"alerts@customer-a.example")
        code, reply = submit(client, allowed, sender="alerts@customer-a.example")
        assert code == 250, reply
    [mail] = stored(app)
    assert message_from_bytes(mail.raw, policy=email_policy.default)["From"] == "Scanner <alerts@customer-a.example>"
    with app.app_context():
        assert db.session().exec(select(SmtpCredential.owner_id)).one() == agent.id


def test_a_new_member_can_get_a_mail_sender_when_added(app, admin, make, portal):
    make.user("new@example.com")
    admin.post("/p/help/sender-ids", {"address": "alerts@customer-a.example"})
    chosen = str(sender_id(app, portal, "alerts@customer-a.example"))
    assert 'id="sender"' in admin.get("/p/help/members").text
    response = admin.post("/p/help/members", {"email": "new@example.com", "role": "staff", "sender": chosen})
    assert response.status_code == 303
    with app.app_context():
        user = db.session().exec(select(User).where(User.email == "new@example.com")).one()
        assert senders.sender_of(portal, user.id) == "alerts@customer-a.example"
    make.user("plain@example.com")
    assert admin.post("/p/help/members", {"email": "plain@example.com", "role": "staff"}).status_code == 303
    refused = admin.post("/p/help/members", {"email": "other@example.com", "role": "staff", "sender": "999999"})
    assert refused.status_code == 422 and "Not a valid choice" in refused.text
