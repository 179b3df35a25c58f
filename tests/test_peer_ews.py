"""Self-tests of the EWS peer (tests/peers/ews.py), driven by exchangelib exactly as an app would.

exchangelib's sessions are made in BaseProtocol.raw_session() with BaseProtocol.HTTP_ADAPTER_CLS; requests
resolves verify=True to REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE (when set) *before* the adapter sees it, so the
adapter below replaces any truthy verify with the test CA file.
"""
import base64
import http.client
import ssl
import time
from email.message import EmailMessage
from urllib.parse import urlsplit

import pytest
import requests
from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    NTLM,
    OAUTH2,
    Account,
    BaseProtocol,
    Build,
    Configuration,
    Credentials,
    ExtendedProperty,
    FailFast,
    FaultTolerance,
    FileAttachment,
    HTMLBody,
    Identity,
    Mailbox,
    Message,
    OAuth2AuthorizationCodeCredentials,
    OAuth2Credentials,
    Version,
    close_connections,
)
from exchangelib.errors import (
    ErrorImpersonationFailed,
    ErrorInvalidExchangeImpersonationHeaderData,
    ErrorNameResolutionNoResults,
    ErrorNonExistentMailbox,
    ErrorQuotaExceeded,
    ErrorSchemaValidation,
    ErrorSendAsDenied,
    ErrorServerBusy,
    MalformedResponseError,
    RateLimitError,
    UnauthorizedError,
)
from exchangelib.protocol import Protocol
from exchangelib.services import ResolveNames
from requests_oauthlib import OAuth2Session

from tests.peers.ews import ews_peer  # noqa: F401

SENDER = "sender@example.test"
EXCHANGE_2016 = Version(build=Build(15, 1, 2507, 0))


class CAFileAdapter(requests.adapters.HTTPAdapter):
    """Verify against `ca_file` only (set it on a subclass)."""
    ca_file: str = ""

    def cert_verify(self, conn, url, verify, cert):
        super().cert_verify(conn, url, self.ca_file if verify else verify, cert)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return super().get_connection_with_tls_context(request, self.ca_file if verify else verify, proxies, cert)


@pytest.fixture
def trusted(monkeypatch, test_ca_file):
    """exchangelib trusts the test CA for this test only; short HTTP timeout; no protocol left cached."""
    adapter = type("TestCAAdapter", (CAFileAdapter,), {"ca_file": test_ca_file})
    monkeypatch.setattr(BaseProtocol, "HTTP_ADAPTER_CLS", adapter)
    monkeypatch.setattr(BaseProtocol, "TIMEOUT", 5)
    yield test_ca_file  # for raw requests: verify=trusted
    close_connections()


def config(peer, credentials, auth_type=BASIC, version=EXCHANGE_2016, retry_policy=None):
    return Configuration(service_endpoint=peer.url, credentials=credentials, auth_type=auth_type,
                         version=version, retry_policy=retry_policy or FailFast())


def basic_account(peer, address=SENDER, username="EXAMPLE\\mailer", password="password", **kwargs):
    cfg = config(peer, Credentials(username, password), **kwargs)
    return Account(address, config=cfg, autodiscover=False, access_type=DELEGATE)


def note(account, **kwargs):
    values = dict(subject="Ticket #42", body="Hello there", to_recipients=["customer@example.net"])
    return Message(account=account, **{**values, **kwargs})


class DictVerifier:
    """The verifier interface the peer expects: introspect(token) -> claims or None."""

    def __init__(self, tokens: dict):
        self.tokens = tokens

    def introspect(self, token):
        return self.tokens.get(token)


def claims(**values):
    return {"sub": "user-1", "client_id": "app-1", "scope": "", "roles": [], "aud": "https://outlook.office365.com",
            "exp": time.time() + 3600, **values}


def bearer(token):
    return {"access_token": token, "token_type": "Bearer", "expires_in": 3600}


def soap(operation_xml: str, header: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            f'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
            f'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Header>'
            f'<t:RequestServerVersion Version="Exchange2016"/>{header}</s:Header><s:Body>{operation_xml}</s:Body>'
            f'</s:Envelope>').encode()


RESOLVE = soap('<m:ResolveNames ReturnFullContactData="false"><m:UnresolvedEntry>sender@example.test'
               '</m:UnresolvedEntry></m:ResolveNames>')


# --- Basic auth: the three app actions -----------------------------------------------------------------------

