"""The Gmail API as a protocol, against a Gmail endpoint on loopback (tests/peers/gmail.py); tokens
from the real authorization server: Google's JWT bearer grant for a service-account key (checked
against the key's public half) or Google OAuth consent."""
import io
import json
import re

import pytest

from .test_oauth import (CLIENT_ID, CLIENT_SECRET, MAILBOX, OWNER_PASSWORD, REDIRECT_URI, authorize, credential,
                         payload, save)

GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"


@pytest.fixture
def gmail(oauth_server, gmail_peer):
    return gmail_peer(oauth_server, users={MAILBOX, "other@example.test"})


@pytest.fixture
def key(oauth_server, service_account_key) -> dict:
    return service_account_key(oauth_server, subjects={MAILBOX, "nobody@example.test"}, scopes={GMAIL_SEND})


def key_file(key: dict) -> tuple:
    return io.BytesIO(json.dumps(key).encode()), "service-account.json"


def gmail_form(gmail, service_key: dict | None, **overrides) -> dict:
    form = {"description": "Gmail API", "protocol": "gmail", "gmail_endpoint": gmail.url, "timeout": "10",
            "auth_type": "service_account", "username": MAILBOX, "scope": GMAIL_SEND,
            "from_address": MAILBOX, "sender_name": "Help Desk", "reply_to": "support@example.test",
            "max_connections": "5", "enabled": "y", "_shown": ["gmail", "service_account"]}
    if service_key is not None:
        form["key"] = key_file(service_key)
    return {**form, **overrides}


def test_a_service_account_key_is_checked_stored_and_never_shown(app, admin, gmail, key):
    server = save(app, admin, gmail_form(gmail, key))
    stored = credential(app, server.id)
    assert stored.kind == "service_account" and stored.username == MAILBOX
    assert stored.provider == {"client_email": key["client_email"], "key_id": key["private_key_id"],
                               "token_uri": key["token_uri"], "project_id": key["project_id"], "scope": GMAIL_SEND}
    assert payload(app, server.id)["key"] == key
    page = admin.get(f"/p/help/servers/{server.id}/edit").text
    assert f"A key is stored for <strong>{key['client_email']}</strong> (key ID {key['private_key_id']}" in page
    assert "PRIVATE KEY" not in page and key["private_key_id"] in page
    assert "PRIVATE KEY" not in admin.get("/p/help/history").text


@pytest.mark.parametrize("content, error", [
    (b"not json", "This is not a JSON key file"),
    (json.dumps({"type": "authorized_user"}).encode(), "This is not a service-account key"),
    (None, "The key&#39;s private_key cannot be read."),
])
def test_a_file_that_is_not_a_usable_key_is_refused_beside_the_field(app, admin, gmail, key, content, error):
    if content is None:
        content = json.dumps({**key, "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}
                             ).encode()
    response = admin.post("/p/help/servers/new", gmail_form(gmail, None, key=(io.BytesIO(content), "key.json")))
    assert response.status_code == 422
    assert error in re.search(r'<small id="key-help" class="error">([^<]*)</small>', response.text).group(1)
    assert 'aria-invalid="true"' in re.search(r'<input type="file" id="key"[^>]*>', response.text).group(0)


def test_validate_and_a_sample_mail_with_a_service_account(app, admin, staff, oauth_server, gmail, key):
    server = save(app, admin, gmail_form(gmail, key))
    report = staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report
    assert "obtained a new access token" in report and f"Acts as</dt><dd>{MAILBOX}" in report
    assert "the token may not read the mailbox&#39;s profile (that needs more than gmail.send)" in report
    assert [r["grant_type"] for r in oauth_server.requests] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent and re.search(r"Server reply: <code>200 OK, id \w+", sent)
    assert len(oauth_server.requests) == 1  # the token of the check was kept and used again
    [mail] = gmail.sent
    assert mail.sub == MAILBOX and mail.mailbox == MAILBOX
    assert mail.mime["To"] == "jane@example.org" and mail.mime["Reply-To"] == "support@example.test"
    assert mail.mime["From"].addresses[0].display_name == "Help Desk" and "Gmail API" in mail.mime["Subject"]
    token = payload(app, server.id)["access_token"]
    assert token not in report and token not in sent


def test_a_mailbox_the_service_account_may_not_act_for_is_explained(app, admin, oauth_server, gmail, key):
    server = save(app, admin, gmail_form(gmail, key, username="someone@elsewhere.test", from_address=MAILBOX))
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "Validation failed at “Token”:" in report
    assert "the service account may not act for the mailbox with this scope" in report
    assert "Domain-wide delegation" in report


def test_a_mailbox_without_gmail_is_explained(app, admin, gmail, key):
    server = save(app, admin, gmail_form(gmail, key, username="nobody@example.test"))
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.org"}, htmx=True).text
    assert "The mail was not sent:" in sent
    assert "nobody@example.test has no Gmail mailbox, or the service account may not act for it" in sent


def test_google_consent_works_with_the_gmail_api(app, admin, oauth_server, gmail, test_ca_file):
    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
    form = gmail_form(gmail, None, auth_type="oauth", provider="google", flow="delegated", client_id=CLIENT_ID,
                      client_secret=CLIENT_SECRET, authorize_url=oauth_server.authorize_url,
                      token_url=oauth_server.token_url, _shown=["gmail", "oauth"])
    server = save(app, admin, form)
    assert credential(app, server.id).provider["scope"] == GMAIL_SEND
    assert authorize(admin, server, test_ca_file).status_code == 200
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report
    assert admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.org"},
                      htmx=True).status_code == 200
    assert [mail.sub for mail in gmail.sent] == [MAILBOX]


