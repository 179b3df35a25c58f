"""Pytest plugin: an SMTP server (aiosmtpd) on 127.0.0.1 that takes only SASL XOAUTH2,
checking every bearer token with the test authorization server (tests.peers.oauth).

    def test_x(oauth_server, xoauth2_peer):
        peer = xoauth2_peer(oauth_server)                       # Exchange Online-like
        peer = xoauth2_peer(oauth_server, flavour="google")     # Gmail-like
        peer.host, peer.port, peer.ca_pem, peer.kind == "xoauth2", peer.flavour, peer.required_scope
        peer.messages        # [OAuthMail(mail_from, rcpt_tos, message, data, user, token)]
        peer.auth_attempts   # [{"user", "accepted", "reason"}] for every AUTH XOAUTH2
        peer.grant_full_access("app-client-id", "shared@example.test")  # Add-MailboxPermission -AccessRights FullAccess

STARTTLS is required (certificate from the test CA for localhost/127.0.0.1),
then AUTH (only XOAUTH2 is offered: PLAIN and LOGIN are switched off). The
client sends base64("user=<mailbox>\\x01auth=Bearer <token>\\x01\\x01") as the
initial response, or after an empty "334 " challenge.

A token is accepted when oauth_server.introspect(token) says it is active and
  - delegated tokens (code/refresh/JWT bearer): `required_scope` is among its
    scopes and its user (`username`, else `sub`) is the mailbox, case-insensitively,
    or has FullAccess to it (flavour "microsoft");
  - app-only tokens (client credentials): its `aud` is the resource of
    `required_scope` (outlook.office.com and outlook.office365.com count as one),
    its roles contain "SMTP.SendAsApp", and the app's service principal has
    FullAccess to the mailbox.
FullAccess is what Exchange Online wants, as Microsoft documents for SMTP AUTH with OAuth
(https://learn.microsoft.com/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth:
"Register service principals in Exchange", then Add-MailboxPermission -User <service principal>
-AccessRights FullAccess); without it Exchange answers 535 5.7.3 like any other refusal.
For another cloud, pass its SMTP.Send scope as required_scope (GCC High:
https://outlook.office365.us/SMTP.Send): a token for another cloud's Exchange is then refused.
Refusals: flavour "microsoft" answers "535 5.7.3 Authentication unsuccessful";
flavour "google" first sends Gmail's error challenge, 334 base64 of
{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"},
and after the client's (empty) answer "535 5.7.8 Username and Password not accepted."
"""
import base64
import binascii
import email
import json
import secrets
from dataclasses import dataclass, field
from email import policy

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult

from tests.peers.oauth import OAuthServer, same_resource, scope_resource
from tests.peers.smtp import SERVER_NAME, Peer, ReceivedMail, Recorder, _server_context, free_port

FLAVOURS = {
    "microsoft": "https://outlook.office.com/SMTP.Send",
    "google": "https://mail.google.com/",
}
APP_ROLE = "SMTP.SendAsApp"
MICROSOFT_REFUSAL = "535 5.7.3 Authentication unsuccessful"
GOOGLE_REFUSAL = "535 5.7.8 Username and Password not accepted."
GOOGLE_CHALLENGE = json.dumps({"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"},
                              separators=(",", ":"))


@dataclass
class OAuthMail(ReceivedMail):
    user: str = ""                                   # the mailbox the client authenticated as
    token: dict = field(default_factory=dict)        # introspection of the token it used


@dataclass(kw_only=True)
class XOAuth2Peer(Peer):
    kind: str = "xoauth2"
    username: str = ""
    password: str = ""
    flavour: str = "microsoft"
    required_scope: str = FLAVOURS["microsoft"]
    auth_attempts: list[dict] = field(default_factory=list)
    full_access: dict[str, set[str]] = field(default_factory=dict)  # principal (user or client id) -> mailboxes

    def grant_full_access(self, principal: str, mailbox: str) -> None:
        """Exchange's Add-MailboxPermission -Identity <mailbox> -User <principal> -AccessRights FullAccess."""
        self.full_access.setdefault(principal.lower(), set()).add(mailbox.lower())

    def may_use(self, principal: str, mailbox: str) -> bool:
        return mailbox.lower() in self.full_access.get(principal.lower(), set())


@dataclass
class XOAuth2Login:
    login: str      # aiosmtpd copies this into session.login_data
    token: dict


def parse_initial_response(blob: bytes) -> tuple[str, str] | None:
    """(mailbox, token) from "user=...\\x01auth=Bearer ...\\x01\\x01", or None if malformed."""
    try:
        text = blob.decode()
    except UnicodeDecodeError:
        return None
    fields = dict(part.split("=", 1) for part in text.split("\x01") if "=" in part)
    scheme, _, token = fields.get("auth", "").partition(" ")
    if not fields.get("user") or scheme.lower() != "bearer" or not token:
        return None
    return fields["user"], token.strip()


