"""A Microsoft Graph look-alike (sendMail and users) over HTTPS on 127.0.0.1, for the Graph transport.

Import the fixture into the test module (it needs `test_ca` from tests/peers/tls.py):

    from tests.peers.graph import graph_peer  # noqa: F401

    def test_x(graph_peer):
        peer = graph_peer(verifier, users={"sender@example.test": {"id": "<guid>", "displayName": "Sender"},
                                           "shared@example.test": {"send_as": ["sender@example.test"]}},
                          cloud="global")
        peer.url                 # "https://127.0.0.1:<port>", the Graph root (the API is under /v1.0)
        peer.sent                # [GraphSentMail(mailbox, json, mime, save_to_sent_items, sub, client_id, app_only,
                                 #                recipients, sender)]
        peer.requests            # [PeerRequest(method, path, status, auth_scheme, client)]; never the token
        peer.throttle(2, retry_after=3)   # the next 2 requests get 429 ApplicationThrottled, Retry-After: 3
        peer.stop()              # also done at teardown

`verifier` is any object with `introspect(token) -> dict | None` (keys active, sub, client_id, scope,
roles, aud, exp, grant_type). A token is app-only when it has roles or comes from client credentials,
else delegated for the user named by `sub`.

What it holds as strictly as Graph does (each with its documentation):
  - The token's `aud` must be this cloud's Graph (`cloud`: global, gcc_high, dod, china; its root URL,
    with or without the slash, or Graph's application ID 00000003-0000-0000-c000-000000000000; the
    peer's own URL counts as the root): a token for another cloud, for Exchange or without any
    audience is "401 InvalidAuthenticationToken: Invalid audience."
    (https://learn.microsoft.com/graph/deployments: each cloud's Graph takes only its own tokens).
  - A token with neither scopes nor roles (what Entra issues to an app before admin consent) is
    "401 AccessDenied: Either scp or roles claim need to be present in the token."
  - Reading a user (GET /me, /users/{id}) needs User.Read for one's own profile and
    User.ReadBasic.All or more for another's (delegated); User.Read.All or similar roles
    (app-only): https://learn.microsoft.com/graph/api/user-get (Permissions).
  - The mailbox permission model of Exchange Online
    (https://learn.microsoft.com/graph/outlook-send-mail-from-other-user): each user may carry
    "send_as", "send_on_behalf" and "full_access" lists of principals (user principal names).
    sendMail from another user's mailbox needs Mail.Send.Shared and one of those rights on it
    (else 403 ErrorAccessDenied); app-only needs the Mail.Send role (else 403 ErrorAccessDenied)
    and acts as the mailbox in the URL. A From (JSON `from`, or the MIME From header) other than
    that mailbox needs Send As, or Send on Behalf (then Exchange sets Sender to the one acting),
    of the one acting (the signed-in user; for app-only the URL's mailbox) on the From address,
    else "403 ErrorSendAsDenied: The user account which was used to submit this request does not
    have the right to send mail on behalf of the specified sending account., Cannot submit
    message." (the wording of the user: sendMail reference's example and of Graph's answers).
  - A MIME message's headers become the sent item's properties as Exchange's MIME reader maps them
    ([MS-OXCMAIL] 2.2.3.2: Importance, else X-Priority 1-2 high / 4-5 low, to `importance`;
    Disposition-Notification-To to `isReadReceiptRequested` (PidTagReadRequested);
    Return-Receipt-To to `isDeliveryReceiptRequested` (PidTagOriginatorDeliveryReportRequested);
    Sensitivity Personal/Private/Company-Confidential to PidTagSensitivity 1/2/3, which Graph has
    no field for and shows as a singleValueExtendedProperty "Integer 0x0036"): `properties`.
  - The MIME form (https://learn.microsoft.com/graph/outlook-send-mime-message): base64 of the
    whole message with Content-Type text/plain; the recipients are its To, Cc and Bcc (the Bcc
    header is not delivered: `recipients` lists them, `mime` keeps the request's message); no
    saveToSentItems parameter exists for it, so a copy is always saved
    (microsoftgraph/microsoft-graph-docs#18698); the request is limited to 4 MB like any other.
    S/MIME signed and encrypted messages are sent "only in their MIME message format" (the same page):
    taken as they are, their outer To, Cc and Bcc naming the recipients, classed as Exchange does
    (`item_class`, exchange.message_class).

Answered like Graph v1.0 (JSON errors {"error": {"code", "message", "innerError"}}, `request-id` and
`client-request-id` headers on every response):
    GET  /v1.0/me, /v1.0/users/{id | userPrincipalName}
    POST /v1.0/me/sendMail, /v1.0/users/{id | userPrincipalName}/sendMail
         JSON ({"message": {...}, "saveToSentItems": ...}) or base64 MIME with Content-Type: text/plain
Checks, in order: throttle, request size (4 MB), token, mailbox exists, permission, body.
"""
import base64
import binascii
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, formataddr, getaddresses, make_msgid

