"""Self-tests of the Microsoft Graph and Gmail API peers (tests/peers/graph.py, tests/peers/gmail.py)."""
import base64
import time
from email.message import EmailMessage

import pytest
import requests

from tests.peers.gmail import gmail_peer  # noqa: F401
from tests.peers.graph import graph_peer  # noqa: F401

SENDER = "sender@example.test"
SENDER_ID = "0b7e3c58-1d2a-4f6b-8c9d-3e4f5a6b7c8d"
SHARED = "shared@example.test"
SHARED_ID = "6a1b2c3d-4e5f-4a7b-8c9d-0e1f2a3b4c5d"
GRAPH_USERS = {SENDER: {"id": SENDER_ID, "displayName": "Sender"},
               SHARED: {"id": SHARED_ID, "displayName": "Shared Box", "send_as": [SENDER]}}
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
GMAIL = "https://www.googleapis.com/auth/gmail."


class DictVerifier:
    """The token verifier interface (introspect) over a dict of token -> claims."""

    def __init__(self, tokens: dict):
        self.tokens = tokens

    def introspect(self, token: str) -> dict | None:
        return self.tokens.get(token)


def claims(sub, scope="", roles=(), aud="00000003-0000-0000-c000-000000000000", active=True, exp=None,
           client_id="client-1") -> dict:
    return {"active": active, "sub": sub, "client_id": client_id, "scope": scope, "roles": list(roles),
            "aud": aud, "exp": exp if exp is not None else time.time() + 3600}


GRAPH_TOKENS = {
    "delegated.send": claims(SENDER, "Mail.Send User.Read offline_access"),
    "delegated.prefixed": claims(SENDER, "https://graph.microsoft.com/Mail.Send", aud="https://graph.microsoft.com"),
    "delegated.shared": claims(SENDER, "Mail.Send.Shared"),
    "delegated.read": claims(SENDER, "User.Read"),
    "delegated.readall": claims(SENDER, "User.ReadBasic.All"),
    "delegated.empty": claims(SENDER, ""),
    "app.send": claims("app-client", roles=["Mail.Send"], client_id="app-client"),
    "app.read": claims("app-client", roles=["User.Read.All"], client_id="app-client"),
    "app.none": claims("app-client", roles=["Calendars.Read"], client_id="app-client"),
    "expired.token": claims(SENDER, "Mail.Send", exp=time.time() - 10),
    "inactive.token": claims(SENDER, "Mail.Send", active=False),
    "outlook.aud": claims(SENDER, "Mail.Send", aud="https://outlook.office.com"),
    "unknown.user": claims("nobody@example.test", "Mail.Send"),
}


@pytest.fixture
def graph(graph_peer):
    return graph_peer(DictVerifier(GRAPH_TOKENS), users=GRAPH_USERS)


@pytest.fixture
def call(test_ca_file):
    """call(peer, method, path, token=None, **kwargs) -> requests.Response, trusting the test CA."""
    def call(peer, method, path, token=None, headers=None, **kwargs):
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, peer.url + path, headers=headers, verify=test_ca_file, timeout=5, **kwargs)
    return call


def graph_error(response, status, code, message=None):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    if message is not None:
        assert error["message"] == message
    assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}
    assert error["innerError"]["request-id"] == response.headers["request-id"]
    return error


def message_json(**overrides) -> dict:
    message = {"subject": "Hello", "body": {"contentType": "Text", "content": "Hi there"},
               "toRecipients": [{"emailAddress": {"address": "to@example.org", "name": "To Person"}}]}
    message.update(overrides)
    return {"message": message}


def mime_bytes(to="to@example.org", extra="") -> bytes:
    message = EmailMessage()
    message["From"] = SENDER
    if to:
        message["To"] = to
    message["Subject"] = "MIME hello"
    message["Message-ID"] = "<stable-1@example.test>"
    for line in filter(None, extra.split("\n")):
        name, _, value = line.partition(": ")
        message[name] = value
    message.set_content("MIME body")
    return message.as_bytes()


# --- Microsoft Graph: users ------------------------------------------------------------------

