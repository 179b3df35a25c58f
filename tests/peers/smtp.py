"""Pytest plugin: real SMTP servers (aiosmtpd) on 127.0.0.1 to test against.

    def test_x(smtp_peer):
        peer = smtp_peer("starttls")   # started now, stopped at teardown
        peer.host, peer.port, peer.username, peer.password, peer.ca_pem, peer.kind
        peer.messages                  # [ReceivedMail(mail_from, rcpt_tos, message, data)]

Kinds (see KINDS):
  starttls       STARTTLS and AUTH required (PLAIN, LOGIN, CRAM-MD5); cert for localhost/127.0.0.1
  tls            implicit TLS, AUTH required (PLAIN, LOGIN only)
  plain          no TLS, no AUTH, accepts everything
  reject         like starttls, but every credential is refused (535)
  untrusted      like starttls, certificate from a CA the client is not given
  wrong_name     like starttls, certificate only for mail.example.test
  expired        like starttls, certificate expired on 2020-01-31
  refuse_sender  plain, MAIL FROM answered "550 5.7.1 Sender not allowed"
  refuse_recipients  plain; RCPT TO nobody@… answered "550 5.1.1 User unknown" and later@… "450 4.2.1
                 Mailbox busy" (RFC 5321 4.2: 5yz refuses that recipient for good, 4yz for now),
                 every other recipient accepted
  refuse_message plain; the message is refused after DATA with "554 5.7.1 Message rejected as spam"
                 (a content filter's permanent refusal, RFC 5321 4.2.5)
  greylist       plain; the first RCPT TO of each sender/recipient pair is answered "451 4.7.1 Greylisted,
                 please try again later", later ones are accepted (greylisting, RFC 6647 2.1: a
                 temporary refusal that a real MTA's retry gets past)
  slow           plain; the answer to the end of DATA comes after `peer.delay` seconds (a server that
                 scans the message before taking responsibility: Postfix's before-queue content filter)
  message_limit  plain; after MESSAGES_PER_SESSION messages in one session the next MAIL FROM is answered
                 "421 4.7.0 Too many messages in this session, closing connection" and the connection closed
                 (RFC 5321 3.8: a server may end a session with 421; many cap the messages per connection,
                 e.g. Exchange's MaxMessagesPerConnection on a receive connector)
  idle_close     plain; the server closes a connection that stays idle for `IDLE_TIMEOUT` seconds,
                 saying "421 4.4.2 Timeout" first (RFC 5321 4.5.3.2.7: servers time idle clients out;
                 aiosmtpd's own `timeout`, set short)
  dsn            plain; offers DSN in its EHLO answer and takes RFC 3461's parameters (MAIL FROM RET=FULL|HDRS,
                 ENVID; RCPT TO NOTIFY=NEVER or SUCCESS/FAILURE/DELAY, ORCPT), refusing malformed ones with
                 "501 5.5.4" as Postfix does; each ReceivedMail's `dsn` holds them ({"mail": {...},
                 "rcpt": {address: {...}}}). Every other kind offers no DSN, and aiosmtpd refuses the
                 parameters there ("555 MAIL FROM parameters not recognized"), as RFC 3461 4 lets it
  pipelining     plain; offers PIPELINING (RFC 2920) in its EHLO answer: the client may send MAIL FROM, RCPT TO
                 and DATA in one write (aiosmtpd answers them in order). No other kind offers it
  pipelining_refuse_sender, pipelining_refuse_recipients   refuse_sender and refuse_recipients offering
                 PIPELINING: aiosmtpd answers the commands after a refused MAIL FROM, and DATA after every
                 RCPT TO was refused, with "503" (as RFC 2920 3.1 wants)
  pipelining_data_anyway  pipelining_refuse_recipients, but DATA is answered 354 even when every RCPT TO was
                 refused (RFC 2920 3.1: the client then sends a lone "."); the empty message gets "554"
  silent         a TCP listener that accepts and never greets
  closed         nothing listens on the port (connection refused)

Every aiosmtpd kind counts its SMTP sessions (those that sent EHLO or HELO): `peer.sessions` in all,
`peer.active` now and `peer.max_active`, the most at once (what a server's connection limit counts,
like Postfix's smtpd_client_connection_count_limit). `peer.stop()` takes the server down (connections
are refused) and `peer.restart()` brings it back on the same port, with the same mailbox.
"""
import asyncio
import email
import hmac
import re
import secrets
import socket
import ssl
import threading
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

