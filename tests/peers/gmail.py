"""A Gmail API look-alike (users.getProfile, users.messages.send and .get, users.settings.sendAs.list) over
HTTPS on 127.0.0.1.

Import the fixture into the test module (it needs `test_ca` from tests/peers/tls.py):

    from tests.peers.gmail import gmail_peer  # noqa: F401

    def test_x(gmail_peer):
        peer = gmail_peer(verifier, users={"sender@example.test"})
        peer.url                 # "https://127.0.0.1:<port>", in place of https://gmail.googleapis.com
        peer.sent                # [GmailSentMail(mailbox, mime, raw, sub, id, thread_id, sent_from, upload)]
        peer.requests            # [PeerRequest(method, path, status, auth_scheme, client)]; never the token
        peer.add_alias("sender@example.test", "desk@example.test", verified=True)   # a send-as alias
        peer.throttle(2, retry_after=3, reason="userRateLimitExceeded")   # the next 2 requests are refused
        peer.stop()              # also done at teardown

`verifier` is any object with `introspect(token) -> dict | None` (keys active, sub, scope, exp, ...);
`sub` is the mailbox the token acts for. `users` are the addresses that have Gmail.

Answered like Google ({"error": {"code", "message", "errors": [...], "status"}}):
    GET  /gmail/v1/users/{userId}/profile
    GET  /gmail/v1/users/{userId}/settings/sendAs
    GET  /gmail/v1/users/{userId}/messages/{id}?format=metadata&metadataHeaders=From
    POST /gmail/v1/users/{userId}/messages/send                            JSON {"raw": base64url(message)}
    POST /upload/gmail/v1/users/{userId}/messages/send?uploadType=media      body message/rfc822
    POST /upload/gmail/v1/users/{userId}/messages/send?uploadType=multipart  multipart/related: JSON, message
Checks, in order: throttle, request size, token (401), scope (403 insufficient scopes), userId (403
delegation denied, 400 failedPrecondition for an address without Gmail), body (400 INVALID_ARGUMENT).
Scopes are the ones Google's discovery document lists per method: getProfile does NOT accept gmail.send;
sendAs.list takes gmail.settings.basic, gmail.readonly, gmail.modify or mail.google.com; messages.get
with format=metadata also gmail.metadata.

What it holds as Gmail does (and where that is documented):
  - A From that is neither the mailbox nor one of its send-as aliases (verified, or a Workspace
    alias without a verification status) is replaced with the mailbox's address, and the send
    succeeds all the same (googleapis/google-api-php-client#2393; users.settings.sendAs,
    https://developers.google.com/workspace/gmail/api/reference/rest/v1/users.settings.sendAs:
    "Send-as aliases correspond to the 'Send Mail As' feature"). `sent_from` is the From Gmail
    used, and messages.get answers with it.
  - The JSON endpoint takes at most JSON_LIMIT (5 MB) of request body and answers a larger one
    with Google's front end's HTML 413; the upload endpoint takes messages up to 35 MB
    (messages.send: "Maximum file size: 35MB, Accepted Media MIME types: message/*",
    https://developers.google.com/workspace/gmail/api/reference/rest/v1/users.messages/send).
  - Rate limits as Google sends them, with no Retry-After header: 403 userRateLimitExceeded,
    rateLimitExceeded or dailyLimitExceeded (domain usageLimits), or 429 RESOURCE_EXHAUSTED
    rateLimitExceeded, the time to retry written in the message ("User-rate limit exceeded.  Retry
    after 2026-12-06T10:00:00.000Z"):
    https://developers.google.com/workspace/gmail/api/guides/handle-errors.
"""
import base64
import binascii
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formataddr, getaddresses

import pytest
from flask import Flask, Response, request

from tests.peers.graph import PeerRequest, auth_scheme, client_of, stop_quickly
from tests.peers.https import HttpsPeer
from tests.peers.tls import server_context

DEFAULT_USERS = {"sender@example.test"}
MAIL = "https://mail.google.com/"
AUTH = "https://www.googleapis.com/auth/"
# From the Gmail discovery document (googleapiclient/discovery_cache/documents/gmail.v1.json).
SEND_SCOPES = {MAIL, AUTH + "gmail.send", AUTH + "gmail.compose", AUTH + "gmail.modify",
               AUTH + "gmail.addons.current.action.compose"}