import pytest
from flask import Flask, Response, g, request

from tests.peers.exchange import message_class
from tests.peers.https import HttpsPeer
from tests.peers.tls import server_context

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
GRAPH_ROOTS = {"global": GRAPH_RESOURCE, "gcc_high": "https://graph.microsoft.us",
               "dod": "https://dod-graph.microsoft.us", "china": "https://microsoftgraph.chinacloudapi.cn"}
NO_PERMISSIONS = "Either scp or roles claim need to be present in the token."
SEND_AS_DENIED = ("The user account which was used to submit this request does not have the right to send mail on "
                  "behalf of the specified sending account., Cannot submit message.")
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_INTERNET_HEADERS = 5
DEFAULT_USERS = {"sender@example.test": {"id": "5f0c8a2e-7b1d-4c3e-9a6f-2d8e1b4c7a90", "displayName": "Sender"}}

WWW_AUTHENTICATE = (f'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
                    f'client_id="{GRAPH_APP_ID}"')
ODATA_JSON = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
IDX14100 = ("IDX14100: JWT is not well formed, there are no dots (.).\nThe token needs to be in JWS or JWE "
            "Compact Serialization Format. (JWS): 'EncodedHeader.EncodedPayload.EncodedSignature'. "
            "(JWE): 'EncodedProtectedHeader.EncodedEncryptedKey.EncodedInitializationVector."
            "EncodedCiphertext.EncodedAuthenticationTag'.")
HEADER_COUNT_MESSAGE = "Maximum number of headers in one message should be less than or equal to 5."

USER_READ_OTHERS = {"user.readbasic.all", "user.read.all", "user.readwrite.all", "directory.read.all",
                    "directory.readwrite.all"}
USER_READ_OWN = {"user.read", "user.readwrite", *USER_READ_OTHERS}
MESSAGE_PROPERTIES = {
    "attachments", "bccRecipients", "body", "bodyPreview", "categories", "ccRecipients", "changeKey",
    "conversationId", "conversationIndex", "createdDateTime", "extensions", "flag", "from",
    "hasAttachments", "id", "importance", "inferenceClassification", "internetMessageHeaders",
    "internetMessageId", "isDeliveryReceiptRequested", "isDraft", "isRead", "isReadReceiptRequested",
    "lastModifiedDateTime", "multiValueExtendedProperties", "parentFolderId", "receivedDateTime", "replyTo",
    "sender", "sentDateTime", "singleValueExtendedProperties", "subject", "toRecipients", "uniqueBody",
    "webLink",
}
KNOWN_AUTH_SCHEMES = {"bearer", "basic", "digest", "negotiate", "ntlm", "oauth", "token"}
RESOLVABLE_ADDRESS = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")