class XOAuth2Handler(Recorder):
    """Records accepted messages; its auth_XOAUTH2 method is the only AUTH mechanism offered."""

    def __init__(self, peer: XOAuth2Peer, oauth_server: OAuthServer):
        super().__init__(peer.messages, accept_credentials=False)
        self.peer = peer
        self.oauth_server = oauth_server

    async def auth_XOAUTH2(self, server, args) -> AuthResult:
        blob = await self._initial_response(server, args)
        if blob is MISSING:
            return AuthResult(success=False, handled=True)  # aiosmtpd already answered 501
        parsed = parse_initial_response(blob)
        user, token = parsed or ("", "")
        info = self.oauth_server.introspect(token) if parsed else None
        reason = "malformed initial response" if parsed is None else self.refusal(user, info)
        self.peer.auth_attempts.append({"user": user, "accepted": reason is None, "reason": reason})
        if reason is None:
            return AuthResult(success=True, auth_data=XOAuth2Login(user, info))
        return await self._refuse(server)

    @staticmethod
    async def _initial_response(server, args):
        if len(args) < 2 or args[1] == "=":
            return await server.challenge_auth("")
        try:
            return base64.b64decode(args[1], validate=True)
        except binascii.Error:
            await server.push("501 5.5.2 Can't decode base64")
            return MISSING

    def refusal(self, user: str, info: dict | None) -> str | None:
        """Why the token does not let `user` send, or None when it does."""
        if info is None:
            return "token unknown, expired or revoked"
        required = self.peer.required_scope
        if info["grant_type"] == "client_credentials":
            if not same_resource(info.get("aud"), scope_resource(required)):
                return f"app token for {info.get('aud')}, not {scope_resource(required)}"
            if APP_ROLE not in info.get("roles", []):
                return f"app token without the {APP_ROLE} role"
            if not self.peer.may_use(info.get("client_id") or "", user):
                return f"the app {info.get('client_id')} has no FullAccess to {user}"
            return None
        if required not in info["scope"].split():
            return f"scope {required} not granted"
        owner = info.get("username") or info.get("sub") or ""
        if owner.lower() != user.lower() and not (self.peer.flavour == "microsoft" and self.peer.may_use(owner, user)):
            return f"token belongs to {owner}, not {user}"
        return None

    async def _refuse(self, server) -> AuthResult:
        if self.peer.flavour == "google":
            if await server.challenge_auth(GOOGLE_CHALLENGE) is MISSING:
                return AuthResult(success=False, handled=True)
            return AuthResult(success=False, handled=False, message=GOOGLE_REFUSAL)
        return AuthResult(success=False, handled=False, message=MICROSOFT_REFUSAL)

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or envelope.content
        login = session.auth_data
        self.messages.append(OAuthMail(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            message=email.message_from_bytes(data, policy=policy.default),
            data=data,
            user=getattr(login, "login", ""),
            token=getattr(login, "token", {}),
        ))
        return f"250 2.0.0 OK {secrets.token_hex(4).upper()} - queued"


def start_xoauth2_peer(oauth_server: OAuthServer, ca: trustme.CA, ca_pem: str,
                       required_scope: str | None = None, flavour: str = "microsoft") -> XOAuth2Peer:
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown XOAUTH2 flavour {flavour!r}; known: {', '.join(FLAVOURS)}")
    peer = XOAuth2Peer(port=free_port(), ca_pem=ca_pem, flavour=flavour,
                       required_scope=required_scope or FLAVOURS[flavour])
    controller = Controller(
        XOAuth2Handler(peer, oauth_server), hostname="127.0.0.1", port=peer.port,
        server_hostname=SERVER_NAME, ready_timeout=5.0,
        tls_context=_server_context(ca.issue_cert("localhost", "127.0.0.1")), require_starttls=True,
        auth_required=True, auth_exclude_mechanism=["PLAIN", "LOGIN"])
    controller.start()
    peer._stop = controller.stop
    return peer


@pytest.fixture
def xoauth2_peer(test_ca, test_ca_pem):
    """Factory: xoauth2_peer(oauth_server, required_scope=None, flavour="microsoft") -> XOAuth2Peer."""
    started: list[XOAuth2Peer] = []

    def start(oauth_server: OAuthServer, required_scope: str | None = None,
              flavour: str = "microsoft") -> XOAuth2Peer:
        peer = start_xoauth2_peer(oauth_server, test_ca, test_ca_pem, required_scope, flavour)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()