USERNAME = "mailer@example.test"
PASSWORD = "s3cret-Pass!"
SERVER_NAME = "mx.peer.test"
IDLE_TIMEOUT = 0.5  # seconds an idle_close peer waits for the client's next command
MESSAGES_PER_SESSION = 2  # what a message_limit peer takes over one connection


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    data: bytes
    dsn: dict = field(default_factory=dict)  # the dsn kind: the DSN parameters of MAIL FROM and each RCPT TO


@dataclass
class Peer:
    kind: str
    port: int
    ca_pem: str
    host: str = "127.0.0.1"
    username: str = USERNAME
    password: str = PASSWORD
    messages: list[ReceivedMail] = field(default_factory=list)
    connections: list = field(default_factory=list)  # the silent kind: the connections it holds
    delay: float = 0.3  # the slow kind: seconds before answering the end of DATA
    sessions: int = 0  # SMTP sessions so far (connections that sent EHLO or HELO)
    active: int = 0  # ... open right now
    max_active: int = 0  # ... the most open at once
    _stop: object = field(default=None, repr=False)
    _restart: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def stop(self) -> None:
        if self._stop:
            self._stop()
            self._stop = None

    def restart(self) -> None:
        """Serve again on the same port after stop() (an outage that ends)."""
        if self._stop is None and self._restart is not None:
            self._stop = self._restart()

    def opened(self) -> None:
        with self._lock:
            self.sessions += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def closed(self) -> None:
        with self._lock:
            self.active -= 1

    def message_ids(self) -> list[str]:
        return [str(m.message["Message-ID"]) for m in self.messages]


def free_port() -> int:
    """A port nothing listens on right now (aiosmtpd's Controller can't take port=0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- aiosmtpd handlers -------------------------------------------------------

class Recorder:
    """Accepts every message and keeps it in `messages`."""

    def __init__(self, messages: list[ReceivedMail], accept_credentials: bool = True):
        self.messages = messages
        self.accept_credentials = accept_credentials

    def check_credentials(self, login: bytes, password: bytes) -> bool:
        return (self.accept_credentials and login == USERNAME.encode()
                and hmac.compare_digest(password, PASSWORD.encode()))

    def authenticator(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and self.check_credentials(*auth_data)
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or envelope.content
        self.messages.append(ReceivedMail(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            message=email.message_from_bytes(data, policy=policy.default),
            data=data,
        ))
        return f"250 2.0.0 Ok: queued as {secrets.token_hex(4).upper()}"


class CramMd5Recorder(Recorder):
    """Also offers CRAM-MD5, which aiosmtpd does not build in."""

    async def auth_CRAM__MD5(self, server, args) -> AuthResult:  # offered as "CRAM-MD5"
        challenge = f"<{secrets.token_hex(8)}@{SERVER_NAME}>".encode()
        answer = await server.challenge_auth(challenge)
        if answer is MISSING:
            return AuthResult(success=False, handled=True)  # challenge_auth replied 501
        login, _, digest = answer.partition(b" ")
        expected = hmac.new(PASSWORD.encode(), challenge, "md5").hexdigest().encode()
        ok = (self.accept_credentials and login == USERNAME.encode()
              and hmac.compare_digest(digest, expected))
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(login, b""))


class MessageRefuser(Recorder):
    async def handle_DATA(self, server, session, envelope):
        return "554 5.7.1 Message rejected as spam"


class Greylister(Recorder):
    def __init__(self, messages: list[ReceivedMail]):
        super().__init__(messages)
        self.seen: set[tuple[str, str]] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        pair = (envelope.mail_from, address)
        if pair not in self.seen:
            self.seen.add(pair)
            return "451 4.7.1 Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"


class SlowRecorder(Recorder):
    def __init__(self, messages: list[ReceivedMail], peer: "Peer"):
        super().__init__(messages)
        self.peer = peer

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.peer.delay)
        return await super().handle_DATA(server, session, envelope)


class _OffersPipelining:
    """Names PIPELINING in its EHLO answer (RFC 2920); aiosmtpd reads commands line by line, so it
    takes a client's pipelined commands and answers each in order."""

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


class SenderRefuser(Recorder):
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        return "550 5.7.1 Sender not allowed"


class RecipientRefuser(Recorder):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return "550 5.1.1 User unknown"
        if address.startswith("later@"):
            return "450 4.2.1 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"


class PipeliningRecorder(_OffersPipelining, Recorder):
    pass


class PipeliningSenderRefuser(_OffersPipelining, SenderRefuser):
    pass


class PipeliningRecipientRefuser(_OffersPipelining, RecipientRefuser):
    pass


