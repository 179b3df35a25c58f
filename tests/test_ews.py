"""Exchange Web Services as a protocol, through the real pages, against the EWS peer on loopback
(tests/peers/ews.py), with bearer tokens from the real authorization server (tests/peers/oauth.py)
that the peer introspects."""
import base64
import gc
import html
import logging
import re
import socket
import ssl
import threading
import time

import pytest
import trustme
from exchangelib.protocol import CachingProtocol

from tests.delivery_fixtures import outbox  # noqa: F401  (fixture)
from tests.peers.ews import EwsPeer
from tests.peers.tls import server_context
from webapp import audit, checks, db, network
from webapp.mail.egress import Network
from webapp.models import AppSetting, MailServer, Portal

from .test_oauth import (CLIENT_ID, CLIENT_SECRET, MAILBOX, OWNER_PASSWORD, REDIRECT_URI, TENANT, at_the_provider,
                         authorize, back_at_mailroom, payload, save, to_the_provider)

SENDER = MAILBOX  # sender@example.test: the peer's mailbox "Sender"
USERNAME = "EXAMPLE\\mailer"
PASSWORD = "Ews-Pass-7wq"
EWS_DELEGATED = "https://outlook.office365.com/EWS.AccessAsUser.All offline_access"
EWS_APP = "https://outlook.office365.com/.default"
ONLINE = "outlook.office365.com"


@pytest.fixture
def peer(ews_peer):
    return ews_peer(users={USERNAME: PASSWORD})


def ews_form(peer, **overrides) -> dict:
    form = {
        "description": "Exchange on premises", "protocol": "ews", "ews_url": peer.url, "ews_version": "auto",
        "mailbox": SENDER, "timeout": "10", "auth_type": "basic", "username": USERNAME, "password": PASSWORD,
        "confirm_password": PASSWORD, "mechanism": "auto", "from_address": SENDER, "sender_name": "Help Desk",
        "reply_to": "support@example.test", "max_connections": "5", "enabled": "y", "_shown": ["ews", "basic"],
    }
    return {k: v for k, v in {**form, **overrides}.items() if v is not None}


def oauth_ews_form(authority, peer, **overrides) -> dict:
    form = ews_form(peer, auth_type="oauth", provider="microsoft", cloud="global", tenant=TENANT,
                    flow="delegated", username=MAILBOX, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                    authorize_url=f"{authority.issuer}/{TENANT}/oauth2/v2.0/authorize",
                    token_url=f"{authority.issuer}/{TENANT}/oauth2/v2.0/token", scope=EWS_DELEGATED,
                    password=None, confirm_password=None, mechanism=None, _shown=["ews", "oauth", "microsoft"])
    return {**form, **overrides}


def secrets_of(*values: str) -> list[str]:
    """A secret as itself and as it would travel in a Basic header."""
    found = [v for v in values if v]
    found += [base64.b64encode(f"{USERNAME}:{v}".encode()).decode() for v in values if v]
    return found


def assert_nothing_leaks(texts, secrets) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text


def history(client) -> str:
    return client.get("/p/help/history").text


# --- the form -------------------------------------------------------------------------------------------

def test_the_form_offers_basic_ntlm_and_oauth_and_warns_about_exchange_online(admin):
    form = admin.post("/p/help/servers/new", {"protocol": "ews", "auth_type": "none", "_action": "refresh"},
                      htmx=True).text
    assert re.search(r'<select id="auth_type"[^>]*><option value="basic" selected>Basic</option>'
                     r'<option value="oauth">OAuth 2.0</option></select>', form)
    assert '<option value="ntlm">NTLM</option>' in form
    assert "Automatic (Basic, or NTLM when the server asks)" in form
    for label in ("Connect URL", "Exchange version", "Mailbox", "Save a copy to Sent Items",
                  "CA certificate (PEM, optional)"):
        assert f">{label}</label>" in form or f"> {label}</label>" in form, label
    assert "Mailroom does not use Autodiscover" in form
    assert 'name="host"' not in form and '<div id="ews-online"></div>' in form
    assert 'hx-target="#ews-online"' in form

    # a change of the Connect URL swaps only the warning: nothing typed meanwhile elsewhere is replaced
    online = admin.post("/p/help/servers/new/section/ews",
                        {"protocol": "ews", "ews_url": f"https://{ONLINE}/EWS/Exchange.asmx", "_shown": ["ews"]},
                        htmx=True, headers={"HX-Trigger-Name": "ews_url"})
    assert online.status_code == 200 and online.text.strip().startswith('<div id="ews-online">')
    assert "Microsoft has been blocking EWS there since October 2026" in online.text
    assert "Use Microsoft Graph for Exchange Online mailboxes." in online.text
    assert 'name="' not in online.text
    on_premises = admin.post("/p/help/servers/new/section/ews",
                             {"protocol": "ews", "ews_url": "https://mail.example.com/EWS/Exchange.asmx",
                              "_shown": ["ews"]}, htmx=True).text
    assert on_premises.strip() == '<div id="ews-online"></div>'

    bare = admin.post("/p/help/servers/new", {**ews_form(type("P", (), {"url": "https://mail.example.com"})),
                                             "mailbox": "not an address"})
    assert bare.status_code == 422
    assert "Enter the whole EWS address, e.g. https://mail.example.com/EWS/Exchange.asmx." in bare.text
    assert re.search(r'<small id="mailbox-help" class="error">', bare.text)