def test_graph_me_returns_the_tokens_user_with_request_ids(graph, call):
    response = call(graph, "GET", "/v1.0/me", "delegated.read", headers={"client-request-id": "abc-123"})
    assert response.status_code == 200
    body = response.json()
    assert body["@odata.context"].endswith("/v1.0/$metadata#users/$entity")
    assert {k: body[k] for k in ("id", "displayName", "mail", "userPrincipalName")} == {
        "id": SENDER_ID, "displayName": "Sender", "mail": SENDER, "userPrincipalName": SENDER}
    assert response.headers["client-request-id"] == "abc-123"
    assert response.headers["request-id"]


@pytest.mark.parametrize("key", [SENDER.upper(), SENDER_ID])
def test_graph_user_by_upn_case_insensitive_or_id(graph, call, key):
    response = call(graph, "GET", f"/v1.0/users/{key}", "delegated.read")
    assert response.status_code == 200 and response.json()["id"] == SENDER_ID


def test_graph_unknown_user_is_404(graph, call):
    response = call(graph, "GET", "/v1.0/users/ghost@example.test", "app.read")
    graph_error(response, 404, "Request_ResourceNotFound", "Resource 'ghost@example.test' does not exist or one "
                "of its queried reference-property objects are not present.")


@pytest.mark.parametrize("token, allowed", [
    ("delegated.read", False), ("delegated.readall", True), ("app.read", True), ("app.none", False)])