# --- certificates ---------------------------------------------------------------

@pytest.fixture(scope="session")
def smtp_ca(test_ca) -> trustme.CA:
    return test_ca


@pytest.fixture(scope="session")
def smtp_ca_pem(test_ca_pem) -> str:
    return test_ca_pem


def _server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def _certificate(kind: str, ca: trustme.CA) -> trustme.LeafCert:
    if kind == "untrusted":
        return trustme.CA().issue_cert("localhost", "127.0.0.1")
    if kind == "wrong_name":
        return ca.issue_cert("mail.example.test")
    if kind == "expired":
        return ca.issue_cert("localhost", "127.0.0.1",
                             not_before=datetime(2019, 1, 1, tzinfo=timezone.utc),
                             not_after=datetime(2020, 1, 31, tzinfo=timezone.utc))
    return ca.issue_cert("localhost", "127.0.0.1")


# --- peers ------------------------------------------------------------------------

class _CountingSMTP(SMTP):
    """Tells the peer when an SMTP session starts (EHLO or HELO) and ends."""

    def __init__(self, handler, peer: "Peer", **kwargs):
        super().__init__(handler, **kwargs)
        self._peer, self._counted = peer, False

    def _count(self) -> None:
        if not self._counted:
            self._counted = True
            self._peer.opened()

    async def smtp_EHLO(self, hostname):
        self._count()
        return await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname):
        self._count()
        return await super().smtp_HELO(hostname)

    def connection_lost(self, error):
        if self._counted:
            self._counted = False
            self._peer.closed()
        super().connection_lost(error)


class _MessageLimitSMTP(_CountingSMTP):
    """Takes MESSAGES_PER_SESSION messages per connection, then says 421 and closes."""

    def __init__(self, handler, peer: "Peer", **kwargs):
        super().__init__(handler, peer, **kwargs)
        self._messages = 0

    async def smtp_MAIL(self, arg):
        if self._messages >= MESSAGES_PER_SESSION:
            await self.push("421 4.7.0 Too many messages in this session, closing connection")
            self.transport.close()
            return
        return await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg):
        await super().smtp_DATA(arg)
        self._messages += 1


class _DataWithoutRecipientsSMTP(_CountingSMTP):
    """Answers DATA with 354 even when no recipient was accepted (RFC 2920 3.1 says a server should not,
    and tells the client what to do if it does); the data is read and refused with 554."""

    async def smtp_DATA(self, arg):
        if self.envelope.rcpt_tos:
            return await super().smtp_DATA(arg)
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        while await self._reader.readuntil(b"\r\n") != b".\r\n":
            pass
        await self.push("554 5.5.1 Error: no valid recipients")


DSN_MAIL = {"RET": re.compile(r"FULL|HDRS"), "ENVID": re.compile(r"[!-~]{1,100}")}
DSN_RCPT = {"NOTIFY": re.compile(r"NEVER|(SUCCESS|FAILURE|DELAY)(,(SUCCESS|FAILURE|DELAY)){0,2}"),
            "ORCPT": re.compile(r"[A-Za-z0-9-]+;[!-~]+")}


class DsnRecorder(Recorder):
    """Offers DSN (RFC 3461) in its EHLO answer."""

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return [*responses[:-1], "250-DSN", responses[-1]]

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        self.messages[-1].dsn = {"mail": dict(server.dsn_mail),
                                 "rcpt": {address: dict(params) for address, params in server.dsn_rcpt.items()}}
        return reply


class _DsnSMTP(_CountingSMTP):
    """Takes RFC 3461's parameters off MAIL FROM and RCPT TO (checked as RFC 3461 4.1-4.4 write them), keeps
    them, and hands aiosmtpd the rest."""

    def __init__(self, handler, peer: "Peer", **kwargs):
        super().__init__(handler, peer, **kwargs)
        self.dsn_mail, self.dsn_rcpt = {}, {}

    def _take(self, arg: str, known: dict) -> tuple[str | None, dict]:
        words, taken = arg.split(" "), {}
        kept = [words[0]]
        for word in words[1:]:
            key, _, value = word.partition("=")
            if key.upper() in known:
                if key.upper() in taken or not known[key.upper()].fullmatch(value.upper()):
                    return None, {}
                taken[key.upper()] = value.upper()
            else:
                kept.append(word)
        return " ".join(kept), taken

    async def smtp_MAIL(self, arg):
        rest, taken = self._take(arg or "", DSN_MAIL)
        if rest is None:
            return await self.push("501 5.5.4 Bad DSN parameter in MAIL FROM")
        self.dsn_mail, self.dsn_rcpt = taken, {}
        return await super().smtp_MAIL(rest)

    async def smtp_RCPT(self, arg):
        rest, taken = self._take(arg or "", DSN_RCPT)
        if rest is None:
            return await self.push("501 5.5.4 Bad DSN parameter in RCPT TO")
        address = rest.partition(":")[2].strip().split(" ")[0].strip("<>")
        self.dsn_rcpt[address] = taken
        return await super().smtp_RCPT(rest)