PROFILE_SCOPES = {MAIL, AUTH + "gmail.compose", AUTH + "gmail.metadata", AUTH + "gmail.modify",
                  AUTH + "gmail.readonly"}
SEND_AS_SCOPES = {MAIL, AUTH + "gmail.modify", AUTH + "gmail.readonly", AUTH + "gmail.settings.basic"}
GET_SCOPES = {MAIL, AUTH + "gmail.modify", AUTH + "gmail.readonly", AUTH + "gmail.addons.current.message.action",
              AUTH + "gmail.addons.current.message.readonly", AUTH + "gmail.addons.current.message.metadata"}
METADATA_SCOPES = GET_SCOPES | {AUTH + "gmail.metadata"}
METHODS = {"profile": "caribou.api.proto.MailboxService.GetProfile",
           "send": "caribou.api.proto.MessageService.SendMessage",
           "sendAs": "caribou.api.proto.SettingsService.ListSendAs",
           "get": "caribou.api.proto.MessageService.GetMessage"}
JSON_LIMIT = 5 * 1024 * 1024  # bytes of a JSON request to messages.send
UPLOAD_LIMIT = 35 * 1024 * 1024  # bytes of a message through /upload
TOO_LARGE = ("<!DOCTYPE html>\n<html lang=en>\n<meta charset=utf-8>\n<title>Error 413 (Request Entity Too Large)!!1"
             "</title>\n<p><b>413.</b> <ins>That’s an error.</ins>\n<p>Your client issued a request that was too "
             "large.  <ins>That’s all we know.</ins>\n")
RATE_LIMITS = {  # reason -> (status code, status, message before the retry time or None)
    "userRateLimitExceeded": (403, "PERMISSION_DENIED", "User-rate limit exceeded.  Retry after "),
    "rateLimitExceeded": (403, "PERMISSION_DENIED", None),
    "dailyLimitExceeded": (403, "PERMISSION_DENIED", None),
    "429": (429, "RESOURCE_EXHAUSTED", "User-rate limit exceeded.  Retry after "),
}
RATE_TEXTS = {"rateLimitExceeded": "Rate Limit Exceeded", "dailyLimitExceeded": "Daily Limit Exceeded"}
MESSAGE_FIELDS = {"id", "threadId", "labelIds", "snippet", "historyId", "internalDate", "payload", "sizeEstimate",
                  "raw", "classificationLabelValues"}

REALM = 'Bearer realm="https://accounts.google.com/"'
INVALID_CREDENTIALS = ("Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
                       "or other valid authentication credential. "
                       "See https://developers.google.com/identity/sign-in/web/devconsole-project.")
MISSING_CREDENTIALS = ("Request is missing required authentication credential. Expected OAuth 2 access token, login "
                       "cookie or other valid authentication credential. "
                       "See https://developers.google.com/identity/sign-in/web/devconsole-project.")
RAW_REQUIRED = "'raw' RFC822 payload message string or uploading message via /upload/* URL required"
BASE64_ALPHABET = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")


@dataclass
class GmailSentMail:
    mailbox: str           # the sender's address, as listed in `users`
    mime: EmailMessage
    raw: bytes             # the message bytes as decoded from `raw` (or the upload body)
    sub: str               # the token's sub
    id: str
    thread_id: str
    sent_from: str = ""    # the From Gmail sent it with (the mailbox's address when the From was not its alias)
    upload: str = ""       # "", "media" or "multipart": how it came


class GoogleError(Exception):
    def __init__(self, code: int, status: str, message: str, reason: str, *, domain: str = "global",
                 error_message: str | None = None, extra: dict | None = None, headers: dict | None = None,
                 details: list | None = None):
        super().__init__(message)
        self.code, self.status, self.message, self.headers, self.details = code, status, message, headers, details
        self.item = {"message": error_message or message, "domain": domain, "reason": reason, **(extra or {})}

    def body(self) -> dict:
        error = {"code": self.code, "message": self.message, "errors": [self.item], "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def _invalid_argument(message: str, reason: str = "invalidArgument") -> GoogleError:
    return GoogleError(400, "INVALID_ARGUMENT", message, reason)


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def decode_raw(raw: str) -> bytes:
    """Bytes from the `raw` field: proto3 JSON accepts base64url and standard base64, padded or not."""
    if not BASE64_ALPHABET.match(raw):
        raise binascii.Error("not base64")
    standard = raw.rstrip("=").replace("-", "+").replace("_", "/")
    if len(standard) % 4 == 1:
        raise binascii.Error("bad length")
    return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)