def test_basic_resolve_send_and_send_and_save(ews_peer, trusted):
    peer = ews_peer()
    account = basic_account(peer)

    found = account.protocol.resolve_names([SENDER])
    missing = account.protocol.resolve_names(["nobody@example.test"])
    assert [(m.name, m.email_address, m.routing_type, m.mailbox_type) for m in found] == [
        ("Sender", SENDER, "SMTP", "Mailbox")]
    assert isinstance(missing[0], ErrorNameResolutionNoResults)  # returned, not raised
    assert str(missing[0]) == "No results were found."
    assert peer.operations() == ["ResolveNames", "ResolveNames"]

    note(account).send(save_copy=False)
    assert peer.operations()[2:] == ["CreateItem"]

    note(account, subject="Saved").send_and_save()
    assert peer.operations()[3:] == ["GetFolder", "GetFolder", "CreateItem"]  # root, sentitems, then send

    first, second = peer.sent
    assert (first.mailbox, first.disposition, first.saved, first.saved_folder) == (SENDER, "SendOnly", False, None)
    assert (second.disposition, second.saved, second.saved_folder) == ("SendAndSaveCopy", True, "sentitems")
    assert first.auth == ("basic", "EXAMPLE\\mailer")
    assert first.recipients == ["customer@example.net"]
    assert first.mime["From"] == "Sender <sender@example.test>"
    assert first.mime["Subject"] == "Ticket #42" and first.mime.get_content().strip() == "Hello there"
    assert peer.saved == {(SENDER, "sentitems"): 1}
    resolve, create = peer.requests[0], peer.requests[2]
    assert (resolve.auth_scheme, resolve.user, resolve.anchor, resolve.request_version) == (
        "basic", "EXAMPLE\\mailer", None, "Exchange2016")
    assert (create.anchor, create.impersonated, create.status, create.response_code) == (SENDER, None, 200, "NoError")


def test_send_with_save_copy_and_upn_login(ews_peer, trusted):
    peer = ews_peer()
    account = basic_account(peer, username="mailer@example.test")
    account.root  # what an app touching the folders asks for: one GetFolder
    note(account).send()  # save_copy=True is the default
    assert peer.operations() == ["GetFolder", "GetFolder", "CreateItem"]
    assert peer.sent[0].auth == ("basic", "mailer@example.test") and peer.sent[0].saved


def test_xml_fields_are_recorded_and_built_into_mime(ews_peer, trusted):
    peer = ews_peer(mailboxes={SENDER: {"name": "Sender", "send_as": ["helpdesk@example.test"],
                                        "access": ["EXAMPLE\\mailer"]}})
    account = basic_account(peer)

    class TicketHeader(ExtendedProperty):
        distinguished_property_set_id = "InternetHeaders"
        property_name = "X-Mailroom-Ticket"
        property_type = "String"

    Message.register("ticket_header", TicketHeader)
    try:
        message = note(
            account, body=HTMLBody("<p>Hi</p>"), cc_recipients=[Mailbox(name="Boss", email_address="boss@example.net")],
            bcc_recipients=["audit@example.net"], reply_to=["replies@example.test"], importance="High",
            author=Mailbox(name="Help Desk", email_address="helpdesk@example.test"), ticket_header="42")
        message.attach(FileAttachment(name="log.txt", content=b"line 1\n", content_type="text/plain"))
        message.send(save_copy=False)
    finally:
        Message.deregister("ticket_header")

    sent = peer.sent[0]
    assert sent.fields["subject"] == "Ticket #42" and sent.fields["body_type"] == "HTML"
    assert sent.fields["cc"] == [("Boss", "boss@example.net")] and sent.fields["bcc"] == [("", "audit@example.net")]
    assert sent.fields["from"] == ("Help Desk", "helpdesk@example.test")
    assert sent.fields["importance"] == "High" and sent.fields["headers"] == {"X-Mailroom-Ticket": "42"}
    assert sent.recipients == ["customer@example.net", "boss@example.net", "audit@example.net"]
    mime = sent.mime
    assert mime["From"] == "Help Desk <helpdesk@example.test>" and mime["Reply-To"] == "replies@example.test"
    assert mime["Cc"] == "Boss <boss@example.net>" and mime["Bcc"] == "audit@example.net"
    assert mime["X-Mailroom-Ticket"] == "42" and mime["Importance"] == "High"
    assert mime.get_body(("html",)).get_content().strip() == "<p>Hi</p>"
    [attachment] = mime.iter_attachments()
    assert attachment.get_filename() == "log.txt" and attachment.get_content() == "line 1\n"