def test_gmail_offers_a_service_account_or_google_consent(admin):
    form = admin.post("/p/help/servers/new", {"protocol": "gmail", "auth_type": "basic", "_action": "refresh"},
                      htmx=True).text
    assert re.search(r'<select id="auth_type"[^>]*><option value="service_account" selected>Service account key'
                     r'</option><option value="oauth">OAuth 2.0</option></select>', form)
    assert '<input type="file" id="key" name="key"' in form and 'accept=".json,application/json"' in form


def test_a_scope_that_cannot_send_fails_validate_at_the_token(app, admin, oauth_server, gmail, service_account_key):
    readonly = "https://www.googleapis.com/auth/gmail.readonly"
    narrow = service_account_key(oauth_server, subjects={MAILBOX}, scopes={readonly})
    server = save(app, admin, gmail_form(gmail, narrow, scope=readonly))
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "Validation failed at “Token”:" in report
    assert f"the token may not send mail: it was granted only {readonly}" in report
    assert "allow it for its client ID under Domain-wide delegation" in report
    assert not gmail.requests  # Google gave the token, but it was never used for a call that cannot succeed


# --- the From Gmail uses, its size limits and its rate limits ---------------------------------------------------

SETTINGS = "https://www.googleapis.com/auth/gmail.settings.basic"
METADATA = "https://www.googleapis.com/auth/gmail.metadata"


def transport_send(app, server_id: int, envelope):
    """The transport itself, with the saved settings, as the delivery queue calls it."""
    from webapp import checks, db
    from webapp.mail.transport import transport_for
    from webapp.models import MailServer, Portal

    with app.app_context():
        server = db.session().get(MailServer, server_id)
        config = checks.config_for(db.session().get(Portal, server.portal_id), server)
        return transport_for("gmail").send(config, envelope)


def envelope_of(size: int = 0, sender: str = MAILBOX):
    from email.message import EmailMessage

    from webapp.mail.envelope import Envelope

    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, "jane@example.org", "Report"
    message.set_content("See the attachment.")
    message.add_attachment(b"x" * size, maintype="application", subtype="octet-stream", filename="data.bin")
    return Envelope.of(message)


def scoped_key(oauth_server, service_account_key, *scopes):
    return service_account_key(oauth_server, subjects={MAILBOX}, scopes={GMAIL_SEND, *scopes})


def test_validate_checks_a_from_against_the_alias_list_when_the_scope_allows(app, admin, oauth_server, gmail,
                                                                              service_account_key):
    gmail.add_alias(MAILBOX, "desk@example.test")
    key = scoped_key(oauth_server, service_account_key, SETTINGS)
    alias = save(app, admin, gmail_form(gmail, key, scope=f"{GMAIL_SEND} {SETTINGS}", from_address="desk@example.test"))
    report = admin.post(f"/p/help/servers/{alias.id}/check", htmx=True).text
    assert "All checks passed." in report
    assert f"desk@example.test is a “Send mail as” address of {MAILBOX}: Gmail keeps it as the From" in report
    other = {**gmail_form(gmail, key, scope=f"{GMAIL_SEND} {SETTINGS}", from_address="noreply@example.org")}
    report = admin.post("/p/help/servers/new/validate", other, htmx=True).text
    assert f"noreply@example.org is not a “Send mail as” address of {MAILBOX}: Gmail will send mail From {MAILBOX} " \
           "instead (and report success)" in report


def test_validate_says_when_the_alias_list_cannot_be_read(app, admin, gmail, key):
    report = admin.post("/p/help/servers/new/validate", gmail_form(gmail, key, from_address="noreply@example.org"),
                        htmx=True).text
    assert "All checks passed." in report
    assert "Whether it is could not be checked: reading the alias list needs the scope gmail.settings.basic" in report
    assert [r.path for r in gmail.requests if "sendAs" in r.path] == []


