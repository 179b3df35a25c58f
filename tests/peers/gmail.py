"""A Gmail API look-alike (users.getProfile, users.messages.send) over HTTPS on 127.0.0.1.

Import the fixture into the test module (it needs `test_ca` from tests/peers/tls.py):

    from tests.peers.gmail import gmail_peer  # noqa: F401

    def test_x(gmail_peer):
        peer = gmail_peer(verifier, users={"sender@example.test"})
        peer.url                 # "https://127.0.0.1:<port>", in place of https://gmail.googleapis.com
        peer.sent                # [GmailSentMail(mailbox, mime, raw, sub, id, thread_id)]
        peer.requests            # [PeerRequest(method, path, status, auth_scheme)]; never the token
        peer.throttle(2, retry_after=3)   # the next 2 requests get 429 RESOURCE_EXHAUSTED, Retry-After: 3
        peer.stop()              # also done at teardown

`verifier` is any object with `introspect(token) -> dict | None` (keys active, sub, scope, exp, ...);
`sub` is the mailbox the token acts for. `users` are the addresses that have Gmail.

Answered like Google ({"error": {"code", "message", "errors": [...], "status"}}):
    GET  /gmail/v1/users/{userId}/profile
    POST /gmail/v1/users/{userId}/messages/send                        JSON {"raw": base64url(message)}
    POST /upload/gmail/v1/users/{userId}/messages/send?uploadType=media  body message/rfc822
Checks, in order: throttle, token (401), scope (403 insufficient scopes), userId (403 delegation denied,
400 failedPrecondition for an address without Gmail), body (400 INVALID_ARGUMENT).
Scopes are the ones Google's discovery document lists per method: getProfile does NOT accept gmail.send.
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

import pytest
from flask import Flask, Response, request

from tests.peers.graph import PeerRequest, auth_scheme, stop_quickly
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
METHODS = {"profile": "caribou.api.proto.MailboxService.GetProfile",
           "send": "caribou.api.proto.MessageService.SendMessage"}
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
        self.requests: list[PeerRequest] = []
        self.sent: list[GmailSentMail] = []
        self._lock = threading.Lock()
        self._throttled = 0
        self._retry_after = 2
        self._history_id = 1000
        self.app = self._make_app()
        self._server = HttpsPeer(self.app, context)
        self.url = self._server.url

    # --- controls ---------------------------------------------------------------

    def throttle(self, n: int, retry_after: int = 2) -> None:
        """The next `n` requests are answered 429 rateLimitExceeded with `Retry-After: retry_after`."""
        with self._lock:
            self._throttled, self._retry_after = n, retry_after

    def stop(self) -> None:
        stop_quickly(self._server)

    # --- the WSGI app -----------------------------------------------------------------

    def _make_app(self) -> Flask:
        app = Flask(f"gmail-peer-{id(self)}")
        app.add_url_rule("/gmail/v1/users/<user_id>/profile", "profile", self.get_profile, methods=["GET"])
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
            retry = _rfc3339(datetime.now(timezone.utc) + timedelta(seconds=self._retry_after))
            raise GoogleError(429, "RESOURCE_EXHAUSTED", f"User-rate limit exceeded.  Retry after {retry}",
                              "rateLimitExceeded", domain="usageLimits",
                              headers={"Retry-After": str(self._retry_after)})

    def _after(self, response: Response) -> Response:
        self.requests.append(PeerRequest(request.method, request.path, response.status_code,
                                         auth_scheme(request.headers.get("Authorization"))))
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
        if request.args.get("uploadType") != "media":
            raise _invalid_argument("This peer only supports uploadType=media", reason="badContent")
        if request.mimetype != "message/rfc822":
            raise _invalid_argument(f"Media type '{request.mimetype}' is not supported. Valid media types: "
                                    "[message/*]", reason="badContent")
        data = request.get_data()
        if not data:
            raise _invalid_argument(RAW_REQUIRED)
        return self._accept(claims, address, data)

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

    def _accept(self, claims: dict, address: str, data: bytes) -> Response:
        mime = BytesParser(policy=policy.default).parsebytes(data)
        _check_recipients(mime)
        message_id, thread_id = secrets.token_hex(8), secrets.token_hex(8)
        with self._lock:
            self._history_id += 1
            self.sent.append(GmailSentMail(mailbox=address, mime=mime, raw=data, sub=claims.get("sub"),
                                           id=message_id, thread_id=thread_id))
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