@dataclass
class PeerRequest:
    """One request as the peer saw it. Only the Authorization *scheme* is kept, never the credential."""
    method: str
    path: str
    status: int
    auth_scheme: str | None
    client: tuple = ()  # the client's address and port: requests over one kept connection share it


@dataclass
class GraphSentMail:
    mailbox: str                 # userPrincipalName of the mailbox that sent it
    json: dict | None            # the parsed JSON body, None for a MIME request
    mime: EmailMessage           # the MIME request parsed, or a message built from the JSON
    save_to_sent_items: bool
    sub: str                     # the token's sub (user name, or client id for app-only)
    client_id: str | None
    app_only: bool
    recipients: list[str] = None  # every recipient (To, Cc, Bcc), as Exchange delivers to them
    sender: str | None = None    # the Sender Exchange sets when someone sends on behalf of the From
    raw: bytes | None = None     # the MIME request's message bytes, as decoded
    properties: dict | None = None  # the sent item as GET .../messages/{id} would show it: importance,
                                    # isReadReceiptRequested, isDeliveryReceiptRequested,
                                    # singleValueExtendedProperties (PidTagSensitivity "Integer 0x0036")
    item_class: str = "IPM.Note"  # what Exchange makes of it (exchange.message_class: S/MIME signed or encrypted)

class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def stop_quickly(server: HttpsPeer) -> None:
    """HttpsPeer.stop(), without waiting for serve_forever's 0.5 s poll: a throwaway connection wakes it."""
    stopper = threading.Thread(target=server.stop, name=f"stop-{server.port}")
    stopper.start()
    while stopper.is_alive():
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
        except OSError:
            pass
        stopper.join(0.02)


def client_of(request) -> tuple:
    return request.environ.get("REMOTE_ADDR"), request.environ.get("REMOTE_PORT")


def auth_scheme(header: str | None) -> str | None:
    """The scheme word of an Authorization header, or "(other)": never anything that could be a token."""
    if not header:
        return None
    word, space, _ = header.strip().partition(" ")
    return word if space and word.lower() in KNOWN_AUTH_SCHEMES else "(other)"


def _node_kind(value) -> str:
    return "StartObject" if isinstance(value, dict) else "StartArray" if isinstance(value, list) else "PrimitiveValue"


def _body_read_error(message: str) -> GraphError:
    return GraphError(400, "RequestBodyRead", message)


def _expect(value, kind: type, name: str):
    if not isinstance(value, kind):
        expected = "StartObject" if kind is dict else "StartArray" if kind is list else "PrimitiveValue"
        raise _body_read_error(f"An unexpected '{_node_kind(value)}' node was found for property named '{name}' "
                               f"when reading from the JSON reader. A '{expected}' node was expected.")
    return value


def _enum(value, allowed: tuple[str, ...], type_name: str) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise _body_read_error(f"Cannot convert the literal '{value}' to the expected type '{type_name}'.")
    return value.lower()


def _boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _body_read_error(f"Cannot convert the literal '{value}' to the expected type 'Edm.Boolean'.")


def _recipient(item, name: str) -> tuple[str, str]:
    """(display name, address) of a {"emailAddress": {"address", "name"?}} recipient."""
    email_address = _expect(_expect(item, dict, name).get("emailAddress"), dict, "emailAddress")
    address = email_address.get("address") or ""
    display = email_address.get("name") or ""
    for value in (address, display):
        if not isinstance(value, str):
            raise _body_read_error(f"Cannot convert the literal '{value}' to the expected type 'Edm.String'.")
    return display, address


def _recipients(message: dict, name: str) -> list[tuple[str, str]]:
    value = message.get(name)
    return [] if value is None else [_recipient(item, name) for item in _expect(value, list, name)]


def _unresolved(address: str) -> GraphError:
    return GraphError(400, "ErrorInvalidRecipients", f"At least one recipient is not valid., Recipient '{address}' "
                      "is not resolved. All recipients must be resolved before a message can be submitted.")