def test_graph_reading_another_user_needs_permission(graph, call, token, allowed):
    response = call(graph, "GET", f"/v1.0/users/{SHARED}", token)
    if allowed:
        assert response.status_code == 200 and response.json()["userPrincipalName"] == SHARED
    else:
        graph_error(response, 403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")


def test_graph_me_with_app_only_token_is_400(graph, call):
    graph_error(call(graph, "GET", "/v1.0/me", "app.read"), 400, "BadRequest",
                "/me request is only valid with delegated authentication flow.")


@pytest.mark.parametrize("authorization, message", [
    (None, "Access token is empty."),
    ("Basic dXNlcjpwYXNz", "Access token is empty."),
    ("Bearer ", "Access token is empty."),
    ("Bearer notajwt", "IDX14100: JWT is not well formed"),
    ("Bearer a.b.c", "Access token validation failure."),
    ("Bearer expired.token", "Access token has expired or is not yet valid."),
    ("Bearer inactive.token", "Access token has expired or is not yet valid."),
    ("Bearer outlook.aud", "Invalid audience."),
])
def test_graph_bad_tokens_are_401_with_www_authenticate(graph, call, authorization, message):
    headers = {"Authorization": authorization} if authorization else {}
    response = call(graph, "POST", "/v1.0/me/sendMail", headers=headers, json=message_json())
    error = graph_error(response, 401, "InvalidAuthenticationToken")
    assert error["message"].startswith(message)
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert graph.sent == []


def test_graph_accepts_graph_or_peer_audience(graph_peer, call):
    peer = graph_peer(DictVerifier({}), users=GRAPH_USERS)
    peer.verifier.tokens.update({"own": claims(SENDER, "User.Read", aud=peer.url),
                                 "graph": claims(SENDER, "User.Read", aud="https://graph.microsoft.com")})
    assert call(peer, "GET", "/v1.0/me", "own").status_code == 200
    assert call(peer, "GET", "/v1.0/me", "graph").status_code == 200


# --- Microsoft Graph: sendMail with JSON ------------------------------------------------------------------

def test_graph_send_json_builds_a_readable_message(graph, call):
    body = message_json(
        body={"contentType": "HTML", "content": "<p>Hi</p>"},
        ccRecipients=[{"emailAddress": {"address": "cc@example.org"}}],
        bccRecipients=[{"emailAddress": {"address": "bcc@example.org"}}],
        replyTo=[{"emailAddress": {"address": "reply@example.org", "name": "Desk"}}],
        importance="HIGH", internetMessageId="<fixed-1@example.test>",
        internetMessageHeaders=[{"name": "X-Ticket", "value": "42"}, {"name": "x-portal", "value": "help"}])
    body["saveToSentItems"] = "false"
    response = call(graph, "POST", "/v1.0/me/sendMail", "delegated.send", json=body)
    assert response.status_code == 202 and response.content == b""
    [sent] = graph.sent
    assert (sent.mailbox, sent.sub, sent.save_to_sent_items, sent.app_only) == (SENDER, SENDER, False, False)
    assert sent.json == body
    mime = sent.mime
    assert mime["From"] == "Sender <sender@example.test>"
    assert mime["To"] == "To Person <to@example.org>"
    assert (mime["Cc"], mime["Bcc"]) == ("cc@example.org", "bcc@example.org")
    assert mime["Reply-To"] == "Desk <reply@example.org>"
    assert (mime["Subject"], mime["Importance"], mime["Message-ID"]) == ("Hello", "high", "<fixed-1@example.test>")
    assert (mime["X-Ticket"], mime["x-portal"]) == ("42", "help")
    assert mime.get_content_type() == "text/html" and mime.get_content().strip() == "<p>Hi</p>"


def test_graph_send_json_text_body_defaults(graph, call):
    response = call(graph, "POST", f"/v1.0/users/{SENDER}/sendMail", "delegated.prefixed", json=message_json())
    assert response.status_code == 202
    [sent] = graph.sent
    assert sent.save_to_sent_items is True
    assert sent.mime.get_content_type() == "text/plain" and sent.mime.get_content().strip() == "Hi there"
    assert sent.mime["Message-ID"]


@pytest.mark.parametrize("token, mailbox, status", [
    ("delegated.send", SENDER, 202),
    ("delegated.send", SHARED, 403),         # Mail.Send covers only the user's own mailbox
    ("delegated.shared", SHARED, 202),       # Mail.Send.Shared covers other mailboxes
    ("delegated.read", SENDER, 403),
    ("app.send", SHARED, 202),
    ("app.read", SENDER, 403),
])
def test_graph_send_permissions(graph, call, token, mailbox, status):
    response = call(graph, "POST", f"/v1.0/users/{mailbox}/sendMail", token, json=message_json())
    if status == 202:
        assert response.status_code == 202
        assert graph.sent[0].mailbox == mailbox
    else:
        graph_error(response, 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        assert graph.sent == []


def test_graph_app_only_send_records_client(graph, call):
    assert call(graph, "POST", f"/v1.0/users/{SHARED_ID}/sendMail", "app.send", json=message_json()).status_code == 202
    [sent] = graph.sent
    assert (sent.mailbox, sent.sub, sent.client_id, sent.app_only) == (SHARED, "app-client", "app-client", True)


def test_graph_send_check_order(graph, call):
    # bad token before unknown user, unknown user before permission, permission before body
    graph_error(call(graph, "POST", "/v1.0/users/ghost@example.test/sendMail", "nope", json={}),
                401, "InvalidAuthenticationToken")
    graph_error(call(graph, "POST", "/v1.0/users/ghost@example.test/sendMail", "delegated.read", json={}),
                404, "ErrorInvalidUser", "The requested user 'ghost@example.test' is invalid.")
    graph_error(call(graph, "POST", "/v1.0/me/sendMail", "unknown.user", json={}),
                404, "ErrorInvalidUser", "The requested user 'nobody@example.test' is invalid.")
    graph_error(call(graph, "POST", "/v1.0/me/sendMail", "delegated.read", data="{not json",
                     headers={"Content-Type": "application/json"}), 403, "ErrorAccessDenied")


def test_graph_me_send_with_app_only_token_is_400(graph, call):
    graph_error(call(graph, "POST", "/v1.0/me/sendMail", "app.send", json=message_json()), 400, "BadRequest")


@pytest.mark.parametrize("body, code, message", [
    (message_json(toRecipients=[]), "ErrorInvalidRecipients",
     "At least one recipient is not valid., A message can't be sent because it contains no recipients."),
    (message_json(toRecipients=[{"emailAddress": {"address": ""}}]), "ErrorInvalidRecipients",
     "At least one recipient is not valid., Recipient '' is not resolved. All recipients must be resolved "
     "before a message can be submitted."),
    (message_json(importance="urgent"), "RequestBodyRead",
     "Cannot convert the literal 'urgent' to the expected type 'microsoft.graph.importance'."),
    (message_json(body={"contentType": "markdown", "content": "x"}), "RequestBodyRead", None),
    (message_json(toRecipients={"emailAddress": {"address": "a@example.org"}}), "RequestBodyRead", None),
    (message_json(internetMessageHeaders=[{"name": "Priority", "value": "1"}]), "InvalidInternetMessageHeader",
     "The internet message header name 'Priority' should start with 'x-' or 'X-'."),
    (message_json(internetMessageHeaders=[{"name": f"X-H{i}", "value": "v"} for i in range(6)]),
     "InvalidInternetMessageHeaderCollection",
     "Maximum number of headers in one message should be less than or equal to 5."),
    (message_json(internetMessageHeaders=[]), "InvalidInternetMessageHeaderCollection",
     "Maximum number of headers in one message should be less than or equal to 5."),
    (message_json(colour="blue"), "RequestBodyRead", None),
    ({"message": message_json()["message"], "save": True}, "RequestBodyRead", None),
    ({"saveToSentItems": False}, "ErrorInvalidParameter", "The value of the parameter 'Message' is empty."),
    ({**message_json(), "saveToSentItems": "maybe"}, "RequestBodyRead", None),
])
def test_graph_send_json_validation(graph, call, body, code, message):
    response = call(graph, "POST", "/v1.0/me/sendMail", "delegated.send", json=body)
    graph_error(response, 400, code, message)
    assert graph.sent == []


def test_graph_send_five_headers_and_low_importance_are_fine(graph, call):
    body = message_json(importance="low",
                        internetMessageHeaders=[{"name": f"X-H{i}", "value": "v"} for i in range(5)])
    assert call(graph, "POST", "/v1.0/me/sendMail", "delegated.send", json=body).status_code == 202


def test_graph_send_invalid_json_is_400(graph, call):
    response = call(graph, "POST", "/v1.0/me/sendMail", "delegated.send", data="{oops",
                    headers={"Content-Type": "application/json"})
    graph_error(response, 400, "BadRequest")


# --- Microsoft Graph: sendMail with MIME ------------------------------------------------------------------

def test_graph_send_mime(graph, call):
    raw = mime_bytes(extra="Cc: cc@example.org\nX-Ticket: 7")
    encoded = base64.encodebytes(raw)  # wrapped at 76 characters, as the Graph docs show it
    response = call(graph, "POST", "/v1.0/me/sendMail", "delegated.send", data=encoded,
                    headers={"Content-Type": "text/plain"})
    assert response.status_code == 202 and response.content == b""
    [sent] = graph.sent
    assert sent.json is None and sent.save_to_sent_items is True
    assert (sent.mime["To"], sent.mime["Cc"], sent.mime["X-Ticket"]) == ("to@example.org", "cc@example.org", "7")
    assert sent.mime["Message-ID"] == "<stable-1@example.test>"
    assert sent.mime.get_content().strip() == "MIME body"


@pytest.mark.parametrize("data", [b"not base64 at all!", b"", base64.urlsafe_b64encode(b"\xfb\xff" * 30)])
def test_graph_send_mime_invalid_base64(graph, call, data):
    response = call(graph, "POST", "/v1.0/me/sendMail", "delegated.send", data=data,
                    headers={"Content-Type": "text/plain"})
    graph_error(response, 400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")


def test_graph_send_mime_without_recipients(graph, call):
    response = call(graph, "POST", "/v1.0/me/sendMail", "delegated.send", data=base64.b64encode(mime_bytes(to="")),
                    headers={"Content-Type": "text/plain"})
    graph_error(response, 400, "ErrorInvalidRecipients")


def test_graph_send_over_4mb_is_413(graph, call):
    data = b"A" * (4 * 1024 * 1024 + 4)
    response = call(graph, "POST", "/v1.0/me/sendMail", "delegated.send", data=data,
                    headers={"Content-Type": "text/plain"})
    graph_error(response, 413, "ErrorRequestEntityTooLarge")
    assert call(graph, "GET", "/v1.0/me", "delegated.read").status_code == 200


# --- Microsoft Graph: throttling, routing, the request log ----------------------------------------------------------

def test_graph_throttle(graph, call):
    graph.throttle(2, retry_after=3)
    for _ in range(2):
        response = call(graph, "POST", "/v1.0/me/sendMail", "delegated.send", json=message_json())
        graph_error(response, 429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
        assert response.headers["Retry-After"] == "3"
    assert call(graph, "POST", "/v1.0/me/sendMail", "delegated.send", json=message_json()).status_code == 202
    assert len(graph.sent) == 1


def test_graph_unknown_segments_and_methods(graph, call):
    graph_error(call(graph, "GET", "/v1.0/mee", "delegated.read"), 400, "BadRequest",
                "Resource not found for the segment 'mee'.")
    graph_error(call(graph, "POST", "/v1.0/me/sendMessage", "delegated.read"), 400, "BadRequest",
                "Resource not found for the segment 'sendMessage'.")
    graph_error(call(graph, "GET", "/v1.0/me/sendMail", "delegated.read"), 405, "Request_BadRequest")
    graph_error(call(graph, "GET", "/v2.0/me", "delegated.read"), 400, "BadRequest")


def test_graph_request_log_keeps_no_token(graph, call):
    call(graph, "GET", "/v1.0/me", "delegated.read")
    call(graph, "POST", "/v1.0/me/sendMail", headers={"Authorization": "delegated.send"}, json=message_json())
    call(graph, "POST", "/v1.0/me/sendMail", "delegated.send", json=message_json())
    assert [(r.method, r.path, r.status, r.auth_scheme) for r in graph.requests] == [
        ("GET", "/v1.0/me", 200, "Bearer"),
        ("POST", "/v1.0/me/sendMail", 401, "(other)"),
        ("POST", "/v1.0/me/sendMail", 202, "Bearer")]
    assert "delegated" not in repr(graph.requests)


# --- Gmail API -----------------------------------------------------------------------------------------

GMAIL_TOKENS = {
    "g.send": claims(SENDER, GMAIL + "send"),
    "g.read": claims(SENDER, GMAIL + "readonly"),
    "g.full": claims(SENDER, "https://mail.google.com/"),
    "g.compose": claims(SENDER, "openid " + GMAIL + "compose"),
    "g.expired": claims(SENDER, GMAIL + "send", exp=time.time() - 1),
    "g.stranger": claims("stranger@example.test", "https://mail.google.com/"),
}


@pytest.fixture
def gmail(gmail_peer):
    return gmail_peer(DictVerifier(GMAIL_TOKENS), users={SENDER})


def google_error(response, code, status, reason, message=None):
    assert response.status_code == code, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert (error["code"], error["status"], error["errors"][0]["reason"]) == (code, status, reason)
    if message is not None:
        assert error["message"] == message
    return error


def raw_of(data: bytes, encode=base64.urlsafe_b64encode) -> dict:
    return {"raw": encode(data).decode()}


@pytest.mark.parametrize("token, user_id", [("g.read", "me"), ("g.full", SENDER.upper()), ("g.compose", "me")])
def test_gmail_profile(gmail, call, token, user_id):
    response = call(gmail, "GET", f"/gmail/v1/users/{user_id}/profile", token)
    assert response.status_code == 200
    body = response.json()
    assert body["emailAddress"] == SENDER and set(body) == {"emailAddress", "messagesTotal", "threadsTotal",
                                                             "historyId"}


def test_gmail_profile_is_refused_with_only_gmail_send(gmail, call):
    response = call(gmail, "GET", "/gmail/v1/users/me/profile", "g.send")
    error = google_error(response, 403, "PERMISSION_DENIED", "insufficientPermissions",
                         "Request had insufficient authentication scopes.")
    assert error["details"][0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="https://accounts.google.com/", error="insufficient_scope", scope="')
    assert "https://mail.google.com/" in challenge and "gmail.send" not in challenge


@pytest.mark.parametrize("authorization, reason", [
    (None, "required"), ("Bearer wrong", "authError"), ("Bearer g.expired", "authError"), ("Basic abc", "required")])
def test_gmail_bad_tokens_are_401(gmail, call, authorization, reason):
    headers = {"Authorization": authorization} if authorization else {}
    response = call(gmail, "POST", "/gmail/v1/users/me/messages/send", headers=headers, json=raw_of(mime_bytes()))
    error = google_error(response, 401, "UNAUTHENTICATED", reason)
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="https://accounts.google.com/"')
    if reason == "authError":
        assert error["message"].startswith("Request had invalid authentication credentials. Expected OAuth 2 access "
                                           "token, login cookie or other valid authentication credential.")
        assert response.headers["WWW-Authenticate"].endswith('error="invalid_token"')
    assert gmail.sent == []


def test_gmail_other_mailbox_is_delegation_denied(gmail, call):
    response = call(gmail, "GET", "/gmail/v1/users/boss@example.test/profile", "g.full")
    google_error(response, 403, "PERMISSION_DENIED", "forbidden", f"Delegation denied for {SENDER}")


def test_gmail_user_without_gmail_is_failed_precondition(gmail, call):
    response = call(gmail, "POST", "/gmail/v1/users/me/messages/send", "g.stranger", json=raw_of(mime_bytes()))
    google_error(response, 400, "FAILED_PRECONDITION", "failedPrecondition", "Precondition check failed.")


@pytest.mark.parametrize("encode", [
    base64.urlsafe_b64encode,
    lambda data: base64.urlsafe_b64encode(data).rstrip(b"="),
    base64.b64encode,  # proto3 JSON accepts standard base64 too
])
def test_gmail_send(gmail, call, encode):
    data = mime_bytes(extra="Bcc: hidden@example.org")
    response = call(gmail, "POST", "/gmail/v1/users/me/messages/send", "g.send", json=raw_of(data, encode))
    assert response.status_code == 200
    body = response.json()
    assert body["labelIds"] == ["SENT"] and int(body["id"], 16) >= 0 and int(body["threadId"], 16) >= 0
    [sent] = gmail.sent
    assert (sent.mailbox, sent.sub, sent.raw, sent.id) == (SENDER, SENDER, data, body["id"])
    assert (sent.mime["To"], sent.mime["Bcc"], sent.mime["Message-ID"]) == (
        "to@example.org", "hidden@example.org", "<stable-1@example.test>")
    profile = call(gmail, "GET", "/gmail/v1/users/me/profile", "g.full").json()
    assert profile["messagesTotal"] == 1


def test_gmail_send_by_upload(gmail, call):
    response = call(gmail, "POST", f"/upload/gmail/v1/users/{SENDER}/messages/send?uploadType=media", "g.send",
                    data=mime_bytes(), headers={"Content-Type": "message/rfc822"})
    assert response.status_code == 200 and response.json()["labelIds"] == ["SENT"]
    assert gmail.sent[0].mime["Subject"] == "MIME hello"


def test_gmail_send_needs_a_send_scope(gmail, call):
    response = call(gmail, "POST", "/gmail/v1/users/me/messages/send", "g.read", json=raw_of(mime_bytes()))
    google_error(response, 403, "PERMISSION_DENIED", "insufficientPermissions")


@pytest.mark.parametrize("body, reason, message", [
    ({"raw": "!!!not base64!!!"}, "invalid", "Invalid value at 'message.raw' (TYPE_BYTES), Base64 decoding failed"),
    ({}, "invalidArgument", "'raw' RFC822 payload message string or uploading message via /upload/* URL required"),
    ({"raw": "", "threadId": "abc"}, "invalidArgument", "'raw' RFC822 payload"),
    ({"raw": "eA", "colour": "blue"}, "invalid", 'Invalid JSON payload received. Unknown name "colour"'),
    (raw_of(mime_bytes(to="")), "invalidArgument", "Recipient address required"),
    (raw_of(mime_bytes(to="human@f")), "invalidArgument", "Invalid to header"),
])
def test_gmail_send_validation(gmail, call, body, reason, message):
    response = call(gmail, "POST", "/gmail/v1/users/me/messages/send", "g.send", json=body)
    error = google_error(response, 400, "INVALID_ARGUMENT", reason)
    assert error["message"].startswith(message)
    assert gmail.sent == []


def test_gmail_throttle(gmail, call):
    gmail.throttle(1, retry_after=5)
    response = call(gmail, "POST", "/gmail/v1/users/me/messages/send", "g.send", json=raw_of(mime_bytes()))
    error = google_error(response, 429, "RESOURCE_EXHAUSTED", "rateLimitExceeded")
    assert error["message"].startswith("User-rate limit exceeded.  Retry after ")
    assert error["message"].endswith("Z")
    assert "Retry-After" not in response.headers  # Google writes the time in the message only
    assert call(gmail, "POST", "/gmail/v1/users/me/messages/send", "g.send",
                json=raw_of(mime_bytes())).status_code == 200


def test_gmail_request_log_keeps_no_token(gmail, call):
    call(gmail, "GET", "/gmail/v1/users/me/profile", "g.read")
    call(gmail, "GET", "/gmail/v1/users/me/profile", headers={"Authorization": "g.read"})
    assert [(r.method, r.path, r.status, r.auth_scheme) for r in gmail.requests] == [
        ("GET", "/gmail/v1/users/me/profile", 200, "Bearer"),
        ("GET", "/gmail/v1/users/me/profile", 401, "(other)")]
    assert "g.read" not in repr(gmail.requests)
