"""SMTP transport: check() a server step by step without sending, or send() a message.

Both walk the same conversation and record one Step per stage in a Report:

    [Token] -> [Mail receiver login] -> Resolve host -> Connect (or Proxy: through the server's proxy)
    -> [TLS, implicit] -> Greeting -> EHLO
    -> [STARTTLS -> TLS -> EHLO again] -> Authenticate -> MAIL FROM
    check(): RSET, QUIT            send(): RCPT TO -> DATA -> QUIT

A send's MAIL FROM, RCPT TO and DATA go in one write when the server offers PIPELINING (RFC
2920); their replies are read in order and recorded in the same three steps, each recipient's
answer its outcome.

The first failed step ends the conversation; later steps are not added. A failed
step says in plain words what happened (summary) and what to try (hint).

open() gives an SmtpConnection for several messages in one session: the first message
establishes it, later ones go on with MAIL FROM (RSET first only after a failed transaction;
the session is established again when the server closed it meanwhile); each message has its
own deadline and report.

Time: config.timeout bounds the WHOLE conversation, the token included (deadline.py).
Network: every address comes from config.network, which applies the egress policy; with a proxy
(config.network.proxy) the connection is a tunnel through it (mail/proxy.py). The mail receiver
login (config.receiver, POP-before-SMTP) comes before every session that is established, so before
the first message of a reused connection too.

Secrets: the transcript never shows AUTH arguments or the lines answering a 334
challenge, nor a server line that repeats a secret (client.py); as a last line of
defence every text of the report is cleaned of the secrets in any encoding (redact.py).
"""
import logging
from contextlib import contextmanager

from ..auth import AuthType, BearerAuth, token_step
from ..deadline import Deadline
from ..envelope import Envelope
from ..oauth import Flow
from ..report import DeliveryError, Receipt, Report, Step
from ..transport import register
from . import steps
from .failures import EXPECTED, MESSAGE_STEPS
from .session import Session
from .settings import MECHANISM_LABELS, Security, SmtpSettings

QUIT_SECONDS = 5.0  # the most a connection's closing QUIT may take
log = logging.getLogger(__name__)


@register
class SmtpTransport:
    protocol = "smtp"
    label = "SMTP/SMTPS"
    settings_type = SmtpSettings
    auth_types = (AuthType.NONE, AuthType.BASIC, AuthType.OAUTH)
    oauth_flows = (Flow.DELEGATED, Flow.APP)
    mechanisms = {str(m): label for m, label in MECHANISM_LABELS.items()}
    mechanism_note = ("Automatic takes CRAM-MD5, PLAIN or LOGIN, and NTLM only when the server offers nothing else "
                      "(NTLM wants the username as DOMAIN\\user or user@domain). Kerberos is not supported: it "
                      "needs a ticket from a Kerberos server (KDC) or a keytab on this machine, which Mailroom does "
                      "not manage; use NTLM or another mechanism the server offers.")

    def check(self, config) -> Report:
        """Validate the server settings step by step; no mail is sent."""
        session = Session.start(config)
        with _conversation(session, kind="check"):
            _establish(session)
            _step(session, "MAIL FROM", steps.mail_from)
            _goodbye(session, reset=True)
        signed_in = session.report.step("Authenticate")
        session.report.passed_summary = (
            "The server accepts the connection, the credentials and the From address."
            if signed_in and signed_in.outcome == "passed" else
            "The server accepts the connection and the From address.")
        return session.report

    def send(self, config, envelope: Envelope) -> Receipt:
        """Deliver the message to the envelope's recipients; raises DeliveryError on failure."""
        session = Session.start(config)
        with _conversation(session):
            _step(session, "Message", lambda s: steps.prepare(s, envelope))
            steps.protect(session)
            _establish(session)
            _transaction(session)
            _goodbye(session)
        return _receipt(session)

    def open(self, config) -> "SmtpConnection":
        """Several messages, one after the other, over one SMTP session."""
        return SmtpConnection(config)


class SmtpConnection:
    """One SMTP session for consecutive messages (mail.transport.Connection).

    The first message walks the whole conversation up to DATA and leaves the session open;
    each later one sends MAIL FROM, RCPT TO and DATA again (pipelined when the server offers
    it), under a deadline of its own, after RSET only when the previous transaction failed
    (after a 250 to the message the server is ready for the next MAIL FROM, RFC 5321 4.1.4).
    A session the server closed meanwhile (an idle timeout, a 421) is established again and
    the message sent over it, when the server had not taken it (_worth_a_new_session). After
    a failure the session is kept only where the server refused that one message (a reply to
    MAIL FROM, RCPT TO or DATA other than 421): anything else may have left it in an unknown state.
    """

    def __init__(self, config):
        self.config = config
        self._session: Session | None = None  # established, between two messages
        self._clean = False  # the kept session's last transaction ended with the server taking the message
        self.messages = 0  # sent over the current session

    def send(self, envelope: Envelope) -> Receipt:
        resumed = self._session is not None
        session = self._send(envelope)
        if resumed and _worth_a_new_session(session):
            session = self._send(envelope)  # once more over a new session: the old one was at its end
        return _receipt(session)

    def _send(self, envelope: Envelope) -> Session:
        session = Session.start(self.config, self._session.redactor if self._session else None)
        with _conversation(session, keep=True):
            _step(session, "Message", lambda s: steps.prepare(s, envelope))
            steps.protect(session)
            if not self._resume(session):
                _establish(session)
                self.messages = 0
            _transaction(session)
        self._keep_or_drop(session)
        if session.report.ok:
            self.messages += 1
        return session

    def close(self) -> None:
        """QUIT (under a short deadline of its own: the session may have been idle) and close."""
        session, self._session = self._session, None
        if session is not None:
            session.client.rebind(Deadline(min(QUIT_SECONDS, self.config.timeout)), [], session.redactor)
            _goodbye(session)
            session.client.close()

    def _resume(self, session: Session) -> bool:
        """Carry on the open session with this message's deadline and report (after RSET when the
        last transaction failed)."""
        previous, self._session = self._session, None
        if previous is None:
            return False
        session.resume(previous)
        if self._clean:
            return True
        try:
            code, _ = session.client.rset()
        except EXPECTED:
            code = None
        if code == 250:
            return True
        session.client.close()  # the server closed it, or answers nonsense: start over
        session.client = None
        return False

    def _keep_or_drop(self, session: Session) -> None:
        failure = session.report.failure
        reusable = session.client is not None and session.client.sock is not None and (
            failure is None or (failure.name in MESSAGE_STEPS and failure.code is not None
                                and failure.code != 421))
        if reusable:
            session.client.idle()
            self._session, self._clean = session, failure is None
        elif session.client is not None:
            session.client.close()