# --- Basic ----------------------------------------------------------------------------------------------

def test_basic_save_validate_and_a_sample_mail(app, admin, staff, peer, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, exchangelib's and requests' too, is checked below
    server = save(app, admin, ews_form(peer))
    assert server.settings == {"ews_url": peer.url, "ews_version": "auto", "mailbox": SENDER, "save_copy": False,
                               "ews_ca_cert": ""}
    assert server.credential.kind == "password" and server.credential.mechanism == "auto"
    listing = admin.get("/p/help/servers/").text
    assert "Exchange Web Services (EWS)" in listing and peer.url in listing

    report = staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report and "Exchange accepts the sign-in and knows the mailbox." in report
    assert "Exchange knows the mailbox sender@example.test (Sender)" in report
    assert "signed in with Basic" in report and "verified: trusted issuer, name matches" in report
    assert "Microsoft Exchange Server 2016 (build 15.1.2507.6" in report
    assert f"C: POST {peer.url} (ConvertId)" in report  # the version probe: the version is "auto"
    assert f"C: POST {peer.url} (ResolveNames)" in report and "S: 200 OK (NoError)" in report
    assert "EWS requests" in report
    assert peer.operations() == ["ConvertId", "ResolveNames"] and peer.sent == []
    assert {(r.auth_scheme, r.user) for r in peer.requests} == {("basic", USERNAME)}

    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent
    assert "EWS accepted the message (CreateItem SendOnly)" in sent
    [mail] = peer.sent
    assert (mail.mailbox, mail.disposition, mail.saved) == (SENDER, "SendOnly", False)
    assert mail.fields["mime_content"] is not None  # MimeContent: the message as Mailroom built it
    message = mail.mime
    assert message["From"].addresses[0].display_name == "Help Desk"
    assert message["From"].addresses[0].addr_spec == SENDER
    assert message["Reply-To"] == "support@example.test" and message["To"] == "jane@example.org"
    assert message["Subject"] == "Mailroom sample mail from Help Desk via Exchange on premises"
    assert html.escape(message["Message-ID"]) in sent
    assert mail.recipients == ["jane@example.org"] and mail.auth == ("basic", USERNAME)

    assert CachingProtocol._protocol_cache == {}  # exchangelib kept no protocol (nor the password) for the process
    logs = "\n".join(record.getMessage() for record in caplog.records)
    page = admin.get(f"/p/help/servers/{server.id}/edit").text
    assert_nothing_leaks([report, sent, page, history(admin), logs, listing], secrets_of(PASSWORD))
    assert "Authorization" not in report and "Basic realm" not in report


def test_send_and_save_with_a_chosen_version(app, admin, peer):
    server = save(app, admin, ews_form(peer, save_copy="y", ews_version="Exchange2016"))
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report
    assert peer.operations() == ["ResolveNames"]  # a chosen version: no probe
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "EWS accepted the message (CreateItem SendAndSaveCopy)" in sent
    assert peer.operations()[1:] == ["GetFolder", "GetFolder", "CreateItem"]
    [mail] = peer.sent
    assert (mail.disposition, mail.saved, mail.saved_folder) == ("SendAndSaveCopy", True, "sentitems")
    assert peer.saved == {(SENDER, "sentitems"): 1}
    assert {r.request_version for r in peer.requests} == {"Exchange2016"}


def test_ntlm_when_the_server_asks_for_it(app, admin, peer):
    peer.require_ntlm = True
    automatic = admin.post("/p/help/servers/new/validate", ews_form(peer), htmx=True).text
    assert "All checks passed." in automatic
    assert "NTLM (the server does not take Basic)" in automatic and "signed in with NTLM" in automatic
    assert re.search(r"C: POST \S+ \(ConvertId\)\nS: 401 ", automatic)  # Basic first, then NTLM's handshake

    basic = admin.post("/p/help/servers/new/validate", ews_form(peer, mechanism="basic"), htmx=True).text
    assert "Validation failed at “Sign in”:" in basic
    assert "Exchange refused the sign-in of EXAMPLE\\mailer with Basic (401 Unauthorized)" in basic
    assert "the server does not take Basic: choose the mechanism “NTLM” (or Automatic)" in basic
    assert "<dt>The server offers</dt><dd>Negotiate, NTLM</dd>" in basic

    server = save(app, admin, ews_form(peer, mechanism="ntlm"))
    assert "All checks passed." in admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent
    [mail] = peer.sent
    assert mail.auth[0] == "ntlm" and mail.auth[1].lower().endswith("mailer")
    assert_nothing_leaks([automatic, basic, sent], secrets_of(PASSWORD))


def test_the_servers_own_ca_certificate(app, admin, ews_peer):
    own = trustme.CA()  # not the app's EXTRA_CA_CERTS
    peer = EwsPeer(server_context(own), {SENDER: {"name": "Sender"}}, {USERNAME: PASSWORD})
    try:
        refused = admin.post("/p/help/servers/new/validate", ews_form(peer), htmx=True).text
        assert "Validation failed at “Connect”:" in refused
        assert "the TLS certificate of 127.0.0.1 could not be verified" in refused
        assert peer.requests == []
        trusted = admin.post("/p/help/servers/new/validate",
                             ews_form(peer, ews_ca_cert=own.cert_pem.bytes().decode()), htmx=True).text
        assert "All checks passed." in trusted
    finally:
        peer.stop()


# --- OAuth ----------------------------------------------------------------------------------------------

@pytest.fixture
def authority(oauth_server):
    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI], app_roles={"full_access_as_app"})
    return oauth_server


