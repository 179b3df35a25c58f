"""Pytest plugin: an Exchange Web Services endpoint on 127.0.0.1 that answers the SOAP calls exchangelib makes.

    def test_x(ews_peer, test_ca_file):
        peer = ews_peer()                      # started now, stopped at teardown
        peer.url                               # "https://127.0.0.1:<port>/EWS/Exchange.asmx"; peer.origin: no path
        peer.sent                              # [SentMessage(mailbox, disposition, mime, fields, recipients, ..., raw)]
        peer.requests                          # [EwsRequest(operation, auth_scheme, user, anchor, impersonated, ...,
                                               #             client)]: requests over one kept connection share client
        peer.operations()                      # ["GetFolder", "GetFolder", "CreateItem"]
        peer.saved                             # {(mailbox, "sentitems"): copies saved}
        peer.open_connections()                # TCP connections open at the peer now
        peer.ntlm_connections()                # open connections NTLM signed in or is signing in (forgotten at close)

    ews_peer(mailboxes={"sender@example.test": {"name": "Sender"}},
             users={"EXAMPLE\\mailer": "password", "mailer@example.test": "password"},
             verifier=None, version="Exchange2016")

mailboxes   address -> {"name": display name, "send_as": [other From addresses it may use],
                        "access": [accounts that may act on it: its own account (Basic/NTLM username) and
                                   those given Full Access]}
users       HTTP Basic (and NTLM) username -> password; the username is compared case-insensitively
verifier    an object with introspect(token) -> dict | None (sub, client_id, scope, roles, aud, exp);
            without one, Bearer tokens are refused
version     a key of VERSIONS: what ServerVersionInfo reports; a newer RequestServerVersion gets the
            ErrorInvalidServerVersion fault, and exchangelib then retries with older versions

Served by KeepAliveHttpsServer (HTTP/1.1 keep-alive, like IIS), not tests.peers.https.HttpsPeer: werkzeug
sends "Connection: close" on every answer, which exchangelib reads as "server busy" before it looks at a
401 or 403, and NTLM needs one connection for its handshake.

Authorization (checked before anything else, like IIS does):
  none or wrong          401 + WWW-Authenticate: Basic realm="<host>" (+ Bearer ... when a verifier is set)
  Basic                  against `users`
  Bearer, delegated      introspect(token) must give scope EWS.AccessAsUser.All (bare or as the
                         https://outlook.office365.com/ URL); an ExchangeImpersonation header is a fault
  Bearer, app-only       roles must hold full_access_as_app (else 403 + x-ms-diagnostics 2000008, as Exchange
                         Online); the request must carry ExchangeImpersonation (else the
                         ErrorInvalidExchangeImpersonationHeaderData fault) and X-AnchorMailbox equal to the
                         impersonated address (else the ErrorImpersonationFailed fault: our strict choice)
  peer.require_ntlm      Basic is answered 401 + WWW-Authenticate: Negotiate, NTLM; real NTLM (pyspnego
                         acceptor, one handshake per connection) is accepted for the `users`. NTLM signs in
                         the connection, not the request: once its handshake is done, a request without an
                         Authorization header on the same connection is that user's, as IIS does by default
                         (windowsAuthentication's authPersistSingleRequest, default False; True would make IIS
                         re-authenticate every NTLM request "even those on the same connection": the IIS
                         settings schema, learn.microsoft.com/previous-versions/iis/settings-schema/aa347472);
                         the sign-in, and a handshake left half-way, end with the connection
  peer.online_blocked    every authenticated request gets 403 with a plain body, as Exchange Online answers
                         once EWS is blocked for the tenant (Microsoft documents only the 403)
  peer.audiences         a set: when given, the token's aud must be in it
  peer.app_mailboxes     {client_id: {mailboxes}}: an application access policy for that app
  peer.require_anchor    True by default; False accepts app-only requests without X-AnchorMailbox

Operations: ResolveNames, GetFolder (root, msgfolderroot, inbox, sentitems, drafts, outbox, deleteditems,
junkemail), CreateItem (SendOnly, SendAndSaveCopy, SaveOnly; XML fields or MimeContent, with item fields
beside MimeContent as Exchange takes them: Importance, Sensitivity, IsReadReceiptRequested,
IsDeliveryReceiptRequested, in sent.fields; a t:Message whose elements are out of the schema's order or whose
values are outside its enumerations is the ErrorSchemaValidation fault, as Exchange's schema validation answers;
an S/MIME message, signed or encrypted, is taken as it is and classed as Exchange does, see message_class),
ConvertId (the version probe). Anything else is the ErrorInvalidOperation fault. The acting mailbox is the impersonated
address, else the mailbox named by the folder id, else X-AnchorMailbox, else a Basic username that is an
address.

The mailbox permission model of Exchange (who may act on a mailbox: its own account, an account given Full Access
with Add-MailboxPermission, an app with full_access_as_app unless an application access policy limits it;
https://learn.microsoft.com/exchange/client-developer/exchange-web-services/impersonation-and-ews-in-exchange and
https://learn.microsoft.com/graph/auth-limit-mailbox-access): a delegated token or a Basic/NTLM account acts on a
mailbox when the mailbox is its own (the token's user, a username that is the address) or lists it under
"access"; otherwise GetFolder and CreateItem answer ErrorAccessDenied. `peer.app_mailboxes = {client_id: {...}}`
limits an app as an application access policy does (ErrorAccessDenied for any other mailbox). An app-only token
without any role (what Entra issues before admin consent) is refused with 401 and x-ms-diagnostics
'2000008;reason="The token contains no permissions, or permissions can not be understood."'.

Knobs for errors:
  peer.fail_next("CreateItem", "ErrorQuotaExceeded", "text")   next CreateItem: an Error response message
  peer.fault_next("ErrorSchemaValidation", "text")             next request: s:Fault, HTTP 500
  peer.throttle(n, back_off_ms=30000)                          next n requests: ErrorServerBusy fault
"""
import base64
import binascii
import email
import hmac
import http.server
import io
import os
import re
import secrets
import ssl
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