def test_the_receipt_says_which_from_google_used(app, admin, oauth_server, gmail, service_account_key):
    key = scoped_key(oauth_server, service_account_key, METADATA)
    server = save(app, admin, gmail_form(gmail, key, scope=f"{GMAIL_SEND} {METADATA}",
                                         from_address="noreply@example.org"))
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent
    assert f"Google replaced the From noreply@example.org with {MAILBOX}: noreply@example.org is not a verified " \
           f"“Send mail as” address of {MAILBOX}." in sent
    gmail.add_alias(MAILBOX, "noreply@example.org")
    receipt = transport_send(app, server.id, envelope_of(sender="noreply@example.org"))
    assert receipt.report.notes == ["Google sent it From noreply@example.org."]


def test_the_receipt_says_when_the_from_could_not_be_checked(app, admin, gmail, key):
    server = save(app, admin, gmail_form(gmail, key, from_address="noreply@example.org"))
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent
    assert "Which From Google used could not be checked (reading the sent message needs the scope gmail.metadata" \
           in sent
    same = transport_send(app, server.id, envelope_of())
    assert same.report.notes == [] and same.report.step("From") is None  # the mailbox's own From: nothing to check


def test_a_large_message_goes_through_the_upload_endpoint(app, admin, gmail, key):
    server = save(app, admin, gmail_form(gmail, key))
    small, large = envelope_of(1000), envelope_of(4_500_000)
    transport_send(app, server.id, small)
    receipt = transport_send(app, server.id, large)
    assert [mail.upload for mail in gmail.sent] == ["", "media"]
    assert [mail.raw for mail in gmail.sent] == [small.raw, large.raw]
    assert "through the upload endpoint" in receipt.report.step("Message").summary


def test_a_message_over_35_mb_is_refused_before_sending(app, admin, gmail, key):
    from webapp.mail.report import DeliveryError

    server = save(app, admin, gmail_form(gmail, key))
    with pytest.raises(DeliveryError) as refused:
        transport_send(app, server.id, envelope_of(36 * 1024 * 1024))
    assert refused.value.step == "Message" and refused.value.temporary is False
    assert "Gmail takes at most 35 MB" in str(refused.value) and gmail.requests == []


@pytest.mark.parametrize("reason, words, timed", [
    ("userRateLimitExceeded", f"Google is limiting how fast {MAILBOX} may send (403 userRateLimitExceeded)", True),
    ("429", f"Google is limiting how fast {MAILBOX} may send (429 rateLimitExceeded)", True),
    ("rateLimitExceeded", f"Google is limiting how fast {MAILBOX} may send (403 rateLimitExceeded)", False),
    ("dailyLimitExceeded", f"the mailbox {MAILBOX} reached Google&#39;s daily sending limit", False),
])
def test_rate_limits_are_temporary_with_googles_retry_time(app, admin, gmail, key, reason, words, timed):
    from webapp.mail.report import DeliveryError

    server = save(app, admin, gmail_form(gmail, key))
    gmail.throttle(1, retry_after=120, reason=reason)
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.org"}, htmx=True).text
    assert words in sent and "scope" not in sent.split("The mail was not sent:")[1].split("</header>")[0]
    gmail.throttle(1, retry_after=120, reason=reason)
    with pytest.raises(DeliveryError) as limited:
        transport_send(app, server.id, envelope_of())
    assert limited.value.temporary and not limited.value.credentials
    if timed:  # the time Google wrote in its message, not a header
        assert 100 < limited.value.retry_after <= 120
    else:
        assert limited.value.retry_after is None


def test_consecutive_messages_share_one_kept_connection(app, admin, gmail, key):
    """A worker's messages to one Gmail server go over one HTTPS connection (keep-alive), the
    token fetched once and then taken from the cache."""
    from webapp import checks, db
    from webapp.mail.transport import open_connection
    from webapp.models import MailServer, Portal

    server = save(app, admin, gmail_form(gmail, key))
    with app.app_context():
        config = checks.config_for(db.session().get(Portal, server.portal_id), db.session().get(MailServer, server.id))
        connection = open_connection(config)
        try:
            receipts = [connection.send(envelope_of()) for _ in range(3)]
        finally:
            connection.close()
    assert all(receipt.message_id for receipt in receipts)
    sends = [r for r in gmail.requests if r.path.endswith("/messages/send")]
    assert [r.status for r in sends] == [200, 200, 200]
    assert len({r.client for r in sends}) == 1