APP_LOGGERS = ("webapp", "flask", "werkzeug", "urllib3", "requests", "sqlalchemy", "exchangelib")


def test_oauth_delegated_consent_validate_and_a_sample_mail(app, admin, staff, authority, ews_peer, test_ca_file,
                                                           caplog):
    caplog.set_level(logging.DEBUG)
    peer = ews_peer(verifier=authority)
    form = oauth_ews_form(authority, peer, mailbox="")
    assert admin.post("/p/help/servers/new", {**form, "_action": "refresh", "scope": ""}).text.count(
        f'value="{EWS_DELEGATED}"') == 1  # the default scope for EWS, delegated
    server = save(app, admin, form)
    assert authorize(admin, server, test_ca_file).status_code == 200

    report = staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report
    assert "the stored access token is still valid" in report and "signed in with an OAuth 2.0 access token" in report
    assert "Exchange knows the mailbox sender@example.test (Sender)" in report
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "EWS accepted the message (CreateItem SendOnly)" in sent
    [mail] = peer.sent
    assert mail.auth == ("bearer", MAILBOX) and mail.mailbox == SENDER
    assert {(r.auth_scheme, r.impersonated) for r in peer.requests} == {("bearer", None)}

    token = payload(app, server.id)["access_token"]
    logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(APP_LOGGERS))
    assert_nothing_leaks([report, sent, history(admin), logs, admin.get(f"/p/help/servers/{server.id}/edit").text],
                         [token, CLIENT_SECRET])
    assert [r["grant_type"] for r in authority.requests] == ["authorization_code"]  # exchangelib fetched nothing


def test_oauth_app_only_impersonates_the_mailbox_with_an_anchor(app, admin, authority, ews_peer, test_ca_file):
    peer = ews_peer(verifier=authority)
    form = oauth_ews_form(authority, peer, flow="app", scope=EWS_APP, authorize_url="", mailbox="")
    server = save(app, admin, form)
    start = to_the_provider(admin, f"/p/help/servers/{server.id}/oauth/admin-consent")
    back_at_mailroom(admin, at_the_provider(start, test_ca_file, action="accept"))

    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report and "app-only, impersonating the mailbox" in report
    assert "<dt>Impersonated</dt><dd>sender@example.test</dd>" in report
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent
    assert {(r.auth_scheme, r.user, r.impersonated, r.anchor) for r in peer.requests} == {
        ("bearer", CLIENT_ID, SENDER, SENDER)}
    [mail] = peer.sent
    assert (mail.mailbox, mail.auth) == (SENDER, ("bearer", CLIENT_ID))
    assert [r["grant_type"] for r in authority.requests if r["outcome"] == "ok"] == ["client_credentials"]
    assert payload(app, server.id)["access_token"] not in report + sent


def test_an_app_without_full_access_as_app_is_told_what_to_grant(app, admin, oauth_server, ews_peer,
                                                                  test_ca_file):
    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI], app_roles={"Mail.Send"})
    peer = ews_peer(verifier=oauth_server)
    server = save(app, admin, oauth_ews_form(oauth_server, peer, flow="app", scope=EWS_APP, authorize_url=""))
    start = to_the_provider(admin, f"/p/help/servers/{server.id}/oauth/admin-consent")
    back_at_mailroom(admin, at_the_provider(start, test_ca_file, action="accept"))
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "Validation failed at “Sign in”:" in report
    assert "the token may not use EWS (403 Forbidden: not enough scope)" in report
    assert "full_access_as_app" in report