def test_mime_content_is_parsed_the_same_way(ews_peer, trusted):
    peer = ews_peer()
    account = basic_account(peer)
    original = EmailMessage()
    original["From"] = "Sender <sender@example.test>"
    original["To"] = "customer@example.net"
    original["Cc"] = "boss@example.net"
    original["Subject"] = "Raw MIME"
    original["Message-ID"] = "<stable-1@example.test>"
    original.set_content("Body from MIME")

    Message(account=account, mime_content=original.as_bytes()).send(save_copy=False)

    sent = peer.sent[0]
    assert sent.fields["mime_content"] == original.as_bytes()
    assert sent.mime["Subject"] == "Raw MIME" and sent.mime["Message-ID"] == "<stable-1@example.test>"
    assert sent.mime.get_content().strip() == "Body from MIME"
    assert sent.recipients == ["customer@example.net", "boss@example.net"]


# --- errors -------------------------------------------------------------------------------------------------

def test_wrong_password_is_401_and_unauthorized_error(ews_peer, trusted):
    peer = ews_peer()
    with pytest.raises(UnauthorizedError, match="Invalid credentials"):
        basic_account(peer, password="wrong").protocol.resolve_names([SENDER])
    # With FaultTolerance a 401 counts as "server busy": it backs off RETRY_WAIT (10 s) and, past max_wait, gives up.
    with pytest.raises(RateLimitError):
        basic_account(peer, password="wrong2", retry_policy=FaultTolerance(max_wait=1)).protocol.resolve_names(["x"])

    raw = requests.post(peer.url, data=RESOLVE, auth=("EXAMPLE\\mailer", "wrong"), verify=trusted)
    assert raw.status_code == 401
    assert raw.headers["WWW-Authenticate"] == 'Basic realm="127.0.0.1"'
    assert {r.status for r in peer.requests} == {401}
    assert "wrong" not in repr(peer.requests)


def test_unknown_mailbox(ews_peer, trusted):
    peer = ews_peer()
    account = basic_account(peer, address="nobody@example.test")
    with pytest.raises(ErrorNonExistentMailbox, match="no mailbox associated"):
        note(account).send(save_copy=False)
    with pytest.raises(ErrorNonExistentMailbox):
        account.root
    assert [r.response_code for r in peer.requests] == ["ErrorNonExistentMailbox"] * 2
    assert peer.sent == []


def test_send_as_denied(ews_peer, trusted):
    peer = ews_peer()
    account = basic_account(peer)
    with pytest.raises(ErrorSendAsDenied, match="does not have the right to send mail on behalf"):
        note(account, author=Mailbox(email_address="ceo@example.test")).send(save_copy=False)
    note(account, author=Mailbox(email_address=SENDER)).send(save_copy=False)  # itself is fine
    assert len(peer.sent) == 1


def test_fail_next_answers_one_error_response(ews_peer, trusted):
    peer = ews_peer()
    account = basic_account(peer)
    peer.fail_next("CreateItem", "ErrorQuotaExceeded", "The mailbox quota is exceeded.")
    with pytest.raises(ErrorQuotaExceeded, match="quota is exceeded"):
        note(account).send(save_copy=False)
    note(account).send(save_copy=False)
    assert len(peer.sent) == 1


def test_fault_next_is_a_soap_fault(ews_peer, trusted):
    peer = ews_peer()
    account = basic_account(peer)
    peer.fault_next("ErrorSchemaValidation", "The request failed schema validation: bad element.")
    with pytest.raises(ErrorSchemaValidation, match="bad element"):
        note(account).send(save_copy=False)

    peer.fault_next("ErrorInternalServerError", "An internal server error occurred.")
    raw = requests.post(peer.url, data=RESOLVE, auth=("EXAMPLE\\mailer", "password"), verify=trusted)
    assert raw.status_code == 500 and raw.headers["Content-Type"].startswith("text/xml")
    assert "<faultcode xmlns:a=\"http://schemas.microsoft.com/exchange/services/2006/types\">" \
           "a:ErrorInternalServerError</faultcode>" in raw.text
    assert "<e:ResponseCode xmlns:e=\"http://schemas.microsoft.com/exchange/services/2006/errors\">" \
           "ErrorInternalServerError</e:ResponseCode>" in raw.text
    assert [r.status for r in peer.requests] == [500, 500]