import pytest
from werkzeug.wrappers import Request, Response

from tests.peers.exchange import message_class
from tests.peers.tls import server_context

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
MNS = "http://schemas.microsoft.com/exchange/services/2006/messages"
TNS = "http://schemas.microsoft.com/exchange/services/2006/types"
ENS = "http://schemas.microsoft.com/exchange/services/2006/errors"
PATH = "/EWS/Exchange.asmx"
CONNECTION = "ews_peer.connection"  # in the WSGI environ: the serial number of the TCP connection

# name -> (MajorVersion, MinorVersion, MajorBuildNumber, MinorBuildNumber, Version attribute as servers send it)
VERSIONS = {
    "Exchange2010_SP2": (14, 3, 123, 4, "Exchange2010_SP2"),
    "Exchange2013_SP1": (15, 0, 1497, 48, "V2_23"),
    "Exchange2016": (15, 1, 2507, 6, "V2017_07_11"),
    "Exchange2019": (15, 2, 1544, 4, "V2017_07_11"),
    "ExchangeOnline": (15, 20, 8769, 20, "V2018_01_08"),
}
# RequestServerVersion values, oldest first (what the schema accepts); a peer accepts those up to its own
API_VERSIONS = ("Exchange2007", "Exchange2007_SP1", "Exchange2010", "Exchange2010_SP1", "Exchange2010_SP2",
                "Exchange2013", "Exchange2013_SP1", "Exchange2015", "Exchange2015_SP1", "Exchange2016")
HIGHEST_API = {"Exchange2010_SP2": "Exchange2010_SP2", "Exchange2013_SP1": "Exchange2013_SP1",
               "Exchange2016": "Exchange2016", "Exchange2019": "Exchange2016", "ExchangeOnline": "Exchange2016"}

EWS_SCOPE = "EWS.AccessAsUser.All"
APP_ROLE = "full_access_as_app"
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"

# distinguished folder id -> (display name, parent, FolderClass)
FOLDERS = {
    "root": ("", None, None),
    "msgfolderroot": ("Top of Information Store", "root", "IPF.Note"),
    "inbox": ("Inbox", "msgfolderroot", "IPF.Note"),
    "sentitems": ("Sent Items", "msgfolderroot", "IPF.Note"),
    "drafts": ("Drafts", "msgfolderroot", "IPF.Note"),
    "outbox": ("Outbox", "msgfolderroot", "IPF.Note"),
    "deleteditems": ("Deleted Items", "msgfolderroot", "IPF.Note"),
    "junkemail": ("Junk Email", "msgfolderroot", "IPF.Note"),
}

# Exchange's own wording for the errors this peer produces
TEXTS = {
    "ErrorNameResolutionNoResults": "No results were found.",
    "ErrorNonExistentMailbox": "The SMTP address has no mailbox associated with it.",
    "ErrorSendAsDenied": ("The user account which was used to submit this request does not have the right to "
                          "send mail on behalf of the specified sending account."),
    "ErrorFolderNotFound": "The specified folder could not be found in the store.",
    "ErrorInvalidIdMalformed": "Id is malformed.",
    "ErrorInvalidRecipients": "At least one recipient isn't valid.",
    "ErrorMissingEmailAddress": ("When making a request as an account that does not have a mailbox, you must "
                                 "specify the mailbox primary SMTP address for any distinguished folder Ids."),
    "ErrorServerBusy": "The server cannot service this request right now. Try again later.",
    "ErrorInvalidServerVersion": "The specified server version is invalid.",
    "ErrorSchemaValidation": "The request failed schema validation.",
    "ImpersonationMissing": "ExchangeImpersonation SOAP header must be present for this type of OAuth token.",
    "ImpersonationForbidden": "ExchangeImpersonation SOAP header must not exist for this type of OAuth token.",
    "AnchorMismatch": ("Impersonation failed: the X-AnchorMailbox header must name the impersonated mailbox "
                       "for app-only tokens."),
    "Blocked": ("Exchange Web Services (EWS) is blocked for this organization. "
                "Use Microsoft Graph instead."),
    "NotEnoughScope": '2000008;reason="The token contains not enough scope to make this call.";'
                      'error_category="invalid_grant"',
    "InvalidToken": '2000001;reason="The token is invalid or has expired.";error_category="invalid_token"',
    "NoPermissions": '2000008;reason="The token contains no permissions, or permissions can not be understood.";'
                     'error_category="invalid_grant"',
    "ErrorAccessDenied": "Access is denied. Check credentials and try again.",
}

# --- XML templates ------------------------------------------------------------------------------------------

ENVELOPE = """<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">
<s:Header><h:ServerVersionInfo MajorVersion="{major}" MinorVersion="{minor}" MajorBuildNumber="{build}" \
MinorBuildNumber="{revision}" Version="{version}" xmlns:h="http://schemas.microsoft.com/exchange/services/2006/types" \
xmlns="http://schemas.microsoft.com/exchange/services/2006/types" xmlns:xsd="http://www.w3.org/2001/XMLSchema" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/></s:Header>
<s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
<m:{operation}Response xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" \
xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages>
{messages}
</m:ResponseMessages></m:{operation}Response>
</s:Body>
</s:Envelope>
"""

SUCCESS = ('<m:{operation}ResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
           '{content}</m:{operation}ResponseMessage>')

ERROR = ('<m:{operation}ResponseMessage ResponseClass="Error"><m:MessageText>{text}</m:MessageText>'
         '<m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{message_xml}'
         '{content}</m:{operation}ResponseMessage>')

MESSAGE_XML = '<m:MessageXml><t:Value Name="{name}">{value}</t:Value></m:MessageXml>'

