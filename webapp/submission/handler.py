"""The SMTP conversation of the submission listener: aiosmtpd's hooks, and every reply code it gives.

Nothing is accepted without AUTH (aiosmtpd answers 530 to MAIL, RCPT and DATA before it). AUTH
PLAIN and LOGIN are offered only over TLS, or to a client address from which some credential may
sign in without TLS; elsewhere AUTH is answered 538. The database and the password hash are worked
in threads (each with its own app context), so a slow query or hash never holds other connections.

    530  MAIL, RCPT or DATA before AUTH (aiosmtpd); the credential was revoked during the session
    535  a wrong username or password, a client outside the credential's networks, no TLS where the
         credential needs it: one answer for all, after a delay; the reason goes to the log only
    538  AUTH before TLS
    421  too many failed sign-ins from the address (then the connection is closed); the outbox
         cannot be written (the client keeps the message and tries again)
    450  a rate limit of the credential (at MAIL FROM, and again when the message is counted)
    452  more recipients than a message may have
    454  sign-in impossible for now (the database does not answer)
    553  MAIL FROM an address the credential may not use
    550  a From field the credential may not use, or that the portal does not allow (its servers' From
         addresses and its sender IDs)
    552  over the credential's size limit (aiosmtpd, from SIZE=, and while reading DATA)
    554  not a message that can be sent faithfully (message.py says which defects)
    250  2.0.0 Ok: queued as <id>: only after the message is committed in the outbox
"""
import asyncio
import base64
import binascii
import logging
import os
import ssl
import time
from asyncio import sslproto

from aiosmtpd.smtp import MISSING, AuthResult, TLSSetupException
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import select

from .. import db, outbox, senders
from ..mail.config import Sender
from ..models import FromPolicy, MailServer, Portal, utcnow
from ..one_writer import one_writer
from . import credentials
from .credentials import Account
from .message import Refused, Submission, prepare
from .settings import RelaySettings
from .throttle import FailedSignIns

log = logging.getLogger(__name__)

# Test-only: "before-commit=SECONDS" or "after-commit=SECONDS" pauses handle_DATA there (after a log
# line saying so), so that a test can kill the listener at that point.
TEST_PAUSE = "MAILROOM_SUBMISSION_TEST_PAUSE"
PROXIED_CLIENT = "mailroom_client_address"
REVOKED_AT_DATA = "550 5.7.1 This SMTP credential was revoked: nothing was accepted"


def _encrypted(server) -> bool:
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


def _hang_up(server, reply: str) -> str:
    """`reply`, and the connection closed right after it is written (RFC 5321 4.2.2: 421)."""
    server.loop.call_soon(server.transport.close)
    return reply


def _test_pause(where: str) -> None:
    point, _, seconds = os.environ.get(TEST_PAUSE, "").partition("=")
    if point == where:
        log.warning("test pause %s: %s seconds", where, seconds)
        time.sleep(float(seconds))