# --- errors in words ------------------------------------------------------------------------------------

def send_sample(app, server_id: int, recipient: str = "jane@example.org"):
    """The service itself, for what the page does not show (temporary or permanent)."""
    with app.app_context():
        server = db.session().get(MailServer, server_id)
        portal = db.session().get(Portal, server.portal_id)
        return checks.send_sample(audit.COMMAND_LINE, portal, server, recipient)


def test_a_wrong_password(app, admin, peer):
    report = admin.post("/p/help/servers/new/validate", ews_form(peer, password="wrong-one-1",
                                                                confirm_password="wrong-one-1"), htmx=True).text
    assert "Validation failed at “Sign in”:" in report
    assert "Exchange refused the sign-in of EXAMPLE\\mailer with Basic (401 Unauthorized)" in report
    assert "check the username and the password" in report
    server = save(app, admin, ews_form(peer, password="wrong-one-1", confirm_password="wrong-one-1"))
    result = send_sample(app, server.id)
    assert result.error is not None and result.error.temporary and result.error.code == 401
    assert peer.sent == []


def test_an_unknown_mailbox(app, admin, peer):
    server = save(app, admin, ews_form(peer, mailbox="nobody@example.test", from_address="nobody@example.test"))
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "Validation failed at “Mailbox”:" in report
    assert "Exchange knows no mailbox nobody@example.test (ErrorNameResolutionNoResults)" in report
    assert "✔ Sign in" in report
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "The mail was not sent:" in sent
    assert "Exchange has no mailbox nobody@example.test (ErrorNonExistentMailbox)" in sent
    result = send_sample(app, server.id)
    assert result.error is not None and result.error.temporary is False


def test_send_as_denied(app, admin, peer):
    server = save(app, admin, ews_form(peer, from_address="ceo@example.test"))
    assert "All checks passed." in admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "the account EXAMPLE\\mailer may not send as ceo@example.test (ErrorSendAsDenied)" in sent
    assert "give the account “Send As” on that mailbox" in sent
    result = send_sample(app, server.id)
    assert result.error is not None and result.error.temporary is False
    assert peer.sent == []


def test_a_soap_fault(app, admin, peer):
    peer.fault_next("ErrorInternalServerError", "An internal server error occurred. The operation failed.")
    report = admin.post("/p/help/servers/new/validate", ews_form(peer), htmx=True).text
    assert "Validation failed at “Sign in”:" in report
    assert ("Exchange answered with a SOAP fault: ErrorInternalServerError: An internal server error occurred. "
            "The operation failed.") in report
    assert re.search(r"S: 500 [A-Za-z ]+ \(ErrorInternalServerError\)", report)
    server = save(app, admin, ews_form(peer, ews_version="Exchange2016"))
    peer.fault_next("ErrorSchemaValidation", "The request failed schema validation.", "CreateItem")
    result = send_sample(app, server.id)
    assert result.error is not None and result.error.temporary and result.error.code == 500
    assert "ErrorSchemaValidation" in str(result.error)


def test_throttling(app, admin, peer):
    server = save(app, admin, ews_form(peer, ews_version="Exchange2016"))
    peer.throttle(1, back_off_ms=30000)
    started = time.monotonic()
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert time.monotonic() - started < 5  # FailFast: no sleeping through the back-off
    assert "Exchange is throttling this account (ErrorServerBusy) for 30 s" in sent
    assert "try again after 30 s" in sent
    peer.throttle(1, back_off_ms=30000)
    result = send_sample(app, server.id)
    assert result.error is not None and result.error.temporary
    assert result.error.throttled and result.error.retry_after == 30  # BackOffMilliseconds, for the delivery queue
    assert send_sample(app, server.id).receipt is not None  # the next one goes


@pytest.fixture
def online_peer(test_ca, monkeypatch):
    """The peer as outlook.office365.com: the portal's network resolves that name to 127.0.0.1."""
    def resolve(host, port, *args):
        return socket.getaddrinfo("127.0.0.1" if host == ONLINE else host, port, *args)

    real = network.for_portal
    monkeypatch.setattr(network, "for_portal", lambda portal: Network(real(portal).policy,
                                                                       real(portal).extra_ca_pem, resolve))
    peer = EwsPeer(server_context(test_ca, ONLINE), {SENDER: {"name": "Sender"}}, {USERNAME: PASSWORD})
    peer.online_blocked = True
    yield peer
    peer.stop()