FAULT = """<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>
<faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:{code}</faultcode>
<faultstring xml:lang="en-US">{text}</faultstring>
<detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">{code}</e:ResponseCode>\
<e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">{text}</e:Message>{message_xml}</detail>
</s:Fault></s:Body></s:Envelope>
"""

FAULT_MESSAGE_XML = ('<t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
                     '<t:Value Name="{name}">{value}</t:Value></t:MessageXml>')

RESOLUTION = ('<m:ResolutionSet TotalItemsInView="1" IncludesLastItemInRange="true"><t:Resolution><t:Mailbox>'
              '<t:Name>{name}</t:Name><t:EmailAddress>{address}</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType>'
              '<t:MailboxType>Mailbox</t:MailboxType></t:Mailbox></t:Resolution></m:ResolutionSet>')

FOLDER = ('<t:Folder><t:FolderId Id={id} ChangeKey="AQAAABYAAAA="/>{parent}{folder_class}'
          '<t:DisplayName>{name}</t:DisplayName><t:TotalCount>{total}</t:TotalCount>'
          '<t:ChildFolderCount>{children}</t:ChildFolderCount><t:UnreadCount>0</t:UnreadCount></t:Folder>')

ITEM_ID = '<t:Message><t:ItemId Id={id} ChangeKey="CQAAABYAAAA="/></t:Message>'

CONTAINERS = {"ResolveNames": "", "GetFolder": "<m:Folders/>", "CreateItem": "<m:Items/>", "ConvertId": ""}


# --- records ---------------------------------------------------------------------------------------------------

@dataclass
class EwsRequest:
    """One HTTP request as the peer saw it (never a password or token)."""
    operation: str | None
    auth_scheme: str | None          # "basic", "bearer", "ntlm" or None
    user: str | None                 # Basic/NTLM username, token sub (delegated) or client_id (app-only)
    anchor: str | None               # X-AnchorMailbox header
    impersonated: str | None         # address in the ExchangeImpersonation SOAP header
    request_version: str | None      # RequestServerVersion
    status: int = 0                  # HTTP status answered
    response_code: str | None = None  # NoError, an error code or a fault code
    client: tuple = ()               # the client's address and port: the TCP connection the request came on


@dataclass
class SentMessage:
    mailbox: str                     # the acting (delegated or impersonated) mailbox
    disposition: str                 # SendOnly or SendAndSaveCopy
    mime: EmailMessage               # parsed MimeContent, or built from the XML fields
    fields: dict                     # what the XML said: subject, body, body_type, to, cc, bcc, reply_to, from, ...
    recipients: list[str]            # every envelope recipient (To, Cc, Bcc)
    saved: bool                      # a copy went to a folder (Sent Items unless another was named)
    saved_folder: str | None         # the distinguished name of that folder, e.g. "sentitems"
    auth: tuple[str, str]            # ("basic"|"bearer"|"ntlm", user)
    raw: bytes | None = None         # the MimeContent as decoded (None for an item made of XML fields)
    item_class: str = "IPM.Note"     # what Exchange makes of it (message_class: S/MIME has classes of its own)


@dataclass
class _Caller:
    scheme: str
    user: str
    app_only: bool = False


class _Fail(Exception):
    """Stop handling: answer with this response."""

    def __init__(self, response: Response, code: str):
        self.response, self.code = response, code


# --- XML reading helpers ---------------------------------------------------------------------------------------

def _t(name: str) -> str:
    return f"{{{TNS}}}{name}"


def _text(elem, path: str) -> str | None:
    found = elem.find(path) if elem is not None else None
    return found.text if found is not None and found.text is not None else None


def _mailbox(elem) -> tuple[str, str] | None:
    """(name, address) from an element holding a t:Mailbox."""
    box = elem.find(_t("Mailbox")) if elem is not None else None
    if box is None:
        return None
    return _text(box, _t("Name")) or "", _text(box, _t("EmailAddress")) or ""


def _mailboxes(elem) -> list[tuple[str, str]]:
    if elem is None:
        return []
    return [(_text(box, _t("Name")) or "", _text(box, _t("EmailAddress")) or "") for box in elem.iter(_t("Mailbox"))]


def _folder_id(mailbox: str, name: str) -> str:
    return "AAMkA" + base64.urlsafe_b64encode(f"{mailbox}\0{name}".encode()).decode()


def _parse_folder_id(value: str) -> tuple[str, str] | None:
    try:
        mailbox, _, name = base64.urlsafe_b64decode(value.removeprefix("AAMkA")).decode().partition("\0")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (mailbox, name) if name in FOLDERS else None


def _scopes(claims: dict) -> set[str]:
    raw = claims.get("scope") or ""
    names = raw.split() if isinstance(raw, str) else list(raw)
    return {name.rsplit("/", 1)[-1] for name in names}


# --- the peer ----------------------------------------------------------------------------------------------------