class SubmissionHandler:
    """aiosmtpd handler: hooks (handle_*) and the PLAIN and LOGIN mechanisms (auth_*)."""

    def __init__(self, app, settings: RelaySettings, failed_sign_ins: FailedSignIns, implicit_tls: bool = False):
        self.app = app
        self.settings = settings
        self.failed_sign_ins = failed_sign_ins
        self.implicit_tls = implicit_tls  # and behind the PROXY protocol: TLS starts after its header

    async def _run(self, function, *args):
        return await asyncio.to_thread(self._in_app, function, *args)

    def _in_app(self, function, *args):
        with self.app.app_context():
            return function(*args)

    @staticmethod
    def client(server) -> str:
        """The client's address: the PROXY protocol's source behind a load balancer, else the peer's."""
        proxied = getattr(server, PROXIED_CLIENT, None)
        if proxied:
            return proxied
        peer = server.session.peer if server.session else None
        return str(peer[0]) if peer else ""

    # -- connection --------------------------------------------------------------------------

    async def handle_PROXY(self, server, session, envelope, proxy_data) -> bool:
        if not (proxy_data and proxy_data.valid):
            return False
        # Kept on the SMTP object (one per connection): STARTTLS starts a new session. No source
        # address: the balancer's own health check (PROXY LOCAL).
        if proxy_data.src_addr is not None:
            setattr(server, PROXIED_CLIENT, str(proxy_data.src_addr))
        if self.implicit_tls:
            try:
                await _start_tls(server)
            except (ssl.SSLError, OSError, ConnectionError) as error:
                log.info("TLS handshake after the PROXY header failed: %s", error)
                return False
        return True

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if not _encrypted(server) and not await self._plain_allowed(server):
            responses = [line for line in responses if not line[4:].startswith("AUTH")]
        return responses

    async def _plain_allowed(self, server) -> bool:
        try:
            return await self._run(credentials.plain_allowed_from, self.client(server))
        except SQLAlchemyError as error:
            log.error("cannot read the SMTP credentials: %s", _first_line(error))
            return False

    # -- AUTH --------------------------------------------------------------------------------

    async def handle_AUTH(self, server, session, envelope, args):
        client = self.client(server)
        if not _encrypted(server) and not await self._plain_allowed(server):
            return "538 5.7.11 Encryption required: use STARTTLS (or the SSL/TLS port) before AUTH"
        if await self._run(self.failed_sign_ins.exhausted, client):
            log.warning("SMTP AUTH from %s: too many failed sign-ins, hanging up", client)
            await asyncio.sleep(self.settings.auth_failure_delay)
            return _hang_up(server, f"421 4.7.0 Too many failed sign-ins from {client}: try again later")
        return MISSING

    async def auth_PLAIN(self, server, args) -> AuthResult:
        blob = await server.challenge_auth("") if len(args) == 1 else await _decoded(server, args[1])
        if blob is MISSING:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await server.push("501 5.5.2 AUTH PLAIN wants authzid NUL username NUL password")
            return AuthResult(success=False, handled=True)
        return await self._sign_in(server, parts[1], parts[2])

    async def auth_LOGIN(self, server, args) -> AuthResult:
        login = await server.challenge_auth("Username:") if len(args) == 1 else await _decoded(server, args[1])
        if login is MISSING:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._sign_in(server, login, password)

    async def _sign_in(self, server, login: bytes, password: bytes) -> AuthResult:
        session, client = server.session, self.client(server)
        try:
            username, secret = login.decode(), password.decode()
        except UnicodeDecodeError:
            account, why = None, "a username or password that is not UTF-8"
        else:
            try:
                account, why = await self._run(credentials.sign_in, username, secret, client, _encrypted(server))
            except SQLAlchemyError as error:
                log.error("SMTP AUTH from %s: cannot read the SMTP credentials: %s", client, _first_line(error))
                return AuthResult(success=False, handled=False,
                                  message="454 4.7.0 Temporary authentication failure: try again later")
        if account is None:
            log.info("SMTP AUTH from %s refused: %s", client, why)
            await self._run(self.failed_sign_ins.count, client)
            await asyncio.sleep(self.settings.auth_failure_delay)
            return AuthResult(success=False, handled=False)  # 535 5.7.8 Authentication credentials invalid
        self._limit_size(server, account)
        log.info("SMTP AUTH from %s: signed in as %s (portal %s)", client, account.username, account.portal_id)
        session.auth_data = account
        return AuthResult(success=True, auth_data=account)

    def _limit_size(self, server, account: Account) -> None:
        """From now on SIZE (at the next EHLO, at MAIL FROM) and DATA hold to the credential's limit."""
        server.data_size_limit = min(account.max_message_bytes, self.settings.max_message_bytes)

    # -- the transaction ------------------------------------------------------------------------

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        try:
            account, over = await self._run(credentials.standing, session.auth_data.id)
        except SQLAlchemyError as error:
            log.error("SMTP MAIL from %s: cannot read the SMTP credentials: %s", self.client(server),
                      _first_line(error))
            return "451 4.3.0 Mailroom cannot read its database right now: try again later"
        if account is None:
            session.authenticated, session.auth_data = False, None
            return "530 5.7.0 This SMTP credential was revoked: sign in with another one"
        session.auth_data = account
        self._limit_size(server, account)
        if not account.may_send_as(address):
            return f"553 5.7.1 <{address}>: not a sender address this SMTP credential may use"
        if over:
            return f"450 4.7.1 This SMTP credential may send {over}: try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return f"452 4.5.3 Too many recipients: at most {self.settings.max_recipients} per message"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        submission = Submission(data=envelope.original_content, mail_from=envelope.mail_from,
                                recipients=tuple(envelope.rcpt_tos), client=self.client(server),
                                helo=session.host_name or "", encrypted=_encrypted(server),
                                listener=self.settings.hostname)
        try:
            return await self._run(self._accept, session.auth_data, submission)
        except SQLAlchemyError as error:
            log.error("SMTP DATA from %s: the outbox cannot be written, nothing was accepted: %s",
                      submission.client, _first_line(error))
            return _hang_up(server, "421 4.3.0 Mailroom cannot store the message right now: try again later")

    def _accept(self, account: Account, submission: Submission) -> str:
        """Runs in a thread with an app context: check, then count and store in one transaction and
        commit it; the reply."""
        sender = None
        if account.from_policy == FromPolicy.REWRITE:
            portal = db.session().get(Portal, account.portal_id)
            if portal is None:  # removed since MAIL FROM, and its credentials with it
                return REVOKED_AT_DATA
            sender = _rewritten_from(portal, account)
        try:
            prepared = prepare(submission, account, sender, utcnow(), senders.allowed_addresses(account.portal_id))
        except Refused as refused:
            if credentials.standing(account.id)[0] is None:  # revoked since MAIL FROM, or removed with its portal
                return REVOKED_AT_DATA
            log.info("SMTP DATA from %s (%s) refused: %s", submission.client, account.username, refused.reply)
            return refused.reply
        db.session().rollback()  # the write below starts from a fresh snapshot (SQLite refuses a stale one)
        with one_writer(db.engine()):
            # counts nothing once the credential is revoked, or removed with its portal
            counted = credentials.count_message(account, submission.client)
            if counted:
                _test_pause("before-commit")
                mail_id = outbox.store(account.portal_id, prepared.envelope, outbox.Submitter(
                    outbox.Source.SMTP, account.name, submission.client), prepared.subject)
            else:
                db.session().rollback()
        if not counted:
            over = credentials.over_limit(account)
            if over:
                return f"450 4.7.1 This SMTP credential may send {over}: try again later"
            return REVOKED_AT_DATA
        log.info("SMTP DATA from %s (%s): queued as %s for %d recipient(s)", submission.client, account.username,
                 mail_id, len(prepared.envelope.recipients))
        _test_pause("after-commit")
        return f"250 2.0.0 Ok: queued as {mail_id}"

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):  # a client that gave up on the handshake: aiosmtpd hangs up
            log.info("STARTTLS handshake failed: %s", error.__cause__ or error)
            return "454 4.7.0 TLS not available"
        log.exception("the SMTP submission listener failed on a command")
        return "451 4.3.0 Mailroom could not handle this command: try again later"


