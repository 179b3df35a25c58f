"""The Gmail peer holds what the Gmail API does (tests/peers/gmail.py cites each): a From that is not a
send-as alias is replaced and the send succeeds; the alias list and a sent message's metadata need
their own scopes; the JSON endpoint's size limit against the upload endpoint's 35 MB; rate limits with
the retry time in the message and no Retry-After."""
import base64

import pytest

from tests.peers.gmail import JSON_LIMIT, UPLOAD_LIMIT

from .test_peer_graph_gmail import GMAIL, SENDER, DictVerifier, call, claims, google_error, mime_bytes  # noqa: F401

TOKENS = {"send": claims(SENDER, GMAIL + "send"),
          "send.settings": claims(SENDER, f"{GMAIL}send {GMAIL}settings.basic"),
          "send.metadata": claims(SENDER, f"{GMAIL}send {GMAIL}metadata"),
          "full": claims(SENDER, "https://mail.google.com/")}


@pytest.fixture
def gmail(gmail_peer):
    peer = gmail_peer(DictVerifier(TOKENS), users={SENDER})
    peer.add_alias(SENDER, "desk@example.test")
    peer.add_alias(SENDER, "pending@example.test", verified=False)
    return peer


def from_(address: str) -> bytes:
    return mime_bytes().replace(f"From: {SENDER}".encode(), f"From: Help Desk <{address}>".encode())


def send(gmail, call, data: bytes, token="send"):  # noqa: F811
    return call(gmail, "POST", "/gmail/v1/users/me/messages/send", token,
                json={"raw": base64.urlsafe_b64encode(data).decode()})


@pytest.mark.parametrize("author, used", [
    (SENDER, f"Help Desk <{SENDER}>"),
    ("desk@example.test", "Help Desk <desk@example.test>"),
    ("pending@example.test", f"Help Desk <{SENDER}>"),      # not verified yet: replaced
    ("noreply@elsewhere.example", f"Help Desk <{SENDER}>"),  # not an alias: replaced, and still 200
])
def test_a_from_that_is_not_an_alias_is_replaced_silently(gmail, call, author, used):  # noqa: F811
    response = send(gmail, call, from_(author))
    assert response.status_code == 200
    [mail] = gmail.sent
    assert mail.sent_from == used and mail.raw == from_(author)


def test_the_sent_messages_from_needs_a_metadata_scope(gmail, call):  # noqa: F811
    sent = send(gmail, call, from_("noreply@elsewhere.example")).json()
    path = f"/gmail/v1/users/me/messages/{sent['id']}?format=metadata&metadataHeaders=From"
    google_error(call(gmail, "GET", path, "send"), 403, "PERMISSION_DENIED", "insufficientPermissions")
    headers = call(gmail, "GET", path, "send.metadata").json()["payload"]["headers"]
    assert headers == [{"name": "From", "value": f"Help Desk <{SENDER}>"}]
    google_error(call(gmail, "GET", "/gmail/v1/users/me/messages/0000?format=metadata", "full"), 404, "NOT_FOUND",
                 "notFound")


def test_the_alias_list_needs_a_settings_or_read_scope(gmail, call):  # noqa: F811
    google_error(call(gmail, "GET", "/gmail/v1/users/me/settings/sendAs", "send"), 403, "PERMISSION_DENIED",
                 "insufficientPermissions")
    entries = call(gmail, "GET", "/gmail/v1/users/me/settings/sendAs", "send.settings").json()["sendAs"]
    assert [(e["sendAsEmail"], e["isPrimary"], e.get("verificationStatus")) for e in entries] == [
        (SENDER, True, None), ("desk@example.test", False, "accepted"), ("pending@example.test", False, "pending")]


def test_the_json_endpoint_refuses_a_large_body_the_upload_endpoint_takes(gmail, call):  # noqa: F811
    large = mime_bytes().replace(b"MIME body", b"x" * (JSON_LIMIT * 3 // 4 + 10))
    refused = send(gmail, call, large)
    assert refused.status_code == 413 and "That’s an error." in refused.text and gmail.sent == []
    media = call(gmail, "POST", "/upload/gmail/v1/users/me/messages/send?uploadType=media", "send", data=large,
                 headers={"Content-Type": "message/rfc822"})
    assert media.status_code == 200 and gmail.sent[0].raw == large and gmail.sent[0].upload == "media"


def test_a_multipart_upload(gmail, call):  # noqa: F811
    body = (b"--b1\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{}\r\n--b1\r\n"
            b"Content-Type: message/rfc822\r\n\r\n" + mime_bytes() + b"\r\n--b1--\r\n")
    response = call(gmail, "POST", "/upload/gmail/v1/users/me/messages/send?uploadType=multipart", "send", data=body,
                    headers={"Content-Type": "multipart/related; boundary=b1"})
    assert response.status_code == 200, response.text
    assert gmail.sent[0].mime["Subject"] == "MIME hello" and gmail.sent[0].upload == "multipart"


def test_the_upload_endpoint_stops_at_35_mb(gmail, call):  # noqa: F811
    response = call(gmail, "POST", "/upload/gmail/v1/users/me/messages/send?uploadType=media", "send",
                    data=b"x" * (UPLOAD_LIMIT + 1), headers={"Content-Type": "message/rfc822"})
    assert response.status_code == 413 and gmail.sent == []


@pytest.mark.parametrize("reason, code, message", [
    ("userRateLimitExceeded", 403, "User-rate limit exceeded.  Retry after "),
    ("rateLimitExceeded", 403, "Rate Limit Exceeded"),
    ("dailyLimitExceeded", 403, "Daily Limit Exceeded"),
    ("429", 429, "User-rate limit exceeded.  Retry after "),
])
def test_rate_limits_as_google_sends_them(gmail, call, reason, code, message):  # noqa: F811
    gmail.throttle(1, retry_after=60, reason=reason)
    response = send(gmail, call, mime_bytes())
    error = google_error(response, code, "PERMISSION_DENIED" if code == 403 else "RESOURCE_EXHAUSTED",
                         "rateLimitExceeded" if reason == "429" else reason)
    assert error["message"].startswith(message) and error["errors"][0]["domain"] == "usageLimits"
    assert "Retry-After" not in response.headers