class EwsPeer:
    def __init__(self, context, mailboxes=None, users=None, verifier=None, version="Exchange2016"):
        if version not in VERSIONS:
            raise ValueError(f"unknown version {version!r}; known: {', '.join(VERSIONS)}")
        self.mailboxes = {k.lower(): dict(v) for k, v in (mailboxes or {}).items()}
        self.users = dict(users or {})
        self.verifier = verifier
        self.version = version
        self.require_ntlm = False
        self.online_blocked = False
        self.require_anchor = True
        self.audiences: set[str] | None = None
        self.app_mailboxes: dict[str, set[str]] = {}
        self.sent: list[SentMessage] = []
        self.requests: list[EwsRequest] = []
        self.saved: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._fail: dict[str, list[tuple[str, str]]] = {}
        self._faults: list[tuple[str, str, str | None]] = []
        self._throttle = 0
        self._back_off_ms = 0
        self._ntlm: dict[int, object] = {}  # connection -> its handshake under way
        self._ntlm_connections: dict[int, _Caller] = {}  # connection -> who signed it in with NTLM
        self._ntlm_file: str | None = None
        self._server = KeepAliveHttpsServer(self.wsgi, context, closed=self._connection_closed)
        self.origin = self._server.url
        self.url = self.origin + PATH
        self.host = "127.0.0.1"

    # knobs
    def fail_next(self, operation: str, response_code: str, message_text: str | None = None) -> None:
        with self._lock:
            self._fail.setdefault(operation, []).append((response_code, message_text or response_code))

    def fault_next(self, fault_code: str, fault_string: str, operation: str | None = None) -> None:
        with self._lock:
            self._faults.append((fault_code.removeprefix("a:"), fault_string, operation))

    def throttle(self, n: int = 1, back_off_ms: int = 30000) -> None:
        with self._lock:
            self._throttle, self._back_off_ms = n, back_off_ms

    def operations(self) -> list[str | None]:
        return [r.operation for r in self.requests]

    def open_connections(self) -> int:
        return self._server.open_connections()

    def ntlm_connections(self) -> int:
        with self._lock:
            return len(self._ntlm.keys() | self._ntlm_connections.keys())

    def _connection_closed(self, connection: int) -> None:
        """NTLM's sign-in (or its handshake under way) ends with its connection."""
        with self._lock:
            self._ntlm.pop(connection, None)
            self._ntlm_connections.pop(connection, None)

    def stop(self) -> None:
        self._server.stop()
        if self._ntlm_file:
            os.unlink(self._ntlm_file)

    # WSGI
    def wsgi(self, environ, start_response):
        request = Request(environ)
        body = request.get_data()  # always read it: the connection is kept alive
        record = EwsRequest(None, None, None, request.headers.get("X-AnchorMailbox"), None, None)
        record.anchor = record.anchor.removeprefix("SMTP:") if record.anchor else None
        record.client = (environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT"))
        with self._lock:
            self.requests.append(record)
        try:
            response = self._handle(request, body, record)
            code = "NoError"
        except _Fail as stop:
            response, code = stop.response, stop.code
        record.status = response.status_code
        record.response_code = record.response_code or code
        return response(environ, start_response)

    def _handle(self, request: Request, body: bytes, record: EwsRequest) -> Response:
        if request.path != PATH:
            raise _Fail(Response("Not Found", 404, content_type="text/plain"), "HTTP 404")
        envelope = self._parse(body, record)
        caller = self._authenticate(request)
        record.auth_scheme, record.user = caller.scheme, caller.user
        if self.online_blocked:
            raise _Fail(Response(TEXTS["Blocked"], 403, content_type="text/plain; charset=utf-8"), "HTTP 403")
        if request.method != "POST":
            raise _Fail(Response("Method Not Allowed", 405, content_type="text/plain"), "HTTP 405")
        if envelope is None:
            raise self._fault("ErrorSchemaValidation", TEXTS["ErrorSchemaValidation"])
        self._check_request(caller, record)
        operation = record.operation
        with self._lock:
            failure = self._fail.get(operation, []) and self._fail[operation].pop(0)
        if failure:
            record.response_code = failure[0]
            return self._answer(operation, [self._error(operation, *failure)])
        handler = getattr(self, f"_op_{operation}", None)
        if handler is None:
            raise self._fault("ErrorInvalidOperation", f"The EWS test peer does not implement {operation}.")
        messages = handler(envelope.find(f"{{{SOAP}}}Body")[0], caller, record)
        error = re.search(r"<m:ResponseCode>(?!NoError<)(\w+)<", "".join(messages))
        record.response_code = error.group(1) if error else None
        return self._answer(operation, messages)

    # request parsing and checks
    def _parse(self, body: bytes, record: EwsRequest):
        try:
            envelope = ET.fromstring(body)
        except ET.ParseError:
            return None
        soap_body = envelope.find(f"{{{SOAP}}}Body")
        if soap_body is None or len(soap_body) == 0:
            return None
        record.operation = soap_body[0].tag.rpartition("}")[2]
        header = envelope.find(f"{{{SOAP}}}Header")
        if header is not None:
            version = header.find(_t("RequestServerVersion"))
            record.request_version = version.get("Version") if version is not None else None
            sid = header.find(f"{_t('ExchangeImpersonation')}/{_t('ConnectingSID')}")
            if sid is not None and len(sid):
                record.impersonated = sid[0].text
        return envelope

    def _check_request(self, caller: _Caller, record: EwsRequest) -> None:
        with self._lock:
            if self._throttle > 0:
                self._throttle -= 1
                raise self._fault("ErrorServerBusy", TEXTS["ErrorServerBusy"],
                                  FAULT_MESSAGE_XML.format(name="BackOffMilliseconds", value=self._back_off_ms))
            fault = next((f for f in self._faults if f[2] in (None, record.operation)), None)
            if fault:
                self._faults.remove(fault)
        if fault:
            raise self._fault(fault[0], fault[1])
        if record.request_version in API_VERSIONS and (
                API_VERSIONS.index(record.request_version) > API_VERSIONS.index(HIGHEST_API[self.version])):
            raise self._fault("ErrorInvalidServerVersion", TEXTS["ErrorInvalidServerVersion"])
        if caller.scheme == "bearer" and caller.app_only and not record.impersonated:
            raise self._fault("ErrorInvalidExchangeImpersonationHeaderData", TEXTS["ImpersonationMissing"])
        if caller.scheme == "bearer" and not caller.app_only and record.impersonated:
            raise self._fault("ErrorInvalidExchangeImpersonationHeaderData", TEXTS["ImpersonationForbidden"])
        if caller.app_only and self.require_anchor and (record.anchor or "").lower() != record.impersonated.lower():
            raise self._fault("ErrorImpersonationFailed", TEXTS["AnchorMismatch"])
        if record.impersonated and record.impersonated.lower() not in self.mailboxes:
            raise self._fault("ErrorNonExistentMailbox", TEXTS["ErrorNonExistentMailbox"],
                              FAULT_MESSAGE_XML.format(name="SmtpAddress", value=escape(record.impersonated)))

    # authentication
    def _authenticate(self, request: Request) -> _Caller:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            if self.require_ntlm:
                raise self._unauthorized()
            return self._basic(credentials)
        if scheme == "bearer" and self.verifier is not None:
            return self._bearer(credentials.strip())
        if scheme in ("ntlm", "negotiate") and self.require_ntlm:
            return self._ntlm_step(request, scheme, credentials.strip())
        if not scheme and self.require_ntlm:
            with self._lock:
                signed_in = self._ntlm_connections.get(request.environ.get(CONNECTION))
            if signed_in is not None:
                return signed_in
        raise self._unauthorized()

    def _basic(self, credentials: str) -> _Caller:
        try:
            username, _, password = base64.b64decode(credentials).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise self._unauthorized()
        for user, expected in self.users.items():
            if user.lower() == username.lower() and hmac.compare_digest(password.encode(), expected.encode()):
                return _Caller("basic", user)
        raise self._unauthorized()

    def _bearer(self, token: str) -> _Caller:
        claims = self.verifier.introspect(token)
        if not claims or (claims.get("exp") and claims["exp"] < time.time()) or (
                self.audiences is not None and claims.get("aud") not in self.audiences):
            raise self._unauthorized(invalid_token=True)
        roles = claims.get("roles") or []
        if not roles and (claims.get("grant_type") == "client_credentials" or not _scopes(claims)):
            raise self._unauthorized(invalid_token=True, diagnostics=TEXTS["NoPermissions"])
        if roles:
            if APP_ROLE not in roles:
                raise self._forbidden_scope()
            return _Caller("bearer", claims.get("client_id") or claims.get("sub") or "", app_only=True)
        if EWS_SCOPE not in _scopes(claims):
            raise self._forbidden_scope()
        return _Caller("bearer", claims.get("sub") or "")

    def _unauthorized(self, invalid_token: bool = False, diagnostics: str | None = None) -> _Fail:
        response = Response("401 - Unauthorized: Access is denied due to invalid credentials.", 401,
                            content_type="text/html")
        if self.require_ntlm:
            response.headers.add("WWW-Authenticate", "Negotiate")
            response.headers.add("WWW-Authenticate", "NTLM")
        else:
            response.headers.add("WWW-Authenticate", f'Basic realm="{self.host}"')
        if self.verifier is not None:
            error = ', error="invalid_token"' if invalid_token else ""
            response.headers.add("WWW-Authenticate", (
                f'Bearer client_id="{EXCHANGE_APP_ID}", trusted_issuers="00000001-0000-0000-c000-000000000000@*", '
                f'token_types="app_asserted_user_v1 service_asserted_app_v1"{error}'))
            if invalid_token:
                response.headers["x-ms-diagnostics"] = diagnostics or TEXTS["InvalidToken"]
        return _Fail(response, "HTTP 401")

    def _forbidden_scope(self) -> _Fail:
        response = Response(b"", 403)
        response.headers["x-ms-diagnostics"] = TEXTS["NotEnoughScope"]
        return _Fail(response, "HTTP 403")

    # NTLM: a pyspnego acceptor per TCP connection; it reads the users from the file named by NTLM_USER_FILE
    def _ntlm_step(self, request: Request, scheme: str, token: str) -> _Caller:
        import spnego

        key = request.environ.get(CONNECTION)
        with self._lock, self._ntlm_users():
            context = self._ntlm.get(key)
            if context is None:
                context = self._ntlm[key] = spnego.server(protocol="ntlm")
            try:
                answer = context.step(base64.b64decode(token))
            except Exception:  # a bad or replayed token: start again
                self._ntlm.pop(key, None)
                raise self._unauthorized()
            if not context.complete:
                response = Response("", 401, content_type="text/html")
                response.headers["WWW-Authenticate"] = f"{scheme.upper() if scheme == 'ntlm' else 'Negotiate'} " \
                                                       f"{base64.b64encode(answer).decode()}"
                raise _Fail(response, "HTTP 401")
            del self._ntlm[key]
            caller = self._ntlm_connections[key] = _Caller("ntlm", context.client_principal)
            return caller

    def _ntlm_users(self):
        if self._ntlm_file is None:
            handle, self._ntlm_file = tempfile.mkstemp(prefix="ews-peer-ntlm-")
            with os.fdopen(handle, "w") as file:
                for user, password in self.users.items():
                    domain, _, name = user.rpartition("\\")
                    file.write(f"{domain}:{name}:{password}\n")
        return _EnvVar("NTLM_USER_FILE", self._ntlm_file)

    # answers
    def _answer(self, operation: str, messages: list[str]) -> Response:
        major, minor, build, revision, version = VERSIONS[self.version]
        xml = ENVELOPE.format(major=major, minor=minor, build=build, revision=revision, version=version,
                              operation=operation, messages="\n".join(messages))
        return Response(xml, 200, content_type="text/xml; charset=utf-8")

    def _fault(self, code: str, text: str, message_xml: str = "") -> _Fail:
        xml = FAULT.format(code=code, text=escape(text), message_xml=message_xml)
        return _Fail(Response(xml, 500, content_type="text/xml; charset=utf-8"), code)

    def _error(self, operation: str, code: str, text: str | None = None, message_xml: str = "") -> str:
        return ERROR.format(operation=operation, code=code, text=escape(text or TEXTS.get(code, code)),
                            message_xml=message_xml, content=CONTAINERS.get(operation, ""))

    def _no_mailbox(self, operation: str, address: str) -> str:
        return self._error(operation, "ErrorNonExistentMailbox",
                           message_xml=MESSAGE_XML.format(name="SmtpAddress", value=escape(address)))

    def may_act(self, caller: _Caller, mailbox: str) -> bool:
        """Exchange's mailbox permissions: its own account or Full Access; an app unless a policy limits it."""
        if caller.app_only:
            allowed = self.app_mailboxes.get(caller.user)
            return allowed is None or mailbox.lower() in {m.lower() for m in allowed}
        access = {a.lower() for a in self.mailboxes[mailbox.lower()].get("access", [])}
        return caller.user.lower() in {mailbox.lower(), *access}

    def _acting_mailbox(self, caller: _Caller, record: EwsRequest, named: str | None = None) -> str | None:
        if record.impersonated:
            return record.impersonated.lower()
        if named:
            return named.lower()
        if record.anchor:
            return record.anchor.lower()
        return caller.user.lower() if "@" in caller.user else None

    # operations
    def _op_ResolveNames(self, payload, caller, record) -> list[str]:
        messages = []
        for entry in payload.iter(f"{{{MNS}}}UnresolvedEntry"):
            wanted = (entry.text or "").strip().lower().removeprefix("smtp:")
            found = next((address for address, box in self.mailboxes.items()
                          if wanted in (address, address.partition("@")[0], str(box.get("name", "")).lower())), None)
            if found is None:
                messages.append(self._error("ResolveNames", "ErrorNameResolutionNoResults"))
            else:
                name = self.mailboxes[found].get("name") or found
                messages.append(SUCCESS.format(operation="ResolveNames", content=RESOLUTION.format(
                    name=escape(name), address=escape(found))))
        return messages

    def _op_GetFolder(self, payload, caller, record) -> list[str]:
        messages = []
        for folder in payload.find(f"{{{MNS}}}FolderIds"):
            if folder.tag == _t("FolderId"):
                parsed = _parse_folder_id(folder.get("Id", ""))
                if parsed is None:
                    messages.append(self._error("GetFolder", "ErrorInvalidIdMalformed"))
                    continue
                named, name = parsed
            else:
                name = folder.get("Id", "")
                named = _text(folder, f"{_t('Mailbox')}/{_t('EmailAddress')}")
            mailbox = self._acting_mailbox(caller, record, named)
            if mailbox is None:
                messages.append(self._error("GetFolder", "ErrorMissingEmailAddress"))
            elif mailbox not in self.mailboxes:
                messages.append(self._no_mailbox("GetFolder", mailbox))
            elif not self.may_act(caller, mailbox):
                messages.append(self._error("GetFolder", "ErrorAccessDenied"))
            elif name not in FOLDERS:
                messages.append(self._error("GetFolder", "ErrorFolderNotFound"))
            else:
                messages.append(SUCCESS.format(operation="GetFolder",
                                               content=f"<m:Folders>{self._folder_xml(mailbox, name)}</m:Folders>"))
        return messages

    def _folder_xml(self, mailbox: str, name: str) -> str:
        display, parent, folder_class = FOLDERS[name]
        return FOLDER.format(
            id=quoteattr(_folder_id(mailbox, name)),
            parent=f'<t:ParentFolderId Id={quoteattr(_folder_id(mailbox, parent))} ChangeKey="AQAAAA=="/>'
            if parent else "",
            folder_class=f"<t:FolderClass>{folder_class}</t:FolderClass>" if folder_class else "",
            name=escape(display), total=self.saved.get((mailbox, name), 0),
            children=sum(1 for _, p, _ in FOLDERS.values() if p == name))

    def _op_ConvertId(self, payload, caller, record) -> list[str]:
        ids = payload.find(f"{{{MNS}}}SourceIds")
        return [self._error("ConvertId", "ErrorInvalidIdMalformed") for _ in (ids if ids is not None else [])]

    def _op_CreateItem(self, payload, caller, record) -> list[str]:
        disposition = payload.get("MessageDisposition", "SaveOnly")
        folder_elem = payload.find(f"{{{MNS}}}SavedItemFolderId")
        named, folder_name = None, ("sentitems" if disposition == "SendAndSaveCopy" else "drafts")
        if folder_elem is not None and len(folder_elem):
            target = folder_elem[0]
            if target.tag == _t("FolderId"):
                parsed = _parse_folder_id(target.get("Id", ""))
                if parsed is None:
                    return [self._error("CreateItem", "ErrorInvalidIdMalformed")]
                named, folder_name = parsed
            else:
                folder_name = target.get("Id", "")
                named = _text(target, f"{_t('Mailbox')}/{_t('EmailAddress')}")
        mailbox = self._acting_mailbox(caller, record, named)
        messages = []
        for item in payload.find(f"{{{MNS}}}Items"):
            if mailbox is None:
                messages.append(self._error("CreateItem", "ErrorMissingEmailAddress"))
            elif mailbox not in self.mailboxes:
                messages.append(self._no_mailbox("CreateItem", mailbox))
            elif not self.may_act(caller, mailbox):
                messages.append(self._error("CreateItem", "ErrorAccessDenied"))
            elif item.tag != _t("Message"):
                messages.append(self._error("CreateItem", "ErrorInvalidOperation",
                                            "The EWS test peer only creates messages."))
            else:
                messages.append(self._create_message(item, mailbox, disposition, folder_name, caller))
        return messages

    def _create_message(self, item, mailbox: str, disposition: str, folder_name: str, caller: _Caller) -> str:
        problem = _schema_problem(item)
        if problem:
            raise self._fault("ErrorSchemaValidation", f"{TEXTS['ErrorSchemaValidation']} {problem}")
        fields = _message_fields(item)
        mime = _parse_mime(fields["mime_content"]) if fields["mime_content"] else _build_mime(
            fields, mailbox, self.mailboxes[mailbox].get("name"))
        author = (fields["from"] or ("", ""))[1] or (getaddresses([mime.get("From", "")]) or [("", "")])[0][1]
        allowed = {mailbox, *(a.lower() for a in self.mailboxes[mailbox].get("send_as", []))}
        if author and author.lower() not in allowed:
            return self._error("CreateItem", "ErrorSendAsDenied")
        if disposition == "SaveOnly":
            self._save(mailbox, folder_name)
            return SUCCESS.format(operation="CreateItem", content="<m:Items>" + ITEM_ID.format(
                id=quoteattr("AAMkA" + secrets.token_urlsafe(24))) + "</m:Items>")
        recipients = _recipients(fields, mime)
        if not recipients:
            return self._error("CreateItem", "ErrorInvalidRecipients")
        saved = disposition == "SendAndSaveCopy"
        if saved:
            self._save(mailbox, folder_name)
        with self._lock:
            self.sent.append(SentMessage(
                mailbox=mailbox, disposition=disposition, mime=mime, fields=fields, recipients=recipients,
                saved=saved, saved_folder=folder_name if saved else None, auth=(caller.scheme, caller.user),
                raw=fields["mime_content"], item_class=message_class(mime)))
        return SUCCESS.format(operation="CreateItem", content="<m:Items/>")

    def _save(self, mailbox: str, folder_name: str) -> None:
        with self._lock:
            self.saved[(mailbox, folder_name)] = self.saved.get((mailbox, folder_name), 0) + 1


class _EnvVar:
    """Set an environment variable for the duration of a with block (pyspnego reads NTLM_USER_FILE)."""

    def __init__(self, name: str, value: str):
        self.name, self.value, self.old = name, value, None

    def __enter__(self):
        self.old = os.environ.get(self.name)
        os.environ[self.name] = self.value

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = self.old


# --- messages: XML fields and MIME -------------------------------------------------------------------------------

# t:MessageType's elements in the order of types.xsd (ItemType's, then MessageType's own; xs:sequence: a
# request with them out of order fails schema validation), and the enumerations of the option fields
# (t:ImportanceChoicesType, t:SensitivityChoicesType; IsReadReceiptRequested and IsDeliveryReceiptRequested are
# xs:boolean).
MESSAGE_ELEMENTS = (
    "MimeContent", "ItemId", "ParentFolderId", "ItemClass", "Subject", "Sensitivity", "Body", "Attachments",
    "DateTimeReceived", "Size", "Categories", "Importance", "InReplyTo", "IsSubmitted", "IsDraft", "IsFromMe",
    "IsResend", "IsUnmodified", "InternetMessageHeaders", "DateTimeSent", "DateTimeCreated", "ResponseObjects",
    "ReminderDueBy", "ReminderIsSet", "ReminderMinutesBeforeStart", "DisplayCc", "DisplayTo", "HasAttachments",
    "ExtendedProperty", "Culture", "EffectiveRights", "LastModifiedName", "LastModifiedTime", "IsAssociated",
    "WebClientReadFormQueryString", "WebClientEditFormQueryString", "ConversationId", "UniqueBody", "Sender",
    "ToRecipients", "CcRecipients", "BccRecipients", "IsReadReceiptRequested", "IsDeliveryReceiptRequested",
    "ConversationIndex", "ConversationTopic", "From", "InternetMessageId", "IsRead", "IsResponseRequested",
    "References", "ReplyTo", "ReceivedBy", "ReceivedRepresenting", "ReminderMessageData")
ENUMERATIONS = {"Importance": ("Low", "Normal", "High"), "Sensitivity": ("Normal", "Personal", "Private", "Confidential"),
                "IsReadReceiptRequested": ("true", "false", "1", "0"),
                "IsDeliveryReceiptRequested": ("true", "false", "1", "0")}


def _schema_problem(item) -> str | None:
    """What Exchange's schema validation would refuse in a t:Message: an element out of order or a value
    outside its enumeration."""
    position = -1
    for child in item:
        name = child.tag.rpartition("}")[2]
        if name not in MESSAGE_ELEMENTS:
            continue
        index = MESSAGE_ELEMENTS.index(name)
        if index < position:
            return f"The element 'Message' has invalid child element '{name}'."
        position = index
        allowed = ENUMERATIONS.get(name)
        if allowed is not None and (child.text or "") not in allowed:
            return f"The '{name}' element is invalid - The value '{child.text}' is invalid according to its datatype."
    return None


def _message_fields(item) -> dict:
    body = item.find(_t("Body"))
    mime_content = _text(item, _t("MimeContent"))
    extended = []
    for prop in item.findall(_t("ExtendedProperty")):
        uri = prop.find(_t("ExtendedFieldURI"))
        extended.append({**(dict(uri.attrib) if uri is not None else {}), "value": _text(prop, _t("Value"))})
    attachments = [{
        "name": _text(a, _t("Name")), "content_type": _text(a, _t("ContentType")),
        "content_id": _text(a, _t("ContentId")), "is_inline": _text(a, _t("IsInline")) == "true",
        "content": base64.b64decode(_text(a, _t("Content")) or ""),
    } for a in item.iter(_t("FileAttachment"))]
    return {
        "subject": _text(item, _t("Subject")),
        "body": body.text if body is not None else None,
        "body_type": body.get("BodyType") if body is not None else None,
        "to": _mailboxes(item.find(_t("ToRecipients"))),
        "cc": _mailboxes(item.find(_t("CcRecipients"))),
        "bcc": _mailboxes(item.find(_t("BccRecipients"))),
        "reply_to": _mailboxes(item.find(_t("ReplyTo"))),
        "from": _mailbox(item.find(_t("From"))),
        "sender": _mailbox(item.find(_t("Sender"))),
        "importance": _text(item, _t("Importance")),
        "sensitivity": _text(item, _t("Sensitivity")),
        "is_read_receipt_requested": _text(item, _t("IsReadReceiptRequested")) in ("true", "1"),
        "is_delivery_receipt_requested": _text(item, _t("IsDeliveryReceiptRequested")) in ("true", "1"),
        "internet_message_id": _text(item, _t("InternetMessageId")),
        "extended_properties": extended,
        "headers": {p["PropertyName"]: p["value"] for p in extended
                    if p.get("DistinguishedPropertySetId") == "InternetHeaders" and "PropertyName" in p},
        "attachments": attachments,
        "mime_content": base64.b64decode(mime_content) if mime_content else None,
    }


def _parse_mime(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)


def _build_mime(fields: dict, mailbox: str, name: str | None) -> EmailMessage:
    """The message as Exchange would put it on the wire (Bcc kept, so tests can read every recipient)."""
    msg = EmailMessage()
    msg["From"] = formataddr(fields["from"] or (name or "", mailbox))
    if fields["sender"] and fields["sender"] != fields["from"]:
        msg["Sender"] = formataddr(fields["sender"])
    for header, key in (("To", "to"), ("Cc", "cc"), ("Bcc", "bcc"), ("Reply-To", "reply_to")):
        if fields[key]:
            msg[header] = ", ".join(formataddr(m) for m in fields[key])
    msg["Subject"] = fields["subject"] or ""
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = fields["internet_message_id"] or make_msgid(domain=mailbox.partition("@")[2] or None)
    if fields["importance"] and fields["importance"] != "Normal":
        msg["Importance"] = fields["importance"]
    for header, value in fields["headers"].items():
        msg[header] = value or ""
    subtype = "html" if (fields["body_type"] or "").upper() == "HTML" else "plain"
    msg.set_content(fields["body"] or "", subtype=subtype)
    for attachment in fields["attachments"]:
        maintype, _, subtype = (attachment["content_type"] or "application/octet-stream").partition("/")
        msg.add_attachment(attachment["content"], maintype=maintype, subtype=subtype,
                           filename=attachment["name"], disposition="inline" if attachment["is_inline"] else None)
    return msg


def _recipients(fields: dict, mime: EmailMessage) -> list[str]:
    found = [address for key in ("to", "cc", "bcc") for _, address in fields[key]]
    if fields["mime_content"]:
        found += [address for _, address in getaddresses(
            [v for header in ("To", "Cc", "Bcc") for v in mime.get_all(header, [])])]
    return list(dict.fromkeys(a for a in found if a))


# --- the HTTP server --------------------------------------------------------------------------------------------

class KeepAliveHttpsServer:
    """A threaded HTTPS server for one WSGI app that keeps connections alive, as IIS does.

    Not tests.peers.https.HttpsPeer: werkzeug's server sends "Connection: close" on every response, and
    exchangelib turns any non-200 answer carrying that header into ErrorServerBusy("Caused by closed
    connection") before it looks at 401/403; NTLM also needs its three legs on one connection.
    Same interface: .url, .port, .stop(); besides, open_connections() and closed(serial), called as a
    connection closes.
    """

    def __init__(self, app, context: ssl.SSLContext, host: str = "127.0.0.1", closed=None):
        self._httpd = _QuietServer((host, 0), _KeepAliveHandler)
        self._httpd.app = app
        self._httpd.closed = closed  # closed(serial) once a connection is closed
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self.port = self._httpd.server_address[1]
        self.url = f"https://{host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True,
                                        name=f"ews-peer-{self.port}")
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def open_connections(self) -> int:
        with self._httpd.lock:
            return self._httpd.open


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args):
        super().__init__(*args)
        self.lock = threading.Lock()
        self.open = 0  # connections being served (from accept to close)
        self.serial = 0  # of the last connection accepted
        self.closed = None

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # a client that refuses our certificate is expected