def test_exchange_online_is_warned_about_and_its_403_explained(app, admin, online_peer):
    url = f"https://{ONLINE}:{online_peer.origin.rsplit(':', 1)[1]}/EWS/Exchange.asmx"
    server = save(app, admin, ews_form(online_peer, ews_url=url))
    page = admin.get(f"/p/help/servers/{server.id}/edit").text
    assert "Microsoft has been blocking EWS there since October 2026" in page
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "⚠ Exchange Online" in report and "choose the protocol “Microsoft Graph”" in report
    assert "Validation failed at “Sign in”:" in report
    assert ("Exchange Online refuses EWS for this organization (403 Forbidden): Microsoft has been blocking EWS in "
            "Exchange Online since October 2026") in report
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "The mail was not sent:" in sent and "Exchange Online refuses EWS" in sent
    assert "Use Microsoft Graph for Exchange Online mailboxes." in sent  # the note above the steps
    assert online_peer.sent == []


@pytest.fixture
def default_policy(app):
    """No global allow list: loopback is refused, as on a new installation."""
    with app.app_context():
        db.session().get(AppSetting, "egress").value = {"allow": "", "deny": ""}
        db.session().commit()


def test_the_egress_policy_refuses_the_ews_host_before_any_connection(app, admin, peer, default_policy):
    server = save(app, admin, ews_form(peer))
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "Validation failed at “Connect”:" in report
    assert "127.0.0.1 is a loopback address (this machine) (built-in rule)" in report
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "The mail was not sent:" in sent and "the egress policy refuses 127.0.0.1" in sent
    assert "S: (not sent: the egress policy refuses this address)" in sent
    assert peer.requests == []