def _no_recipients() -> GraphError:
    return GraphError(400, "ErrorInvalidRecipients", "At least one recipient is not valid., "
                      "A message can't be sent because it contains no recipients.")


def _check_resolvable(addresses: list[str]) -> None:
    if not addresses:
        raise _no_recipients()
    for address in addresses:
        if not RESOLVABLE_ADDRESS.match(address):
            raise _unresolved(address)


def _internet_headers(message: dict) -> list[tuple[str, str]]:
    value = message.get("internetMessageHeaders")
    if value is None:
        return []
    items = _expect(value, list, "internetMessageHeaders")
    if not items or len(items) > MAX_INTERNET_HEADERS:  # Graph rejects an empty list with the same error
        raise GraphError(400, "InvalidInternetMessageHeaderCollection", HEADER_COUNT_MESSAGE)
    headers = []
    for item in items:
        header = _expect(item, dict, "internetMessageHeaders")
        name, value = str(header.get("name") or ""), str(header.get("value") or "")
        if not name.lower().startswith("x-"):
            raise GraphError(400, "InvalidInternetMessageHeader",
                             f"The internet message header name '{name}' should start with 'x-' or 'X-'.")
        headers.append((name, value))
    return headers


SENSITIVITY_TAG = "Integer 0x0036"  # PidTagSensitivity
SENSITIVITY_VALUES = {"personal": "1", "private": "2", "company-confidential": "3"}


def item_properties(message: dict | None, mime: EmailMessage) -> dict:
    """The sent item's properties: from the JSON message, or from the MIME headers ([MS-OXCMAIL])."""
    if message is not None:
        return {"importance": message.get("importance") or "normal",
                "isReadReceiptRequested": bool(message.get("isReadReceiptRequested")),
                "isDeliveryReceiptRequested": bool(message.get("isDeliveryReceiptRequested")),
                "singleValueExtendedProperties": list(message.get("singleValueExtendedProperties") or [])}
    importance = str(mime.get("Importance", "")).strip().lower()
    if importance not in ("low", "normal", "high"):
        priority = str(mime.get("X-Priority", "")).strip()[:1]
        importance = {"1": "high", "2": "high", "4": "low", "5": "low"}.get(priority, "normal")
    sensitivity = SENSITIVITY_VALUES.get(str(mime.get("Sensitivity", "")).strip().lower())
    return {"importance": importance,
            "isReadReceiptRequested": mime.get("Disposition-Notification-To") is not None,
            "isDeliveryReceiptRequested": mime.get("Return-Receipt-To") is not None,
            "singleValueExtendedProperties": [{"id": SENSITIVITY_TAG, "value": sensitivity}] if sensitivity else []}


def _check_message_properties(message: dict) -> None:
    for name in message:
        if name not in MESSAGE_PROPERTIES and not name.startswith("@odata."):
            raise _body_read_error(f"The property '{name}' does not exist on type 'microsoft.graph.message'. Make "
                                   "sure to only use property names that are defined by the type or mark the type "
                                   "as open type.")


def _format_addresses(recipients: list[tuple[str, str]]) -> str:
    return ", ".join(formataddr(recipient) for recipient in recipients)


def _add_attachments(mime: EmailMessage, message: dict) -> None:
    for item in _expect(message.get("attachments") or [], list, "attachments"):
        attachment = _expect(item, dict, "attachments")
        try:
            content = base64.b64decode(attachment.get("contentBytes") or "", validate=True)
        except (binascii.Error, TypeError):
            raise _body_read_error("The value of 'contentBytes' is not a valid base64 string.") from None
        maintype, _, subtype = (attachment.get("contentType") or "application/octet-stream").partition("/")
        mime.add_attachment(content, maintype=maintype, subtype=subtype or "octet-stream",
                            filename=attachment.get("name") or "attachment")