class _KeepAliveHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # an answer goes out in pieces: do not hold the last one back
    timeout = 30  # an idle kept-alive connection is dropped after this

    def setup(self):
        with self.server.lock:
            self.server.open += 1
            self.server.serial += 1
            self.serial = self.server.serial
        super().setup()

    def finish(self):
        try:
            super().finish()
        finally:
            if self.server.closed is not None:  # before it counts as closed: whoever waits for that sees it done
                self.server.closed(self.serial)
            with self.server.lock:
                self.server.open -= 1

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        url = urlsplit(self.path)
        environ = {
            "REQUEST_METHOD": self.command, "SCRIPT_NAME": "", "PATH_INFO": url.path, "QUERY_STRING": url.query,
            "SERVER_NAME": self.server.server_address[0], "SERVER_PORT": str(self.server.server_address[1]),
            "SERVER_PROTOCOL": self.request_version, "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": str(self.client_address[1]), "CONTENT_LENGTH": str(length),
            "CONTENT_TYPE": self.headers.get("Content-Type", ""), "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False, CONNECTION: self.serial,
        }
        for name in self.headers:
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"):
                environ[key] = ", ".join(self.headers.get_all(name))
        started = []
        data = b"".join(self.server.app(environ, lambda status, headers, exc_info=None: started.extend(
            (status, headers))))
        status, headers = started
        self.send_response(int(status[:3]), status[4:])
        for name, value in headers:
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST

    def version_string(self):
        return "Microsoft-IIS/10.0"

    def log_message(self, format, *args):  # quiet
        pass


# --- fixture ---------------------------------------------------------------------------------------------------

DEFAULT_MAILBOXES = {"sender@example.test": {"name": "Sender", "access": ["EXAMPLE\\mailer", "mailer@example.test"]}}
DEFAULT_USERS = {"EXAMPLE\\mailer": "password", "mailer@example.test": "password"}


@pytest.fixture
def ews_peer(test_ca):
    """Factory: ews_peer(mailboxes=..., users=..., verifier=None, version="Exchange2016") -> EwsPeer."""
    started: list[EwsPeer] = []

    def start(mailboxes=None, users=None, verifier=None, version="Exchange2016") -> EwsPeer:
        peer = EwsPeer(server_context(test_ca), DEFAULT_MAILBOXES if mailboxes is None else mailboxes,
                       DEFAULT_USERS if users is None else users, verifier, version)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()