def test_throttling(ews_peer, trusted):
    peer = ews_peer()
    account = basic_account(peer)
    peer.throttle(1, back_off_ms=30000)
    started = time.monotonic()
    with pytest.raises(ErrorServerBusy) as busy:  # FailFast (exchangelib's default): raised at once
        note(account).send(save_copy=False)
    assert busy.value.back_off == 30.0 and time.monotonic() - started < 2

    patient = basic_account(peer, address=SENDER, username="mailer@example.test",
                            retry_policy=FaultTolerance(max_wait=2))
    peer.throttle(1, back_off_ms=300)  # within max_wait: sleeps the back-off, then retries
    started = time.monotonic()
    note(patient).send(save_copy=False)
    assert 0.25 < time.monotonic() - started < 2 and len(peer.sent) == 1

    peer.throttle(1, back_off_ms=60000)  # beyond max_wait: gives up at once
    with pytest.raises(RateLimitError):
        note(patient).send(save_copy=False)


def test_online_blocked(ews_peer, trusted):
    peer = ews_peer()
    peer.online_blocked = True
    with pytest.raises(MalformedResponseError, match="Code: 403"):
        note(basic_account(peer)).send(save_copy=False)
    raw = requests.post(peer.url, data=RESOLVE, auth=("EXAMPLE\\mailer", "password"), verify=trusted)
    assert raw.status_code == 403 and "blocked" in raw.text
    raw = requests.post(peer.url, data=RESOLVE, verify=trusted)  # still 401 first
    assert raw.status_code == 401


def test_newer_request_version_falls_back(ews_peer, trusted):
    peer = ews_peer(version="Exchange2010_SP2")
    account = basic_account(peer)
    note(account).send(save_copy=False)
    faults = [r.request_version for r in peer.requests if r.response_code == "ErrorInvalidServerVersion"]
    assert faults[0] == "Exchange2016" and peer.requests[-1].request_version == "Exchange2010_SP2"
    assert account.version.api_version == "Exchange2010_SP2" and len(peer.sent) == 1


def test_without_auth_type_and_version_exchangelib_probes(ews_peer, trusted):
    peer = ews_peer()
    cfg = Configuration(service_endpoint=peer.url, credentials=Credentials("EXAMPLE\\mailer", "password"))
    account = Account(SENDER, config=cfg, autodiscover=False, access_type=DELEGATE)
    note(account).send(save_copy=False)
    assert peer.operations() == ["ConvertId", "ConvertId", "CreateItem"]  # auth probe (401), version guess
    assert cfg.auth_type == BASIC and account.version.build == Build(15, 1, 2507, 6)


# --- OAuth -------------------------------------------------------------------------------------------------

def delegated_account(peer, token, identity=None):
    credentials = OAuth2AuthorizationCodeCredentials(access_token=bearer(token))
    credentials.identity = identity
    return Account(SENDER, config=config(peer, credentials, auth_type=OAUTH2), autodiscover=False,
                   access_type=DELEGATE)


def test_oauth_delegated(ews_peer, trusted):
    verifier = DictVerifier({
        "good": claims(scope="https://outlook.office365.com/EWS.AccessAsUser.All offline_access"),
        "bare": claims(sub="user-2", scope="EWS.AccessAsUser.All"),
        "smtp-only": claims(scope="https://outlook.office.com/SMTP.Send"),
    })
    peer = ews_peer(mailboxes={SENDER: {"name": "Sender", "access": ["user-1", "user-2"]}}, verifier=verifier)

    account = delegated_account(peer, "good")
    assert account.protocol.resolve_names([SENDER])[0].email_address == SENDER
    note(account).send_and_save()
    note(delegated_account(peer, "bare")).send(save_copy=False)
    assert [s.auth for s in peer.sent] == [("bearer", "user-1"), ("bearer", "user-2")]
    assert {r.auth_scheme for r in peer.requests} == {"bearer"}

    with pytest.raises(MalformedResponseError, match="Code: 403"):  # valid token, not enough scope
        note(delegated_account(peer, "smtp-only")).send(save_copy=False)
    with pytest.raises(UnauthorizedError):  # unknown or expired token
        note(delegated_account(peer, "revoked")).send(save_copy=False)
    with pytest.raises(ErrorInvalidExchangeImpersonationHeaderData, match="must not exist"):
        delegated_account(peer, "good", identity=Identity(primary_smtp_address=SENDER)).root
    peer.audiences = {"https://outlook.office365.com"}
    verifier.tokens["other-audience"] = claims(scope="EWS.AccessAsUser.All", aud="https://graph.microsoft.com")
    with pytest.raises(UnauthorizedError):
        note(delegated_account(peer, "other-audience")).send(save_copy=False)

    raw = requests.post(peer.url, data=RESOLVE, headers={"Authorization": "Bearer smtp-only"},
                        verify=trusted)
    assert raw.status_code == 403 and "not enough scope" in raw.headers["x-ms-diagnostics"]
    raw = requests.post(peer.url, data=RESOLVE, headers={"Authorization": "Bearer revoked"}, verify=trusted)
    assert raw.status_code == 401 and 'error="invalid_token"' in raw.headers["WWW-Authenticate"]
    assert raw.headers["WWW-Authenticate"].startswith('Basic realm="127.0.0.1", Bearer client_id=')
    assert "good" not in repr(peer.requests) and "revoked" not in repr(peer.requests)