def build_mime(message: dict, sender: tuple[str, str], recipients: dict, headers: list, importance: str | None,
               html: bool, content: str) -> EmailMessage:
    """The message Exchange would put on the wire for a JSON sendMail (Bcc kept, so tests can read it)."""
    mime = EmailMessage()
    mime["From"] = formataddr(sender)
    for header, field in (("To", "toRecipients"), ("Cc", "ccRecipients"), ("Bcc", "bccRecipients"),
                          ("Reply-To", "replyTo")):
        if recipients[field]:
            mime[header] = _format_addresses(recipients[field])
    mime["Subject"] = message.get("subject") or ""
    mime["Date"] = format_datetime(datetime.now(timezone.utc))
    mime["Message-ID"] = message.get("internetMessageId") or make_msgid(domain=sender[1].rpartition("@")[2] or None)
    if importance:
        mime["Importance"] = importance
    for name, value in headers:
        mime[name] = value
    mime.set_content(content, subtype="html" if html else "plain")
    _add_attachments(mime, message)
    return mime


def _unknown_segment(rest: list[str]) -> str:
    """The first path segment after /v1.0 that no route of this peer knows."""
    if not rest or rest[0].lower() not in ("me", "users"):
        return rest[0] if rest else ""
    known = 1 if rest[0].lower() == "me" else 2  # /me/{action}, /users/{id}/{action}
    return rest[known] if len(rest) > known and rest[known].lower() != "sendmail" else rest[-1]