async def _start_tls(server) -> None:
    """Implicit TLS after the PROXY protocol's header, which comes before the TLS handshake: what
    aiosmtpd's smtp_STARTTLS does, without the command and its 220."""
    waiter = server.loop.create_future()
    tls = server._tls_protocol = sslproto.SSLProtocol(server.loop, server, server.tls_context, waiter,
                                                      server_side=True)
    server._original_transport = server.transport
    server._original_transport.set_protocol(tls)
    server.transport = tls._app_transport
    tls.connection_made(server._original_transport)
    # The client may have sent its TLS hello right behind the header: what the reader holds already
    # goes to the handshake (BufferedProtocol: get_buffer, then buffer_updated).
    early = bytes(server._reader._buffer)
    server._reader._buffer.clear()
    while early:
        buffer = tls.get_buffer(len(early))
        size = min(len(buffer), len(early))
        buffer[:size] = early[:size]
        tls.buffer_updated(size)
        early = early[size:]
    await waiter


async def _decoded(server, text: str):
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        await server.push("501 5.5.2 Cannot decode base64")
        return MISSING


def _rewritten_from(portal: Portal, account: Account) -> Sender | None:
    """"Rewrite From": the sender ID of the credential's owner, else the portal's From (None: neither)."""
    portal_sender = _portal_sender(portal)
    own = senders.sender_of(portal, account.owner_id)
    if own and portal_sender:
        return Sender(own, portal_sender.name)
    return portal_sender


def _portal_sender(portal: Portal) -> Sender | None:
    """The portal's From: the From of its first enabled server that has one."""
    row = db.session().exec(select(MailServer.from_address, MailServer.sender_name).where(
        MailServer.portal_id == portal.id, MailServer.enabled, MailServer.from_address != "")
        .order_by(MailServer.position)).first()
    return Sender(row[0], row[1]) if row else None


def _first_line(error: Exception) -> str:
    original = getattr(error, "orig", None) or error
    return (str(original).splitlines() or [type(original).__name__])[0]