class Silent:
    """A server that accepts and never answers; with a context, it completes the TLS handshake and reads the
    request first."""

    def __init__(self, context: ssl.SSLContext | None = None):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.context, self.held, self.requests = context, [], 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.context is None:
                self.held.append(conn)  # open, silent: not even a TLS handshake
                continue
            try:
                tls = self.context.wrap_socket(conn, server_side=True)
                if tls.recv(65536):
                    self.requests += 1
                self.held.append(tls)  # open, silent
            except OSError:
                conn.close()

    def stop(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_the_deadline_holds_against_silent_endpoints(app, admin, test_ca):
    started = time.monotonic()
    silent = Silent()  # accepts, never shakes hands
    try:
        url = f"https://127.0.0.1:{silent.port}/EWS/Exchange.asmx"
        report = admin.post("/p/help/servers/new/validate",
                            ews_form(type("P", (), {"url": url}), timeout="2"), htmx=True).text
        assert "Validation failed at “Connect”:" in report and "no answer within 2 s" in report
    finally:
        silent.stop()

    mute = Silent(server_context(test_ca))
    try:
        url = f"https://127.0.0.1:{mute.port}/EWS/Exchange.asmx"
        report = admin.post("/p/help/servers/new/validate",
                            ews_form(type("P", (), {"url": url}), timeout="2"), htmx=True).text
        assert "✔ Connect" in report and "Validation failed at “Sign in”:" in report
        assert "no answer within 2 s" in report
        server = save(app, admin, ews_form(type("P", (), {"url": url}), timeout="2"))
        result = send_sample(app, server.id)
        assert result.error is not None and result.error.temporary and "no answer within 2 s" in str(result.error)
        assert mute.requests >= 2
    finally:
        mute.stop()
    assert time.monotonic() - started < 30  # a hang guard: well under the test's own limits


def test_the_stored_password_goes_only_to_the_url_and_trust_it_was_saved_for(app, admin, peer, test_ca_pem):
    server = save(app, admin, ews_form(peer))
    keep = ews_form(peer, password="", confirm_password="", mailbox="", version="1", save_copy="y")
    assert admin.post(f"/p/help/servers/{server.id}/edit", keep).status_code == 303  # same URL: kept
    elsewhere = {**keep, "version": "2", "ews_url": "https://exchange.example.com/EWS/Exchange.asmx"}
    moved = admin.post(f"/p/help/servers/{server.id}/edit", elsewhere)
    assert moved.status_code == 422 and "enter the password again to use it there" in moved.text
    trusting = {**keep, "version": "2", "ews_ca_cert": test_ca_pem}
    assert "enter the password again" in admin.post(f"/p/help/servers/{server.id}/validate", trusting).text
    changes = history(admin)
    assert "Save a copy to Sent Items" in changes and PASSWORD not in changes


# --- something that is not EWS, and Exchange's permissions ------------------------------------------------------

def test_a_port_that_does_not_speak_tls_is_one_clear_sentence(admin, banner_peer):
    smtp = banner_peer("220 mail.example.com ESMTP Postfix")
    url = f"https://127.0.0.1:{smtp.port}/EWS/Exchange.asmx"
    report = admin.post("/p/help/servers/new/validate", ews_form(type("P", (), {"url": url})), htmx=True).text
    assert "Validation failed at “Connect”:" in report
    assert f"127.0.0.1 port {smtp.port} does not speak TLS: it is not an HTTPS server (perhaps plain HTTP, or " \
           "another service such as SMTP)" in report
    assert "_ssl.c" not in report and "EWS is HTTPS, usually on port 443" in report


def test_a_web_server_that_is_not_ews_is_said_as_such(admin, test_ca):
    from flask import Flask

    from tests.peers.https import HttpsPeer

    site = Flask("a-web-site")
    site.add_url_rule("/<path:path>", "page", lambda path: "<html><p>Welcome</p></html>", methods=["GET", "POST"])
    server = HttpsPeer(site, server_context(test_ca))
    try:
        url = f"{server.url}/EWS/Exchange.asmx"
        report = admin.post("/p/help/servers/new/validate", ews_form(type("P", (), {"url": url})), htmx=True).text
    finally:
        server.stop()
    assert "127.0.0.1 answered, but not as Exchange Web Services does (200 OK with text/html, not a SOAP answer)" \
           in report
    assert "it is the EWS address itself, usually https://&lt;server&gt;/EWS/Exchange.asmx" in report


def test_app_only_before_admin_consent_says_grant_admin_consent(app, admin, authority, ews_peer):
    peer = ews_peer(verifier=authority)
    server = save(app, admin, oauth_ews_form(authority, peer, flow="app", scope=EWS_APP, authorize_url="",
                                             mailbox=""))
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "Validation failed at “Sign in”:" in report
    assert "Exchange refused the app&#39;s token: it carries no permission, so nobody has granted admin consent yet" \
           in report
    assert "grants admin consent to the app&#39;s full_access_as_app permission" in report


def test_an_account_without_access_to_the_mailbox_is_told_what_to_ask_for(app, admin, ews_peer):
    peer = ews_peer(mailboxes={SENDER: {"name": "Sender"}}, users={USERNAME: PASSWORD})  # nobody has Full Access
    server = save(app, admin, ews_form(peer, save_copy="y"))
    result = send_sample(app, server.id)
    assert result.error is not None and result.error.credentials is True
    assert f"the account {USERNAME} may not use the mailbox {SENDER} (ErrorAccessDenied)" in str(result.error)
    assert f"give {USERNAME} Full Access on {SENDER} (Add-MailboxPermission)" in result.error.hint
    assert peer.sent == []


# --- one connection for a worker's messages ---------------------------------------------------------------

def ews_envelope(subject: str = "Invoice"):
    from email.message import EmailMessage

    from webapp.mail.envelope import Envelope

    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = f"Help Desk <{SENDER}>", "jane@example.org", subject
    message.set_content("Plain text")
    return Envelope.of(message)


def open_ews(app, server_id: int):
    from webapp.mail.transport import open_connection

    server = db.session().get(MailServer, server_id)
    return open_connection(checks.config_for(db.session().get(Portal, server.portal_id), server))


def wait_until(condition, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def test_consecutive_messages_share_one_kept_connection(app, admin, peer, caplog):
    """As SMTP keeps its session and Graph its HTTPS connection, a worker's messages to one Exchange go over
    one connection (keep-alive) with one Protocol (the version probed once), each under its own deadline;
    after a failed message the next one starts afresh."""
    from webapp.mail.report import DeliveryError

    caplog.set_level(logging.DEBUG)
    server = save(app, admin, ews_form(peer, timeout="2"))
    with app.app_context():
        connection = open_ews(app, server.id)
        try:
            receipts = [connection.send(ews_envelope()), connection.send(ews_envelope())]
            time.sleep(2.2)  # the second message's deadline is over: the next one runs under its own
            receipts.append(connection.send(ews_envelope()))
            peer.throttle(1, back_off_ms=3000)
            with pytest.raises(DeliveryError) as busy:
                connection.send(ews_envelope())
            receipts.append(connection.send(ews_envelope()))
        finally:
            connection.close()
    assert all(r.reply == "EWS accepted the message (CreateItem SendOnly)" for r in receipts)
    assert busy.value.report.failure.throttled
    assert peer.operations() == ["ConvertId", "CreateItem", "CreateItem", "CreateItem", "CreateItem", "ConvertId",
                                 "CreateItem"]  # the version probed once per connection, not per message
    assert [r.status for r in peer.requests] == [200, 200, 200, 200, 500, 200, 200]
    first, second, _, throttled, probe, after = (r.client for r in peer.requests[1:])
    assert peer.requests[0].client == first == second  # one connection for consecutive messages
    assert after == probe != throttled  # a new one after the failure
    assert len(peer.sent) == 4
    texts = [line for r in receipts for line in r.report.transcript] + busy.value.report.transcript
    assert_nothing_leaks(texts + [r.getMessage() for r in caplog.records], secrets_of(PASSWORD))


def test_ntlm_signs_in_once_for_a_kept_connection(app, admin, peer):
    """"Automatic" takes NTLM when Exchange refuses Basic; the next messages go on with NTLM over the same
    connection, without trying Basic again, and without a new handshake: NTLM signed in the connection."""
    peer.require_ntlm = True
    server = save(app, admin, ews_form(peer, ews_version="Exchange2016"))
    with app.app_context():
        connection = open_ews(app, server.id)
        try:
            for _ in range(3):
                connection.send(ews_envelope())
        finally:
            connection.close()
    assert [m.auth[0] for m in peer.sent] == ["ntlm"] * 3
    assert peer.requests[0].status == 401  # the first message tried Basic
    after_basic = peer.requests[1:]
    assert len({r.client for r in after_basic}) == 1  # NTLM's connection, kept for the next messages
    assert [r.operation for r in after_basic if r.status == 200] == ["CreateItem"] * 3
    assert [r.status for r in after_basic] == [401, 401, 200, 200, 200]  # one handshake (two legs refused first)


def test_a_kept_connection_takes_the_token_from_the_cache_and_closes_with_the_connection(
        app, admin, authority, ews_peer, test_ca_file):
    peer = ews_peer(verifier=authority)
    server = save(app, admin, oauth_ews_form(authority, peer, ews_version="Exchange2016", save_copy="y"))
    authorize(admin, server, test_ca_file)
    with app.app_context():
        connection = open_ews(app, server.id)
        try:
            for _ in range(3):
                connection.send(ews_envelope())
            assert peer.open_connections() == 1
        finally:
            connection.close()
    assert wait_until(lambda: peer.open_connections() == 0)  # closed at the server too, not left to time out
    assert [(r.operation, r.status, r.auth_scheme) for r in peer.requests] == [  # Sent Items looked up once
        ("GetFolder", 200, "bearer"), ("GetFolder", 200, "bearer")] + [("CreateItem", 200, "bearer")] * 3
    assert peer.saved == {(SENDER, "sentitems"): 3}
    assert len({r.client for r in peer.requests}) == 1
    assert [r["grant_type"] for r in authority.requests] == ["authorization_code"]  # the cached token, no refresh


def test_a_delivery_run_sends_its_messages_over_one_connection(app, outbox, admin, portal, peer):  # noqa: F811
    from webapp.mail.config import Sender
    from webapp.models import MailState

    save(app, admin, ews_form(peer))
    ids = [outbox.queue(portal, sender=Sender(SENDER, "Help Desk"), subject=f"Message {n}") for n in range(3)]
    outbox.run(ids[0])  # the run takes the portal's other due mail too
    assert [outbox.mail(i).state for i in ids] == [MailState.SENT] * 3
    assert sorted(m.mime["Subject"] for m in peer.sent) == ["Message 0", "Message 1", "Message 2"]
    assert peer.operations() == ["ConvertId", "CreateItem", "CreateItem", "CreateItem"]
    assert len({r.client for r in peer.requests}) == 1
    assert wait_until(lambda: peer.open_connections() == 0)  # a run made here keeps nothing: closed at its end


def operations_of(receipt) -> list[str]:
    """The SOAP operations a message's transcript names, in order."""
    return [line.rsplit(" (", 1)[-1].rstrip(")") for line in receipt.report.transcript if line.startswith("C: ")]


def test_a_kept_connection_saves_its_later_copies_with_createitem_alone(app, admin, peer):
    """With “Save a copy to Sent Items”, a connection's first message looks Sent Items up (exchangelib: the root
    folder, then Sent Items), and the later ones save their copy there with CreateItem alone, as a client that
    knows the folder's id does; after a failed message the next one, on a new connection, looks it up again."""
    from webapp.mail.report import DeliveryError

    server = save(app, admin, ews_form(peer, ews_version="Exchange2016", save_copy="y"))
    with app.app_context():
        connection = open_ews(app, server.id)
        try:
            receipts = [connection.send(ews_envelope(f"Message {n}")) for n in range(3)]
            peer.fail_next("CreateItem", "ErrorQuotaExceeded", "The mailbox is full.")
            with pytest.raises(DeliveryError) as full:
                connection.send(ews_envelope("Refused"))
            receipts.append(connection.send(ews_envelope("After")))
        finally:
            connection.close()
    assert "ErrorQuotaExceeded" in full.value.report.failure.summary
    assert [operations_of(r) for r in receipts] == [["GetFolder", "GetFolder", "CreateItem"], ["CreateItem"],
                                                    ["CreateItem"], ["GetFolder", "GetFolder", "CreateItem"]]
    assert operations_of(full.value) == ["CreateItem"]
    assert [(m.mime["Subject"], m.mailbox, m.disposition, m.saved_folder) for m in peer.sent] == [
        (subject, SENDER, "SendAndSaveCopy", "sentitems") for subject in ("Message 0", "Message 1", "Message 2",
                                                                          "After")]
    assert peer.saved == {(SENDER, "sentitems"): 4}  # every copy in Sent Items, none for the refused one
    kept = {r.client for r in peer.requests[:6]}
    assert len(kept) == 1 and {r.client for r in peer.requests[6:]}.isdisjoint(kept)
    assert all(r.reply == "EWS accepted the message (CreateItem SendAndSaveCopy)" for r in receipts)


def test_a_worker_looks_sent_items_up_again_once_the_server_is_saved(app, outbox, admin, portal, ews_peer):  # noqa: F811
    """The worker keeps a connection, and its Sent Items, from one job to the next; saving the server (here
    another mailbox) makes it connect afresh, so the copy goes to the new mailbox's Sent Items."""
    from webapp.delivery.kept import KeptConnections
    from webapp.delivery.worker import Run
    from webapp.mail.config import Sender
    from webapp.models import MailState

    shared = "shared@example.test"
    peer = ews_peer(mailboxes={SENDER: {"name": "Sender", "access": [USERNAME]},
                               shared: {"name": "Shared", "access": [USERNAME], "send_as": [SENDER]}},
                    users={USERNAME: PASSWORD})
    server = save(app, admin, ews_form(peer, ews_version="Exchange2016", save_copy="y"))
    connections = KeptConnections(outbox.app, 600.0)

    def job(subject: str) -> int:
        mail_id = outbox.queue(portal, sender=Sender(SENDER, "Help Desk"), subject=subject)
        with outbox.app.app_context():
            Run(outbox.settings, "kept-worker", kept=connections).run(mail_id)
        return mail_id

    try:
        sent = [job("First"), job("Second")]
        assert peer.operations() == ["GetFolder", "GetFolder", "CreateItem", "CreateItem"]
        changed = ews_form(peer, password="", confirm_password="", mailbox=shared, ews_version="Exchange2016",
                           save_copy="y", version="1")
        assert admin.post(f"/p/help/servers/{server.id}/edit", changed).status_code == 303
        sent.append(job("Third"))
    finally:
        connections.close_all()
    assert [outbox.mail(i).state for i in sent] == [MailState.SENT] * 3
    assert peer.operations()[4:] == ["GetFolder", "GetFolder", "CreateItem"]
    assert [(m.mime["Subject"], m.mailbox) for m in peer.sent] == [("First", SENDER), ("Second", SENDER),
                                                                    ("Third", shared)]
    assert peer.saved == {(SENDER, "sentitems"): 2, (shared, "sentitems"): 1}
    before, after = {r.client for r in peer.requests[:4]}, {r.client for r in peer.requests[4:]}
    assert len(before) == len(after) == 1 and before != after
    assert wait_until(lambda: peer.open_connections() == 0)


def test_a_failed_message_or_check_closes_its_connection_at_once(app, admin, peer):
    """The connection of a failed message, or of a failed Validate, is closed at Exchange as the failure is
    reported, not when the garbage collector runs (switched off here, so nothing else could close it): a failure
    whose exception keeps exchangelib's answer in a reference cycle (ErrorServerBusy: the exception, its traceback
    and a frame that holds it) kept its connection pool, which urllib3 closes only as garbage."""
    from webapp.mail.report import DeliveryError

    server = save(app, admin, ews_form(peer, ews_version="Exchange2016", save_copy="y"))
    gc.collect()
    gc.disable()
    try:
        with app.app_context():
            connection = open_ews(app, server.id)
            try:
                connection.send(ews_envelope())
                assert peer.open_connections() == 1  # kept for the next message
                peer.throttle(1, back_off_ms=3000)
                with pytest.raises(DeliveryError) as busy:
                    connection.send(ews_envelope())
                assert busy.value.report.failure.throttled
                assert wait_until(lambda: peer.open_connections() == 0, 2)
            finally:
                connection.close()
        peer.throttle(1, back_off_ms=3000)
        report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
        assert "Exchange is throttling this account (ErrorServerBusy) for 3 s" in report
        assert wait_until(lambda: peer.open_connections() == 0, 2)
    finally:
        gc.enable()
    assert peer.operations() == ["GetFolder", "GetFolder", "CreateItem", "CreateItem", "ResolveNames"]