class _CountingController(Controller):
    def __init__(self, handler, peer: "Peer", smtp_class=_CountingSMTP, **kwargs):
        super().__init__(handler, **kwargs)
        self.peer, self.smtp_class = peer, smtp_class

    def factory(self):
        return self.smtp_class(self.handler, self.peer, **self.SMTP_kwargs)


class _QuietController(_CountingController):
    """aiosmtpd warns when AUTH is required without STARTTLS; with implicit TLS that is fine."""

    def factory(self):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
            return super().factory()


PLAIN_HANDLERS = {"plain": Recorder, "refuse_sender": SenderRefuser, "refuse_recipients": RecipientRefuser,
                  "refuse_message": MessageRefuser, "greylist": Greylister, "idle_close": Recorder,
                  "message_limit": Recorder, "dsn": DsnRecorder, "pipelining": PipeliningRecorder,
                  "pipelining_refuse_sender": PipeliningSenderRefuser,
                  "pipelining_refuse_recipients": PipeliningRecipientRefuser,
                  "pipelining_data_anyway": PipeliningRecipientRefuser}
PLAIN_KINDS = (*PLAIN_HANDLERS, "slow")  # no TLS, no AUTH


def _start_aiosmtpd(kind: str, ca: trustme.CA, peer: "Peer", port: int) -> object:
    messages = peer.messages
    common = dict(hostname="127.0.0.1", port=port, server_hostname=SERVER_NAME, ready_timeout=5.0)
    if kind == "idle_close":
        common["timeout"] = IDLE_TIMEOUT
    if kind in PLAIN_KINDS:
        handler = SlowRecorder(messages, peer) if kind == "slow" else PLAIN_HANDLERS[kind](messages)
        smtp_class = {"message_limit": _MessageLimitSMTP, "dsn": _DsnSMTP,
                      "pipelining_data_anyway": _DataWithoutRecipientsSMTP}.get(kind, _CountingSMTP)
        controller = _CountingController(handler, peer, smtp_class=smtp_class, **common)
    elif kind == "tls":
        handler = Recorder(messages)
        controller = _QuietController(
            handler, peer, ssl_context=_server_context(_certificate(kind, ca)),
            authenticator=handler.authenticator, auth_required=True, auth_require_tls=False,
            **common)
    else:  # starttls, reject, untrusted, wrong_name, expired
        handler = CramMd5Recorder(messages, accept_credentials=(kind != "reject"))
        controller = _CountingController(
            handler, peer, tls_context=_server_context(_certificate(kind, ca)), require_starttls=True,
            authenticator=handler.authenticator, auth_required=True, **common)
    controller.start()
    return controller.stop


class _SilentListener:
    """Accepts TCP connections and never says a word until stopped."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="silent-peer")
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                self.connections.append(self.sock.accept()[0])
            except TimeoutError:
                continue

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        for conn in [*self.connections, self.sock]:
            conn.close()


KINDS = ("starttls", "tls", "reject", "untrusted", "wrong_name", "expired", *PLAIN_KINDS, "silent", "closed")


def start_peer(kind: str, ca: trustme.CA, ca_pem: str) -> Peer:
    if kind not in KINDS:
        raise ValueError(f"unknown SMTP peer kind {kind!r}; known: {', '.join(KINDS)}")
    peer = Peer(kind=kind, port=0, ca_pem=ca_pem)
    if kind == "silent":
        listener = _SilentListener()
        peer.port, peer._stop, peer.connections = listener.port, listener.stop, listener.connections
    elif kind == "closed":
        peer.port = free_port()
    else:
        peer.port = free_port()
        peer._restart = lambda: _start_aiosmtpd(kind, ca, peer, peer.port)
        peer._stop = peer._restart()
    return peer


@pytest.fixture
def smtp_peer(smtp_ca, smtp_ca_pem):
    """Factory: smtp_peer(kind) -> Peer, running until the test ends."""
    started: list[Peer] = []

    def start(kind: str) -> Peer:
        peer = start_peer(kind, smtp_ca, smtp_ca_pem)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()