def _check_recipients(mime: EmailMessage) -> None:
    """Google's answers for a message without recipients, or with a header it cannot read."""
    count = 0
    for name in ("To", "Cc", "Bcc"):
        for header in mime.get_all(name, []):
            addresses = getattr(header, "addresses", ())
            if header.defects or any(not a.username or "." not in a.domain for a in addresses):
                raise _invalid_argument(f"Invalid {name.lower()} header")
            count += len(addresses)
    if not count:
        raise _invalid_argument("Recipient address required")


class GmailPeer:
    """The Gmail API; see the module docstring."""

    def __init__(self, verifier, users=None, context=None):
        self.verifier = verifier
        self.users = {address.lower(): address for address in (DEFAULT_USERS if users is None else users)}
        self.aliases: dict[str, list[dict]] = {}  # mailbox -> its custom send-as entries
        self.requests: list[PeerRequest] = []
        self.sent: list[GmailSentMail] = []
        self._lock = threading.Lock()
        self._throttled = 0
        self._retry_after = 2
        self._rate_reason = "429"
        self._history_id = 1000
        self.app = self._make_app()
        self._server = HttpsPeer(self.app, context, keep_alive=True)  # as the Gmail API does (HTTP/1.1)
        self.url = self._server.url

    # --- controls ---------------------------------------------------------------

    def throttle(self, n: int, retry_after: int = 2, reason: str = "429") -> None:
        """The next `n` requests are refused as Google limits rates (a key of RATE_LIMITS), the time to retry
        (`retry_after` seconds from now) in the message where Google writes it; never a Retry-After header."""
        with self._lock:
            self._throttled, self._retry_after, self._rate_reason = n, retry_after, reason

    def add_alias(self, mailbox: str, alias: str, verified: bool = True, display_name: str = "") -> None:
        """A custom "Send mail as" address of the mailbox; an unverified one is "pending"."""
        self.aliases.setdefault(mailbox.lower(), []).append(
            {"sendAsEmail": alias, "displayName": display_name, "replyToAddress": "", "signature": "",
             "isPrimary": False, "isDefault": False, "treatAsAlias": True,
             "verificationStatus": "accepted" if verified else "pending"})

    def stop(self) -> None:
        stop_quickly(self._server)

    # --- the WSGI app -----------------------------------------------------------------

    def _make_app(self) -> Flask:
        app = Flask(f"gmail-peer-{id(self)}")
        app.add_url_rule("/gmail/v1/users/<user_id>/profile", "profile", self.get_profile, methods=["GET"])
        app.add_url_rule("/gmail/v1/users/<user_id>/settings/sendAs", "sendAs", self.list_send_as, methods=["GET"])
        app.add_url_rule("/gmail/v1/users/<user_id>/messages/<message_id>", "get", self.get_message,
                         methods=["GET"])
        app.add_url_rule("/gmail/v1/users/<user_id>/messages/send", "send", self.send, methods=["POST"])
        app.add_url_rule("/upload/gmail/v1/users/<user_id>/messages/send", "upload", self.upload, methods=["POST"])
        app.before_request(self._before)
        app.after_request(self._after)
        app.register_error_handler(GoogleError, self._error_response)
        return app

    def _before(self):
        with self._lock:
            throttled = self._throttled > 0
            if throttled:
                self._throttled -= 1
        if throttled:
            code, status, prefix = RATE_LIMITS[self._rate_reason]
            retry = _rfc3339(datetime.now(timezone.utc) + timedelta(seconds=self._retry_after))
            message = f"{prefix}{retry}" if prefix else RATE_TEXTS[self._rate_reason]
            reason = "rateLimitExceeded" if self._rate_reason == "429" else self._rate_reason
            raise GoogleError(code, status, message, reason, domain="usageLimits")
        size = request.content_length or 0
        limit = UPLOAD_LIMIT if request.path.startswith("/upload/") else JSON_LIMIT
        if request.method == "POST" and size > limit:
            request.get_data()  # read it all, so the connection stays usable
            return Response(TOO_LARGE, status=413, content_type="text/html; charset=UTF-8")

    def _after(self, response: Response) -> Response:
        self.requests.append(PeerRequest(request.method, request.path, response.status_code,
                                         auth_scheme(request.headers.get("Authorization")), client_of(request)))
        return response

    @staticmethod
    def _error_response(error: GoogleError) -> Response:
        return Response(json.dumps(error.body()), status=error.code, headers=error.headers,
                        content_type="application/json; charset=UTF-8")

    @staticmethod
    def _json(body: dict) -> Response:
        return Response(json.dumps(body), status=200, content_type="application/json; charset=UTF-8")

    # --- authorization ------------------------------------------------------------------

    def authenticate(self) -> dict:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise GoogleError(401, "UNAUTHENTICATED", MISSING_CREDENTIALS, "required", error_message="Login Required.",
                              extra={"location": "Authorization", "locationType": "header"},
                              headers={"WWW-Authenticate": REALM})
        claims = self.verifier.introspect(token)
        expired = claims is not None and (
            not claims.get("active", True) or (claims.get("exp") is not None and claims["exp"] <= time.time()))
        if claims is None or expired:
            raise GoogleError(401, "UNAUTHENTICATED", INVALID_CREDENTIALS, "authError",
                              error_message="Invalid Credentials",
                              extra={"location": "Authorization", "locationType": "header"},
                              headers={"WWW-Authenticate": REALM + ', error="invalid_token"'})
        return claims

    @staticmethod
    def require_scope(claims: dict, accepted: set[str], method: str) -> None:
        if set((claims.get("scope") or "").split()) & accepted:
            return
        info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                "domain": "googleapis.com", "metadata": {"service": "gmail.googleapis.com", "method": METHODS[method]}}
        challenge = f'{REALM}, error="insufficient_scope", scope="{" ".join(sorted(accepted))}"'
        raise GoogleError(403, "PERMISSION_DENIED", "Request had insufficient authentication scopes.",
                          "insufficientPermissions", error_message="Insufficient Permission",
                          headers={"WWW-Authenticate": challenge}, details=[info])

    def mailbox(self, claims: dict, user_id: str) -> str:
        """The address `userId` names: "me" or the token's own address; another address is delegation."""
        sub = claims.get("sub") or ""
        if user_id.lower() not in ("me", sub.lower()):
            raise GoogleError(403, "PERMISSION_DENIED", f"Delegation denied for {sub}", "forbidden")
        if sub.lower() not in self.users:
            raise GoogleError(400, "FAILED_PRECONDITION", "Precondition check failed.", "failedPrecondition")
        return self.users[sub.lower()]

    def _authorize(self, user_id: str, scopes: set[str], method: str) -> tuple[dict, str]:
        claims = self.authenticate()
        self.require_scope(claims, scopes, method)
        return claims, self.mailbox(claims, user_id)

    # --- users.getProfile -------------------------------------------------------------------

    def get_profile(self, user_id: str) -> Response:
        _, address = self._authorize(user_id, PROFILE_SCOPES, "profile")
        count = sum(1 for mail in self.sent if mail.mailbox == address)
        return self._json({"emailAddress": address, "messagesTotal": count, "threadsTotal": count,
                           "historyId": str(self._history_id)})

    # --- users.messages.send -------------------------------------------------------------------

    def send(self, user_id: str) -> Response:
        claims, address = self._authorize(user_id, SEND_SCOPES, "send")
        return self._accept(claims, address, self._raw_from_json())

    def upload(self, user_id: str) -> Response:
        claims, address = self._authorize(user_id, SEND_SCOPES, "send")
        kind = request.args.get("uploadType")
        if kind == "multipart":
            return self._accept(claims, address, self._multipart(), "multipart")
        if kind != "media":
            raise _invalid_argument("This peer supports uploadType=media and uploadType=multipart", reason="badContent")
        if not request.mimetype.startswith("message/"):
            raise _invalid_argument(f"Media type '{request.mimetype}' is not supported. Valid media types: "
                                    "[message/*]", reason="badContent")
        data = request.get_data()
        if not data:
            raise _invalid_argument(RAW_REQUIRED)
        return self._accept(claims, address, data, "media")

    @staticmethod
    def _multipart() -> bytes:
        """multipart/related: the metadata (JSON) first, then the message (message/*)."""
        if request.mimetype != "multipart/related":
            raise _invalid_argument("uploadType=multipart needs Content-Type multipart/related", reason="badContent")
        head = f"Content-Type: {request.headers.get('Content-Type')}\r\n\r\n".encode()
        parts = BytesParser(policy=policy.default).parsebytes(head + request.get_data())
        pieces = list(parts.iter_parts()) if parts.is_multipart() else []
        if len(pieces) != 2 or pieces[0].get_content_type() != "application/json" \
                or pieces[1].get_content_maintype() != "message":
            raise _invalid_argument("A multipart upload has a JSON part and a message/* part", reason="badContent")
        payload = pieces[1].get_payload()
        data = payload[0].as_bytes() if isinstance(payload, list) else pieces[1].get_payload(decode=True)
        if not data:
            raise _invalid_argument(RAW_REQUIRED)
        return data

    # --- users.settings.sendAs.list and users.messages.get ------------------------------------------

    def list_send_as(self, user_id: str) -> Response:
        _, address = self._authorize(user_id, SEND_AS_SCOPES, "sendAs")
        primary = {"sendAsEmail": address, "displayName": "", "replyToAddress": "", "signature": "",
                   "isPrimary": True, "isDefault": True}
        return self._json({"sendAs": [primary, *self.aliases.get(address.lower(), [])]})

    def get_message(self, user_id: str, message_id: str) -> Response:
        metadata = request.args.get("format") == "metadata"
        _, address = self._authorize(user_id, METADATA_SCOPES if metadata else GET_SCOPES, "get")
        mail = next((m for m in self.sent if m.id == message_id and m.mailbox == address), None)
        if mail is None:
            raise GoogleError(404, "NOT_FOUND", "Requested entity was not found.", "notFound")
        wanted = {name.lower() for name in request.args.getlist("metadataHeaders")}
        headers = [{"name": name, "value": mail.sent_from if name.lower() == "from" else str(value)}
                   for name, value in mail.mime.items() if name.lower() != "bcc"
                   and (not wanted or name.lower() in wanted)]
        return self._json({"id": mail.id, "threadId": mail.thread_id, "labelIds": ["SENT"],
                           "sizeEstimate": len(mail.raw), "payload": {"mimeType": mail.mime.get_content_type(),
                                                                      "headers": headers}})

    def may_send_as(self, address: str, author: str) -> bool:
        """The mailbox itself, or one of its aliases Gmail will use (accepted, or a Workspace alias without a
        verification status)."""
        if author.lower() == address.lower():
            return True
        return any(entry["sendAsEmail"].lower() == author.lower() and entry.get("verificationStatus") != "pending"
                   for entry in self.aliases.get(address.lower(), []))

    @staticmethod
    def _raw_from_json() -> bytes:
        try:
            body = json.loads(request.get_data() or b"{}")
        except ValueError:
            raise _invalid_argument("Invalid JSON payload received. Unexpected token.", reason="invalid") from None
        if not isinstance(body, dict):
            raise _invalid_argument("Invalid JSON payload received. Expected an object.", reason="invalid")
        for name in body:
            if name not in MESSAGE_FIELDS:
                raise _invalid_argument(f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.',
                                        reason="invalid")
        raw = body.get("raw")
        if not raw:
            raise _invalid_argument(RAW_REQUIRED)
        try:
            return decode_raw(raw) if isinstance(raw, str) else b""
        except (binascii.Error, ValueError):
            raise _invalid_argument(f"Invalid value at 'message.raw' (TYPE_BYTES), Base64 decoding failed for "
                                    f'"{raw}"', reason="invalid") from None

    def _accept(self, claims: dict, address: str, data: bytes, upload: str = "") -> Response:
        mime = BytesParser(policy=policy.default).parsebytes(data)
        _check_recipients(mime)
        found = getaddresses([str(value) for value in mime.get_all("From", [])])
        name, author = found[0] if found else ("", "")
        sent_from = str(mime["From"]) if author and self.may_send_as(address, author) else formataddr((name, address))
        message_id, thread_id = secrets.token_hex(8), secrets.token_hex(8)
        with self._lock:
            self._history_id += 1
            self.sent.append(GmailSentMail(mailbox=address, mime=mime, raw=data, sub=claims.get("sub"),
                                           id=message_id, thread_id=thread_id, sent_from=sent_from, upload=upload))
        return self._json({"id": message_id, "threadId": thread_id, "labelIds": ["SENT"]})


@pytest.fixture
def gmail_peer(test_ca):
    """Factory: gmail_peer(verifier, users={address, ...}) -> GmailPeer, stopped at teardown."""
    started: list[GmailPeer] = []

    def start(verifier, users=None) -> GmailPeer:
        peer = GmailPeer(verifier, users, server_context(test_ca))
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()
