"""SMTP transport: check() a server step by step without sending, or send() a message.

Both walk the same conversation and record one Step per stage in a Report:

    Resolve host -> Connect -> [TLS, implicit] -> Greeting -> EHLO
    -> [STARTTLS -> TLS -> EHLO again] -> Authenticate -> MAIL FROM
    check(): RSET, QUIT            send(): RCPT TO -> DATA -> QUIT

The first failed step ends the conversation; later steps are not added. A failed
step says in plain words what happened (summary) and what to try (hint).

Time: settings.timeout bounds the WHOLE conversation (see deadline.py).

Secrets: the transcript never shows AUTH arguments or the lines answering a 334
challenge (see smtp_client.py), and as a last line of defence every text of the
report is scrubbed of the password and its base64 form before it leaves this module.
"""
from contextlib import contextmanager
from email.message import EmailMessage
from time import monotonic

from . import smtp_steps as steps
from .config import Security, ServerConfig
from .report import DeliveryError, Outcome, Receipt, Report, Step
from .smtp_client import REDACTED, b64
from .smtp_failures import EXPECTED, explain
from .smtp_session import Session


def check(config: ServerConfig) -> Report:
    """Validate the server settings step by step; no mail is sent."""
    session = Session.start(config)
    with _conversation(session):
        _establish(session)
        _step(session, "MAIL FROM", steps.mail_from)
        _goodbye(session, reset=True)
    return session.report


def send(config: ServerConfig, message: EmailMessage) -> Receipt:
    """Deliver `message` to its To/Cc/Bcc recipients; raises DeliveryError on failure."""
    session = Session.start(config)
    with _conversation(session):
        _step(session, "Message", lambda s: steps.prepare(s, message))
        _establish(session)
        _step(session, "MAIL FROM", steps.mail_from)
        _step(session, "RCPT TO", steps.rcpt_to)
        _step(session, "DATA", steps.data)
        _goodbye(session)
    if not session.report.ok:
        raise DeliveryError(session.report)
    return Receipt(reply=session.outgoing.reply, message_id=session.outgoing.message_id,
                   report=session.report)


class _Abort(Exception):
    """A step failed and is in the report; end the conversation."""


def _step(session: Session, name: str, action) -> None:
    """Run one action, time it, and add its Step (or the explained failure) to the report."""
    started = monotonic()
    try:
        step = action(session)
    except EXPECTED as exc:
        failure = explain(name, exc, session)
        session.report.add(Step(name, Outcome.FAILED, failure.summary, failure.details,
                                failure.hint, monotonic() - started))
        raise _Abort from None
    step.name, step.elapsed = name, monotonic() - started
    session.report.add(step)


@contextmanager
def _conversation(session: Session):
    try:
        yield
    except _Abort:
        pass
    finally:
        if session.client is not None:
            session.client.close()
        _scrub(session.report, session.settings.password)


def _establish(s: Session) -> None:
    """Everything up to and including authentication."""
    _step(s, "Resolve host", steps.resolve)
    _step(s, "Connect", steps.connect)
    if s.settings.security == Security.TLS:
        _step(s, "TLS", steps.handshake)
    _step(s, "Greeting", steps.greeting)
    _step(s, "EHLO", steps.ehlo)
    if steps.wants_starttls(s):
        _step(s, "STARTTLS", steps.starttls)
        _step(s, "TLS", steps.handshake)
        _step(s, "EHLO", steps.ehlo)  # again: without it AUTH gets 503 and smtplib won't raise
    _step(s, "Authenticate", steps.authenticate)


def _goodbye(s: Session, reset: bool = False) -> None:
    """RSET / QUIT are politeness: their failure does not fail the check."""
    try:
        if reset:
            s.client.rset()
        s.client.quit()
    except EXPECTED:
        pass


def _scrub(report: Report, password: str) -> None:
    """Last line of defence: no password (plain or base64) in any text of the report."""
    secrets = [p for p in (password, b64(password) if password else "") if len(p) >= 3]
    if not secrets:
        return

    def clean(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        return text

    report.transcript[:] = [clean(line) for line in report.transcript]
    for step in report.steps:
        step.summary, step.hint = clean(step.summary), clean(step.hint)
        step.details = [(clean(k), clean(v)) for k, v in step.details]