def app_account(peer, token, address=SENDER, identity=True):
    credentials = OAuth2Credentials(
        client_id="app-1", client_secret="not-used", tenant_id="example.test", access_token=bearer(token),
        identity=Identity(primary_smtp_address=address) if identity else None)
    return Account(address, config=config(peer, credentials, auth_type=OAUTH2), autodiscover=False,
                   access_type=IMPERSONATION)


def test_oauth_app_only_impersonation(ews_peer, trusted):
    verifier = DictVerifier({"app": claims(sub="app-1", roles=["full_access_as_app"]),
                             "graph-only": claims(roles=["Mail.Send"])})
    peer = ews_peer(verifier=verifier)

    account = app_account(peer, "app")
    assert account.protocol.resolve_names([SENDER])[0].name == "Sender"
    note(account).send(save_copy=False)
    note(account).send_and_save()
    assert {(r.anchor, r.impersonated) for r in peer.requests} == {(SENDER, SENDER)}
    assert [(s.mailbox, s.auth, s.disposition) for s in peer.sent] == [
        (SENDER, ("bearer", "app-1"), "SendOnly"), (SENDER, ("bearer", "app-1"), "SendAndSaveCopy")]

    # protocol-level calls (ResolveNames) carry impersonation and the anchor only via credentials.identity
    with pytest.raises(ErrorInvalidExchangeImpersonationHeaderData, match="must be present"):
        app_account(peer, "app", identity=False).protocol.resolve_names([SENDER])
    with pytest.raises(ErrorNonExistentMailbox):  # impersonating an unknown mailbox is a fault
        note(app_account(peer, "app", address="nobody@example.test")).send(save_copy=False)


def test_oauth_app_only_http_error_discards_the_token(ews_peer, trusted, monkeypatch):
    """After any HTTP-level error exchangelib retires the session and, for client-credentials, drops the token and
    fetches a new one from credentials.token_url (login.microsoftonline.com/<tenant> unless overridden)."""
    fetched = []

    def fetch_token(session, token_url, **kwargs):  # stands in for the token endpoint: nothing leaves loopback
        fetched.append(token_url)
        return bearer("app")

    monkeypatch.setattr(OAuth2Session, "fetch_token", fetch_token)
    peer = ews_peer(verifier=DictVerifier({"app": claims(roles=["full_access_as_app"])}))
    peer.online_blocked = True
    with pytest.raises(MalformedResponseError, match="Code: 403"):
        note(app_account(peer, "app")).send(save_copy=False)
    assert fetched == ["https://login.microsoftonline.com/example.test/oauth2/v2.0/token"]


def test_oauth_app_only_raw_error_shapes(ews_peer, trusted):
    peer = ews_peer(verifier=DictVerifier({"app": claims(roles=["full_access_as_app"]),
                                           "graph-only": claims(roles=["Mail.Send"])}))
    impersonate = (f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{SENDER}"
                   "</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>")
    body = soap('<m:ResolveNames ReturnFullContactData="false"><m:UnresolvedEntry>sender@example.test'
                '</m:UnresolvedEntry></m:ResolveNames>', impersonate)

    def post(token, **headers):
        return requests.post(peer.url, data=body, headers={"Authorization": f"Bearer {token}", **headers},
                             verify=trusted)

    missing_anchor = post("app")
    assert missing_anchor.status_code == 500 and "a:ErrorImpersonationFailed" in missing_anchor.text
    assert post("app", **{"X-AnchorMailbox": SENDER}).status_code == 200
    assert post("graph-only", **{"X-AnchorMailbox": SENDER}).status_code == 403
    assert [r.anchor for r in peer.requests] == [None, SENDER, SENDER]
    with pytest.raises(ErrorImpersonationFailed):  # what exchangelib would raise for it
        ResolveNames(protocol=app_account(peer, "app").protocol).parse(missing_anchor.content)