class GraphPeer:
    """The Graph service; see the module docstring. `users` maps userPrincipalName -> {"id", "displayName", ...}."""

    def __init__(self, verifier, users: dict | None = None, context=None, cloud: str = "global"):
        self.verifier = verifier
        self.cloud = cloud
        self.users = [self._user_record(upn, info) for upn, info in (DEFAULT_USERS if users is None else users).items()]
        self.requests: list[PeerRequest] = []
        self.sent: list[GraphSentMail] = []
        self._lock = threading.Lock()
        self._throttled = 0
        self._retry_after = 2
        self.app = self._make_app()
        self._server = HttpsPeer(self.app, context, keep_alive=True)  # as Graph does (HTTP/1.1)
        self.url = self._server.url

    # --- controls ---------------------------------------------------------------

    def throttle(self, n: int, retry_after: int = 2) -> None:
        """The next `n` requests are answered 429 ApplicationThrottled with `Retry-After: retry_after`."""
        with self._lock:
            self._throttled, self._retry_after = n, retry_after

    def stop(self) -> None:
        stop_quickly(self._server)

    # --- users ------------------------------------------------------------------

    @staticmethod
    def _user_record(upn: str, info: dict) -> dict:
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, upn.lower())), "displayName": upn.partition("@")[0],
                "mail": upn, "userPrincipalName": upn, "send_as": [], "send_on_behalf": [], "full_access": [], **info}

    def grant(self, mailbox: str, right: str, principal: str) -> None:
        """Exchange's Add-RecipientPermission (send_as), Set-Mailbox -GrantSendOnBehalfTo (send_on_behalf) or
        Add-MailboxPermission (full_access): `principal` gets `right` on `mailbox`."""
        self.find_user(mailbox)[right].append(principal)

    def find_user(self, key: str | None) -> dict | None:
        """A user by id or userPrincipalName (case-insensitive), like /users/{id | userPrincipalName}."""
        key = (key or "").lower()
        return next((u for u in self.users if key in (u["id"].lower(), u["userPrincipalName"].lower())), None)

    # --- the WSGI app -----------------------------------------------------------------

    def _make_app(self) -> Flask:
        app = Flask(f"graph-peer-{id(self)}")
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        app.add_url_rule("/", "root", self._dispatch, defaults={"path": ""}, methods=methods)
        app.add_url_rule("/<path:path>", "any", self._dispatch, methods=methods)
        app.before_request(self._before)
        app.after_request(self._after)
        app.register_error_handler(GraphError, self._error_response)
        return app

    def _before(self):
        g.request_id = str(uuid.uuid4())
        g.client_request_id = request.headers.get("client-request-id") or g.request_id
        with self._lock:
            throttled = self._throttled > 0
            if throttled:
                self._throttled -= 1
        if throttled:
            raise GraphError(429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.",
                             {"Retry-After": str(self._retry_after)})
        if len(request.get_data()) > MAX_REQUEST_BYTES:  # read it all so the connection stays usable
            raise GraphError(413, "ErrorRequestEntityTooLarge", "Maximum request length exceeded.")

    def _after(self, response: Response) -> Response:
        response.headers["request-id"] = g.get("request_id", "")
        response.headers["client-request-id"] = g.get("client_request_id", "")
        self.requests.append(PeerRequest(request.method, request.path, response.status_code,
                                         auth_scheme(request.headers.get("Authorization")), client_of(request)))
        return response

    def _error_response(self, error: GraphError) -> Response:
        inner = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                 "request-id": g.get("request_id", ""), "client-request-id": g.get("client_request_id", "")}
        body = {"error": {"code": error.code, "message": error.message, "innerError": inner}}
        return Response(json.dumps(body), status=error.status, headers=error.headers, mimetype="application/json")

    def _dispatch(self, path: str) -> Response:
        segments = [segment for segment in path.split("/") if segment]
        if not segments or segments[0].lower() not in ("v1.0", "beta"):
            raise GraphError(400, "BadRequest", f"Invalid version: {segments[0] if segments else ''}")
        rest = segments[1:]
        shape = [s.lower() for s in rest]
        if shape == ["me"] or (len(rest) == 2 and shape[0] == "users"):
            return self._only("GET", lambda: self.get_user(None if shape == ["me"] else rest[1]))
        if shape == ["me", "sendmail"] or (len(rest) == 3 and shape[0] == "users" and shape[2] == "sendmail"):
            return self._only("POST", lambda: self.send_mail(None if shape[0] == "me" else rest[1]))
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{_unknown_segment(rest)}'.")

    @staticmethod
    def _only(method: str, handler) -> Response:
        if request.method != method:
            raise GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.",
                             {"Allow": method})
        return handler()

    # --- authorization ------------------------------------------------------------------

    def authenticate(self) -> dict:
        """The token's claims, or a 401 InvalidAuthenticationToken as Graph words it."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise self._unauthenticated("Access token is empty.")
        claims = self.verifier.introspect(token)
        if claims is None:
            raise self._unauthenticated("Access token validation failure." if "." in token else IDX14100)
        if not claims.get("active", True) or (claims.get("exp") is not None and claims["exp"] <= time.time()):
            raise self._unauthenticated("Access token has expired or is not yet valid.")
        if not self._audience_ok(claims.get("aud")):
            raise self._unauthenticated("Invalid audience.")
        if not self.roles(claims) and not self.scopes(claims):
            raise GraphError(401, "AccessDenied", NO_PERMISSIONS, {"WWW-Authenticate": WWW_AUTHENTICATE})
        return claims

    @staticmethod
    def _unauthenticated(message: str) -> GraphError:
        return GraphError(401, "InvalidAuthenticationToken", message, {"WWW-Authenticate": WWW_AUTHENTICATE})

    def _audience_ok(self, aud) -> bool:
        root = GRAPH_ROOTS[self.cloud]
        accepted = {root, root + "/", GRAPH_APP_ID, self.url, self.url + "/"}
        return any(a in accepted for a in ([aud] if isinstance(aud, str) else aud or []))

    def scopes(self, claims: dict) -> set[str]:
        """Delegated scopes, lower-cased, without a resource prefix (https://graph.microsoft.com/Mail.Send);
        an app-only token's scope (the /.default it asked for) is none."""
        if self.app_only(claims):
            return set()
        prefixes = (GRAPH_ROOTS[self.cloud] + "/", self.url + "/", GRAPH_APP_ID + "/")
        names = set()
        for scope in (claims.get("scope") or "").split():
            for prefix in prefixes:
                scope = scope[len(prefix):] if scope.lower().startswith(prefix.lower()) else scope
            names.add(scope.lower())
        return names - {"openid", "profile", "email", "offline_access"}

    @staticmethod
    def roles(claims: dict) -> set[str]:
        return {role.lower() for role in claims.get("roles") or []}

    def app_only(self, claims: dict) -> bool:
        return bool(self.roles(claims)) or claims.get("grant_type") == "client_credentials"

    def _target(self, claims: dict, key: str | None, missing) -> dict:
        """The user named in the path, or the token's own user for /me."""
        if key is None:
            if self.app_only(claims):
                raise GraphError(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
            key = claims.get("sub")
        user = self.find_user(key)
        if user is None:
            raise missing(key)
        return user

    def _is_own(self, claims: dict, user: dict) -> bool:
        own = self.find_user(claims.get("sub"))
        return own is not None and own["id"] == user["id"]

    # --- GET /users/{id} and /me ----------------------------------------------------------------

    def get_user(self, key: str | None) -> Response:
        claims = self.authenticate()
        user = self._target(claims, key, lambda k: GraphError(
            404, "Request_ResourceNotFound",
            f"Resource '{k}' does not exist or one of its queried reference-property objects are not present."))
        if not self._may_read(claims, user):
            raise GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        body = {"@odata.context": f"{self.url}/v1.0/$metadata#users/$entity",
                **{k: user[k] for k in ("id", "displayName", "mail", "userPrincipalName")}}
        return Response(json.dumps(body), status=200, content_type=ODATA_JSON)

    def _may_read(self, claims: dict, user: dict) -> bool:
        if self.app_only(claims):
            return bool(self.roles(claims) & USER_READ_OTHERS)
        return bool(self.scopes(claims) & (USER_READ_OWN if self._is_own(claims, user) else USER_READ_OTHERS))

    # --- POST /users/{id}/sendMail and /me/sendMail ----------------------------------------------------------------

    def send_mail(self, key: str | None) -> Response:
        claims = self.authenticate()
        user = self._target(claims, key, lambda k: GraphError(
            404, "ErrorInvalidUser", f"The requested user '{k}' is invalid."))
        if not self._may_send(claims, user):
            raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        raw = None
        if request.mimetype == "text/plain":
            (mime, raw), body, save = self._mime_body(), None, True  # MIME has no saveToSentItems: always saved
        elif request.mimetype == "application/json":
            body, mime, save = self._json_body(user)
        else:
            raise GraphError(415, "UnsupportedMediaType", "Content-Type must be 'application/json' for JSON or "
                             "'text/plain' for base64-encoded MIME content.")
        sender = self._check_from(claims, user, mime)
        recipients = [address for field in ("To", "Cc", "Bcc")
                      for _, address in getaddresses([str(v) for v in mime.get_all(field, [])]) if address]
        self.sent.append(GraphSentMail(mailbox=user["userPrincipalName"], json=body, mime=mime,
                                       save_to_sent_items=save, sub=claims.get("sub"),
                                       client_id=claims.get("client_id"), app_only=self.app_only(claims),
                                       recipients=recipients, sender=sender, raw=raw,
                                       properties=item_properties(body["message"] if body else None, mime),
                                       item_class=message_class(mime)))
        return Response(status=202)

    def acting(self, claims: dict, user: dict) -> str:
        """Who Exchange checks the From against: the signed-in user, or for app-only the URL's mailbox."""
        if self.app_only(claims):
            return user["userPrincipalName"]
        own = self.find_user(claims.get("sub"))
        return own["userPrincipalName"] if own else str(claims.get("sub") or "")

    @staticmethod
    def _has(user: dict, right: str, principal: str) -> bool:
        return principal.lower() in {p.lower() for p in user.get(right, [])}

    def _may_send(self, claims: dict, user: dict) -> bool:
        if self.app_only(claims):
            return "mail.send" in self.roles(claims)
        scopes = self.scopes(claims)
        if self._is_own(claims, user):
            return bool(scopes & {"mail.send", "mail.send.shared"})
        principal = self.acting(claims, user)
        return "mail.send.shared" in scopes and any(self._has(user, right, principal)
                                                     for right in ("send_as", "send_on_behalf", "full_access"))

    def _check_from(self, claims: dict, user: dict, mime: EmailMessage) -> str | None:
        """ErrorSendAsDenied unless the one acting may send as the From; the Sender when on behalf."""
        found = getaddresses([str(v) for v in mime.get_all("From", [])])
        author = (found[0][1] if found else "") or user["mail"]
        principal = self.acting(claims, user)
        if author.lower() == principal.lower():
            return None
        target = self.find_user(author)
        if target is not None and self._has(target, "send_as", principal):
            return None
        if target is not None and self._has(target, "send_on_behalf", principal):
            return principal
        raise GraphError(403, "ErrorSendAsDenied", SEND_AS_DENIED)

    @staticmethod
    def _mime_body() -> tuple[EmailMessage, bytes]:
        compact = re.sub(rb"\s+", b"", request.get_data())
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            data = b""
        if not data:
            raise GraphError(400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
        mime = BytesParser(policy=policy.default).parsebytes(data)
        fields = [str(value) for field in ("To", "Cc", "Bcc") for value in mime.get_all(field, [])]
        _check_resolvable([address for _, address in getaddresses(fields)])
        return mime, data

    def _json_body(self, user: dict) -> tuple[dict, EmailMessage, bool]:
        try:
            body = json.loads(request.get_data() or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise GraphError(400, "BadRequest", "Unable to read JSON request payload. Please ensure Content-Type "
                             "header is set and payload is of valid JSON format.")
        for name in body:
            if name not in ("message", "saveToSentItems"):
                raise _body_read_error(f"The parameter '{name}' in the request payload is not a valid parameter "
                                       "for the operation 'sendMail'.")
        if body.get("message") is None:
            raise GraphError(400, "ErrorInvalidParameter", "The value of the parameter 'Message' is empty.")
        message = _expect(body["message"], dict, "message")
        save = _boolean(body.get("saveToSentItems", True))
        return body, self._message_mime(message, user), save

    def _message_mime(self, message: dict, user: dict) -> EmailMessage:
        _check_message_properties(message)
        recipients = {field: _recipients(message, field)
                      for field in ("toRecipients", "ccRecipients", "bccRecipients", "replyTo")}
        sender = _recipient(message["from"], "from") if message.get("from") else (user["displayName"], user["mail"])
        content_body = _expect(message.get("body") or {}, dict, "body")
        html = _enum(content_body.get("contentType", "text"), ("text", "html"), "microsoft.graph.bodyType") == "html"
        importance = message.get("importance")
        importance = None if importance is None else _enum(importance, ("low", "normal", "high"),
                                                           "microsoft.graph.importance")
        headers = _internet_headers(message)
        _check_resolvable([address for field in ("toRecipients", "ccRecipients", "bccRecipients")
                           for _, address in recipients[field]])
        content = str(content_body.get("content") or "")
        return build_mime(message, sender, recipients, headers, importance, html, content)


@pytest.fixture
def graph_peer(test_ca):
    """Factory: graph_peer(verifier, users={upn: {"id", "displayName", "send_as", ...}}, cloud="global") -> GraphPeer,
    stopped at teardown."""
    started: list[GraphPeer] = []

    def start(verifier, users: dict | None = None, cloud: str = "global") -> GraphPeer:
        peer = GraphPeer(verifier, users, server_context(test_ca), cloud)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()