def _worth_a_new_session(session: Session) -> bool:
    """A resumed session that the server ended before taking the message: a 421 (closing, RFC
    5321 3.8: "too many messages", a shutdown) or the connection gone before DATA was sent. The
    message was not taken, so sending it over a new session cannot make it arrive twice."""
    failure = session.report.failure
    if failure is None or failure.name not in MESSAGE_STEPS:
        return False
    return failure.code == 421 or (failure.code is None and failure.name in ("MAIL FROM", "RCPT TO"))


def _receipt(session: Session) -> Receipt:
    if not session.report.ok:
        raise DeliveryError(session.report, session.outgoing.outcomes if session.outgoing else None)
    return Receipt(reply=session.redactor.clean(session.outgoing.reply), message_id=session.outgoing.message_id,
                   report=session.report, recipients=session.outgoing.outcomes)


def _transaction(session: Session) -> None:
    """MAIL FROM, RCPT TO and DATA: pipelined (RFC 2920) when the server offers it, else one by one."""
    if steps.pipelines(session):
        _step(session, "MAIL FROM", steps.pipelined_mail_from)
        _step(session, "RCPT TO", steps.pipelined_rcpt_to)
        _step(session, "DATA", steps.pipelined_data)
    else:
        _step(session, "MAIL FROM", steps.mail_from)
        _step(session, "RCPT TO", steps.rcpt_to)
        _step(session, "DATA", steps.data)


def _step(session: Session, name: str, action) -> None:
    """Run one step of the conversation (timed, in the report; the first failure ends it)."""
    session.attempt.run(name, lambda: action(session))


@contextmanager
def _conversation(session: Session, keep: bool = False, kind: str = "send"):
    """The steps of one message; the connection is closed after them unless `keep` (a
    connection deals with it), and always when something unexpected propagates. The
    conversation is kept in the server's transcripts when it keeps them."""
    try:
        with session.attempt:
            yield
    except BaseException:
        if session.client is not None:
            session.client.close()
        raise
    finally:
        _keep_transcript(session, kind)
    if not keep and session.client is not None:
        session.client.close()


def _keep_transcript(session: Session, kind: str) -> None:
    transcripts = session.config.transcripts
    if transcripts is None:
        return
    try:
        transcripts.write(session.report, kind, session.settings.address, session.redactor)
    except OSError as error:  # the mail went (or not) all the same
        log.warning("could not keep the SMTP transcript in %s: %s", transcripts.path, error.strerror or error)


def _establish(s: Session) -> None:
    """Everything up to and including authentication."""
    if isinstance(s.auth, BearerAuth):
        _step(s, "Token", _token)
    if s.config.receiver is not None:
        _step(s, "Mail receiver login", steps.receiver_login)
    _step(s, "Resolve host", steps.resolve)
    _step(s, "Proxy" if s.config.network.proxy is not None else "Connect", steps.connect)
    if s.settings.security == Security.TLS:
        _step(s, "TLS", steps.handshake)
    _step(s, "Greeting", steps.greeting)
    if s.settings.security == Security.TLS:
        _client_certificate(s)
    _step(s, "EHLO", steps.ehlo)
    if steps.wants_starttls(s):
        _step(s, "STARTTLS", steps.starttls)
        _step(s, "TLS", steps.handshake)
        _step(s, "EHLO", steps.ehlo)  # again: without it AUTH gets 503 and smtplib won't raise
        _client_certificate(s)
    _step(s, "Authenticate", steps.authenticate)


def _client_certificate(s: Session) -> None:
    """Accepted or not shows in the first reply over TLS (the greeting, or EHLO after STARTTLS)."""
    if s.config.client_cert is not None:
        _step(s, "Client certificate", steps.client_certificate)


def _goodbye(s: Session, reset: bool = False) -> None:
    """RSET / QUIT are politeness: their failure does not fail the check."""
    try:
        if reset:
            s.client.rset()
        s.client.quit()
    except EXPECTED:
        pass


def _token(s: Session) -> Step:
    step, token = token_step(s.auth, s.deadline)
    s.token = token.value
    s.redactor.add(token.value)
    return step