# --- NTLM ------------------------------------------------------------------------------------------------

def test_require_ntlm(ews_peer, trusted):
    peer = ews_peer()
    peer.require_ntlm = True
    with pytest.raises(UnauthorizedError):
        basic_account(peer).protocol.resolve_names([SENDER])
    raw = requests.post(peer.url, data=RESOLVE, auth=("EXAMPLE\\mailer", "password"), verify=trusted)
    assert raw.status_code == 401 and raw.headers["WWW-Authenticate"] == "Negotiate, NTLM"

    close_connections()  # exchangelib caches protocols by (endpoint, credentials), ignoring auth_type
    account = basic_account(peer, auth_type=NTLM)
    assert account.protocol.resolve_names([SENDER])[0].email_address == SENDER
    note(account).send(save_copy=False)
    assert peer.sent[0].auth[0] == "ntlm" and peer.sent[0].auth[1].lower().endswith("mailer")
    with pytest.raises(UnauthorizedError):
        basic_account(peer, password="wrong", auth_type=NTLM).protocol.resolve_names([SENDER])


def test_an_ntlm_sign_in_ends_with_its_connection(ews_peer, trusted):
    """NTLM signs in the connection: the peer knows who signed it in while it is open, and forgets that, as a
    handshake left half-way, once the connection closes."""
    import spnego

    peer = ews_peer()
    peer.require_ntlm = True
    account = basic_account(peer, auth_type=NTLM)
    assert account.protocol.resolve_names([SENDER])[0].email_address == SENDER
    assert peer.ntlm_connections() == 1
    negotiate = spnego.client("EXAMPLE\\mailer", "password", protocol="ntlm").step()
    half_way = http.client.HTTPSConnection("127.0.0.1", urlsplit(peer.url).port,
                                           context=ssl.create_default_context(cafile=trusted))
    half_way.request("POST", "/EWS/Exchange.asmx", RESOLVE,
                     {"Authorization": f"NTLM {base64.b64encode(negotiate).decode()}", "Content-Type": "text/xml"})
    challenge = half_way.getresponse()
    challenge.read()
    assert challenge.status == 401 and challenge.getheader("WWW-Authenticate").startswith("NTLM ")
    assert peer.ntlm_connections() == 2
    half_way.close()
    account.protocol.close()
    deadline = time.monotonic() + 5
    while peer.open_connections() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert peer.open_connections() == 0
    assert peer.ntlm_connections() == 0


# --- trusting the CA without patching BaseProtocol --------------------------------------------------------------

def test_trust_via_requests_ca_bundle(ews_peer, monkeypatch, test_ca_file):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", test_ca_file)  # process-wide; replaces the default trust store
    peer = ews_peer()
    try:
        note(basic_account(peer)).send(save_copy=False)
    finally:
        close_connections()
    assert len(peer.sent) == 1


def trusting_protocol(cfg, ca_file) -> Protocol:
    """A Protocol for one Configuration whose sessions verify against ca_file; no class or env var changes."""
    adapter = type("OneCAAdapter", (CAFileAdapter,), {"ca_file": ca_file})
    cls = type("OneCAProtocol", (Protocol,), {"HTTP_ADAPTER_CLS": adapter})
    protocol = cls.__new__(cls)  # bypass CachingProtocol's process-wide cache
    protocol.__init__(config=cfg)
    return protocol


def test_trust_for_one_configuration(ews_peer, test_ca_file):
    peer = ews_peer()
    untrusted = basic_account(peer)
    account = basic_account(peer, username="mailer@example.test")
    account.protocol = trusting_protocol(account.protocol.config, test_ca_file)
    try:
        note(account).send(save_copy=False)
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            note(untrusted).send(save_copy=False)
    finally:
        account.protocol.close()
        close_connections()
    assert len(peer.sent) == 1
