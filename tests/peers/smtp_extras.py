"""SMTP peers for the client certificate and NTLM (aiosmtpd on 127.0.0.1, certificates from the tests' trustme CA).

    ntlm_peer(offer_plain=False) -> Peer     STARTTLS; AUTH NTLM only (or NTLM, PLAIN and LOGIN)
    client_cert_peer(mode) -> Peer           implicit TLS ("tls") or STARTTLS ("starttls"); mode "required"
                                             or "optional": the TLS context asks every client for a certificate
                                             (verify_mode CERT_REQUIRED / CERT_OPTIONAL), trusting `client_ca`
    client_ca                                a trustme CA (not the server's) that issues the client certificates

**NTLM** as Exchange does it (MS-SMTPNTLM and its example exchange): "AUTH NTLM" without an initial response
is answered "334 NTLM supported"; the client's NEGOTIATE gets "334 <CHALLENGE>"; the AUTHENTICATE gets
"235 2.7.0 Authentication successful" or "535 5.7.3 Authentication unsuccessful". A NEGOTIATE sent as the
AUTH line's initial response (RFC 4954) is taken in place of the first exchange; anything that is not an
NTLM message where one is due is refused ("501 5.7.5"), and "*" cancels (501). `peer.ntlm_flows` records
for each sign-in whether it began with an initial response. The server side is pyspnego's NTLM acceptor,
reading the account from a credentials file given by NTLM_USER_FILE (`DOMAIN:USER:PASSWORD`), as
gss-ntlmssp does.

**Client certificates**: the server's TLS context asks for a certificate in the handshake (a
CertificateRequest); with CERT_REQUIRED a client without one, or with one the context does not trust, is
refused by a TLS alert (TLS 1.3: after the client's Finished, so the client sees it on its first read). The
certificate a session presented is kept in `peer.client_subjects`.
"""
import base64
import binascii
import hmac
import ssl
import warnings

import pytest
import spnego
import trustme
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword
from spnego.exceptions import SpnegoError

from .smtp import (PASSWORD, SERVER_NAME, USERNAME, Peer, Recorder, _CountingController, _CountingSMTP,
                   _QuietController, free_port)

NTLM_DOMAIN = "CORP"
NTLM_USER = "mailer"
NTLM_PASSWORD = "Winter-2026!ntlm"


class NtlmRecorder(Recorder):
    """Records messages; AUTH NTLM the way Exchange answers it (see the module's docstring)."""

    def __init__(self, messages, peer: Peer):
        super().__init__(messages)
        self.peer = peer

    def check_credentials(self, login: bytes, password: bytes) -> bool:  # PLAIN / LOGIN, when offered
        return login == USERNAME.encode() and hmac.compare_digest(password, PASSWORD.encode())

    async def auth_NTLM(self, server, args) -> AuthResult:
        acceptor = spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
        self.peer.ntlm_flows.append("initial response" if len(args) > 1 else "334 NTLM supported")
        if len(args) > 1:
            try:
                negotiate = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            negotiate = await server.challenge_auth(b"NTLM supported", encode_to_b64=False)
            if negotiate is MISSING:
                return AuthResult(success=False, handled=True)
        try:
            challenge = acceptor.step(negotiate)
        except SpnegoError:
            await server.push("501 5.7.5 Invalid NTLM message")
            return AuthResult(success=False, handled=True)
        authenticate = await server.challenge_auth(challenge)
        if authenticate is MISSING:
            return AuthResult(success=False, handled=True)
        try:
            acceptor.step(authenticate)
        except SpnegoError:
            return AuthResult(success=False, handled=False, message="535 5.7.3 Authentication unsuccessful")
        ok = acceptor.complete
        self.peer.ntlm_users.append(acceptor.client_principal if ok else None)
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(b"ntlm", b""),
                          message=None if ok else "535 5.7.3 Authentication unsuccessful")


def _server_context(ca: trustme.CA, client_ca: trustme.CA | None = None, mode: str = "") -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED if mode == "required" else ssl.CERT_OPTIONAL
    return context


class _CertSMTP(_CountingSMTP):
    """Keeps the subject of the certificate each TLS session presented."""

    async def smtp_EHLO(self, hostname):
        sock = self.transport.get_extra_info("ssl_object") if self.transport else None
        cert = sock.getpeercert() if sock is not None else None
        if cert:
            self._peer.client_subjects.append(dict(x[0] for x in cert["subject"]))
        return await super().smtp_EHLO(hostname)


class _CertController(_QuietController):
    def __init__(self, handler, peer, **kwargs):
        super().__init__(handler, peer, smtp_class=_CertSMTP, **kwargs)


def _start(peer: Peer, controller) -> None:
    controller.start()
    peer._stop = controller.stop


@pytest.fixture(scope="session")
def client_ca() -> trustme.CA:
    return trustme.CA(organization_name="Mailroom tests client CA")


@pytest.fixture
def ntlm_users_file(tmp_path, monkeypatch):
    path = tmp_path / "ntlm-users"
    path.write_text(f"{NTLM_DOMAIN}:{NTLM_USER}:{NTLM_PASSWORD}\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(path))
    return path


@pytest.fixture
def ntlm_peer(smtp_ca, smtp_ca_pem, ntlm_users_file):
    started: list[Peer] = []

    def start(offer_plain: bool = False) -> Peer:
        peer = Peer(kind="ntlm", port=free_port(), ca_pem=smtp_ca_pem, username=f"{NTLM_DOMAIN}\\{NTLM_USER}",
                    password=NTLM_PASSWORD)
        peer.ntlm_users, peer.ntlm_flows = [], []
        handler = NtlmRecorder(peer.messages, peer)
        _start(peer, _CountingController(
            handler, peer, hostname="127.0.0.1", port=peer.port, server_hostname=SERVER_NAME, ready_timeout=5.0,
            tls_context=_server_context(smtp_ca), require_starttls=True, authenticator=handler.authenticator,
            auth_required=True, auth_exclude_mechanism=() if offer_plain else ("PLAIN", "LOGIN")))
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


@pytest.fixture
def client_cert_peer(smtp_ca, smtp_ca_pem, client_ca):
    started: list[Peer] = []

    def start(mode: str, security: str = "tls") -> Peer:
        peer = Peer(kind=f"client_cert_{mode}_{security}", port=free_port(), ca_pem=smtp_ca_pem)
        peer.client_subjects = []
        context = _server_context(smtp_ca, client_ca, mode)
        common = dict(hostname="127.0.0.1", port=peer.port, server_hostname=SERVER_NAME, ready_timeout=5.0)
        handler = Recorder(peer.messages)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
            if security == "tls":
                controller = _CertController(handler, peer, ssl_context=context, **common)
            else:
                controller = _CertController(handler, peer, tls_context=context, require_starttls=True, **common)
        _start(peer, controller)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


__all__ = ["NTLM_DOMAIN", "NTLM_PASSWORD", "NTLM_USER", "client_ca", "client_cert_peer", "ntlm_peer",
           "ntlm_users_file"]
