"""History records only what changed, in the words of the forms: a secret as "(changed)" only when
a different one was typed (or another key file chosen), never the facts read from a stored key,
and never a secret when only the scope or another setting changed."""
from types import SimpleNamespace

import pytest
from sqlmodel import select

from webapp import db
from webapp.models import AuditEvent

from .test_gmail import GMAIL_SEND, gmail_form
from .test_oauth import CLIENT_SECRET, MAILBOX, oauth_form, save
from .test_server_form import VALID

GMAIL = SimpleNamespace(url="https://gmail.googleapis.com")  # the form's values only: nothing is contacted
AUTHORITY = SimpleNamespace(issuer="https://login.microsoftonline.com")


def changes(app) -> list[dict]:
    """The servers' History entries, oldest first."""
    with app.app_context():
        events = db.session().exec(select(AuditEvent).where(AuditEvent.action.like("server.%"))
                                   .order_by(AuditEvent.id)).all()
        return [event.changes for event in events]


def edit(admin, server, form, version: int):
    response = admin.post(f"/p/help/servers/{server.id}/edit", {**form, "version": str(version)})
    assert response.status_code == 303, response.text[-800:]


@pytest.fixture
def key(oauth_server, service_account_key) -> dict:
    return service_account_key(oauth_server, subjects={MAILBOX}, scopes={GMAIL_SEND})


def test_a_service_account_server_is_recorded_in_the_form_s_words(app, admin, key, oauth_server,
                                                                   service_account_key):
    server = save(app, admin, gmail_form(GMAIL, key))
    [created] = changes(app)
    assert created["key"] == "(changed)"
    assert not {"password", "client_email", "key_id", "token_uri", "project_id"} & set(created)
    history = admin.get("/p/help/history").text
    assert "Service-account key (JSON):</span>\n            (changed)" in history
    assert "Password:" not in history and "client_email" not in history and key["client_email"] not in history

    edit(admin, server, gmail_form(GMAIL, None, scope="https://mail.google.com/"), 1)  # the scope alone
    assert changes(app)[-1] == {"scope": [GMAIL_SEND, "https://mail.google.com/"]}

    other = service_account_key(oauth_server, subjects={MAILBOX}, scopes={GMAIL_SEND})
    edit(admin, server, gmail_form(GMAIL, other, scope="https://mail.google.com/"), 2)  # another key
    assert changes(app)[-1] == {"key": "(changed)"}


def test_changing_only_the_scope_of_an_oauth_server_records_only_the_scope(app, admin, test_ca_pem):
    relay = SimpleNamespace(port=587, ca_pem=test_ca_pem)
    server = save(app, admin, oauth_form(AUTHORITY, relay))
    assert changes(app)[0]["client_secret"] == "(changed)"
    edit(admin, server, oauth_form(AUTHORITY, relay, client_secret="", scope="https://outlook.office.com/SMTP.Send"),
         1)
    assert changes(app)[-1] == {"scope": ["https://outlook.office.com/SMTP.Send offline_access",
                                          "https://outlook.office.com/SMTP.Send"]}
    edit(admin, server, oauth_form(AUTHORITY, relay, client_secret=CLIENT_SECRET, description="Same secret"), 2)
    assert "client_secret" not in changes(app)[-1]  # typed again, but the same: nothing changed
    edit(admin, server, oauth_form(AUTHORITY, relay, client_secret="a-new-secret-VALUE"), 3)
    assert changes(app)[-1] == {"client_secret": "(changed)", "description": ["Same secret", "Microsoft relay"]}


def test_a_password_typed_again_unchanged_is_not_recorded_as_changed(app, admin):
    server = save(app, admin, VALID)
    assert changes(app)[0]["password"] == "(changed)"
    edit(admin, server, {**VALID, "description": "Renamed"}, 1)  # the same password typed again
    assert changes(app)[-1] == {"description": ["Office relay", "Renamed"]}
    edit(admin, server, {**VALID, "password": "Another-1", "confirm_password": "Another-1"}, 2)
    assert changes(app)[-1] == {"password": "(changed)", "description": ["Renamed", "Office relay"]}
