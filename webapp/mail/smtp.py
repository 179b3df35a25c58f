"""SMTP transport: check() a server step by step without sending, or send() a message.

Both walk the same conversation and record one Step per stage in a Report:

    Resolve host -> Connect -> [TLS, implicit] -> Greeting -> EHLO
    -> [STARTTLS -> TLS -> EHLO again] -> Authenticate -> MAIL FROM
    check(): RSET, QUIT            send(): RCPT TO -> DATA -> QUIT

The first failed step ends the conversation; later steps are not added. A failed
step says in plain words what happened (summary) and what to try (hint).

Time: settings.timeout bounds the WHOLE conversation. Name resolution runs in a
daemon thread that we wait on for at most the time left, and before every socket
operation the socket timeout is set to the time left (see Deadline, _Client).

Secrets: the transcript never shows AUTH arguments or the lines answering a 334
challenge, and as a last line of defence every text of the report is scrubbed of
the password and its base64 form before it leaves this module.
"""
import base64
import re
import socket
import ssl
import threading
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.message import EmailMessage
from email.utils import getaddresses, make_msgid
from smtplib import SMTP, SMTPDataError, SMTPException, SMTPServerDisconnected
from time import monotonic

from cryptography import x509

from .config import AuthMechanism, Security, ServerConfig, SmtpSettings
from .message import RECIPIENT_HEADERS, envelope_address
from .report import DeliveryError, Outcome, Receipt, Report, Step

SECURITY_LABELS = {
    Security.NONE: "None",
    Security.STARTTLS: "STARTTLS",
    Security.TLS: "SSL/TLS",
    Security.AUTO: "Automatic",
}
PREFERRED_MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")  # smtplib's own order of preference
REDACTED = "********"


# --- public API ----------------------------------------------------------------------

def check(config: ServerConfig) -> Report:
    """Validate the server settings step by step; no mail is sent."""
    session = _Session.start(config)
    with _conversation(session):
        _establish(session)
        _step(session, "MAIL FROM", _mail_from)
        _goodbye(session, reset=True)
    return session.report


def send(config: ServerConfig, message: EmailMessage) -> Receipt:
    """Deliver `message` to its To/Cc/Bcc recipients; raises DeliveryError on failure."""
    session = _Session.start(config)
    with _conversation(session):
        _step(session, "Message", lambda s: _prepare(s, message))
        _establish(session)
        _step(session, "MAIL FROM", _mail_from)
        _step(session, "RCPT TO", _rcpt_to)
        _step(session, "DATA", _data)
        _goodbye(session)
    if not session.report.ok:
        raise DeliveryError(session.report)
    return Receipt(reply=session.outgoing.reply, message_id=session.outgoing.message_id,
                   report=session.report)


# --- time ----------------------------------------------------------------------------

class DeadlineExceeded(Exception):
    """The time for the whole check or send ran out. Deliberately not an OSError, so
    smtplib does not turn it into SMTPServerDisconnected."""


class Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self._end = monotonic() + seconds

    def left(self) -> float:
        """Seconds left; raises DeadlineExceeded when none are."""
        left = self._end - monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"no time left of {_seconds(self.seconds)}")
        return left


def _within(deadline: Deadline, function, *args):
    """Run a blocking call (getaddrinfo) in a daemon thread and wait only the time left."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # handed over to the waiting thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True, name="mailroom-smtp-resolve")
    worker.start()
    worker.join(deadline.left())
    if worker.is_alive():
        raise DeadlineExceeded("no answer from the name resolver")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --- the SMTP client: smtplib plus deadline and transcript ------------------------

class _DeadlineFile:
    """The reply stream: sets the socket timeout to the time left before each line."""

    def __init__(self, sock: socket.socket, deadline: Deadline):
        self._sock, self._deadline = sock, deadline
        self._file = sock.makefile("rb")

    def readline(self, size: int = -1) -> bytes:
        self._sock.settimeout(self._deadline.left())
        try:
            return self._file.readline(size)
        except TimeoutError:
            raise DeadlineExceeded("no reply in time") from None

    def close(self) -> None:
        self._file.close()


class _Client(SMTP):
    """smtplib.SMTP on a socket we connected ourselves, recording a redacted transcript."""

    def __init__(self, sock: socket.socket, server_name: str, local_hostname: str,
                 deadline: Deadline, transcript: list[str]):
        super().__init__(local_hostname=local_hostname)  # no host: smtplib does not connect
        self.sock, self._host = sock, server_name  # _host is what starttls() would verify
        self._deadline, self._transcript = deadline, transcript
        self._last_code: int | None = None

    def send(self, s) -> None:
        if self.sock is None:
            raise SMTPServerDisconnected("the connection is closed")
        self._record_sent(s)
        data = s.encode(self.command_encoding) if isinstance(s, str) else s
        self.sock.settimeout(self._deadline.left())
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise DeadlineExceeded("could not send in time") from None

    def getreply(self):
        if self.file is None and self.sock is not None:
            self.file = _DeadlineFile(self.sock, self._deadline)
        code, text = super().getreply()
        self._last_code = code
        lines = text.decode("utf-8", "replace").split("\n")
        for number, line in enumerate(lines, 1):
            self._transcript.append(f"S: {code}{' ' if number == len(lines) else '-'}{line}")
        return code, text

    def _record_sent(self, s) -> None:
        if self._last_code == 354:  # the message itself, after DATA
            self._transcript += [f"C: <message, {len(s)} bytes>", "C: ."]
            return
        for line in (s.decode("utf-8", "replace") if isinstance(s, bytes) else s).splitlines():
            self._transcript.append("C: " + self._redact(line))

    def _redact(self, line: str) -> str:
        if self._last_code == 334:  # answering an AUTH challenge
            return REDACTED
        words = line.split()
        if words and words[0].upper() == "AUTH":
            return " ".join(words[:2] + ([REDACTED] if len(words) > 2 else []))
        return line

    def auth(self, mechanism, authobject, *, initial_response_ok=True):
        """smtplib's auth(), but UTF-8 instead of ASCII (RFC 4616) and never raising on a
        reply: returns (code, text) and the caller checks for 235."""
        initial = authobject() if initial_response_ok else None
        if initial is None:
            code, text = self.docmd("AUTH", mechanism)
            self._auth_challenge_count = 0
        else:
            code, text = self.docmd("AUTH", f"{mechanism} {_b64(initial)}")
            self._auth_challenge_count = 1
        while code == 334 and self._auth_challenge_count < 5:
            self._auth_challenge_count += 1
            code, text = self.docmd(_b64(authobject(base64.decodebytes(text))))
        return code, text

    def start_over(self) -> None:
        """After STARTTLS: RFC 3207 says forget what the server offered before."""
        self.file = None
        self.helo_resp = self.ehlo_resp = None
        self.esmtp_features = {}
        self.does_esmtp = False


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


# --- one conversation ----------------------------------------------------------------

@dataclass
class _Outgoing:
    """What send() transmits: envelope plus the message bytes without Bcc."""
    recipients: list[str]
    payload: bytes
    message_id: str
    needs_utf8: bool
    reply: str = ""


@dataclass
class _Session:
    config: ServerConfig
    settings: SmtpSettings
    deadline: Deadline
    report: Report = field(default_factory=Report)
    addresses: list[tuple] = field(default_factory=list)  # (family, sockaddr)
    peer: tuple | None = None  # the (family, sockaddr) we connected to
    client: _Client | None = None
    encrypted: bool = False
    outgoing: _Outgoing | None = None

    @classmethod
    def start(cls, config: ServerConfig) -> "_Session":
        if config.smtp is None:
            raise ValueError("this server configuration has no SMTP settings")
        return cls(config=config, settings=config.smtp, deadline=Deadline(config.smtp.timeout))


class StepFailed(Exception):
    """A step failed for a reason already put in words."""

    def __init__(self, summary: str, hint: str = "", details: list | None = None):
        super().__init__(summary)
        self.summary, self.hint, self.details = summary, hint, details or []


class _Rejected(Exception):
    """The server answered with an unexpected reply code."""

    def __init__(self, code: int, text: bytes | str, subject: str = ""):
        super().__init__(code)
        self.code = code
        self.text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        self.text = " ".join(self.text.split())
        self.subject = subject  # the address or mechanism concerned, for the explanation


class _Abort(Exception):
    """Internal: a step failed and is in the report; end the conversation."""


# Exceptions that are about the server or the network, not bugs in this module.
_EXPECTED = (OSError, SMTPException, DeadlineExceeded, StepFailed, _Rejected, ValueError)


def _result(summary: str, details=(), outcome: Outcome = Outcome.PASSED, hint: str = "") -> Step:
    return Step(name="", outcome=outcome, summary=summary, details=list(details), hint=hint)


def _step(session: _Session, name: str, action) -> None:
    """Run one action, time it, and add its Step (or the explained failure) to the report."""
    started = monotonic()
    try:
        step = action(session)
    except _EXPECTED as exc:
        failure = _explain(name, exc, session)
        session.report.add(Step(name, Outcome.FAILED, failure.summary, failure.details,
                                failure.hint, monotonic() - started))
        raise _Abort from None
    step.name, step.elapsed = name, monotonic() - started
    session.report.add(step)


@contextmanager
def _conversation(session: _Session):
    try:
        yield
    except _Abort:
        pass
    finally:
        if session.client is not None:
            session.client.close()
        _scrub(session.report, session.settings.password)


def _establish(s: _Session) -> None:
    """Everything up to and including authentication."""
    _step(s, "Resolve host", _resolve)
    _step(s, "Connect", _connect)
    if s.settings.security == Security.TLS:
        _step(s, "TLS", _tls)
    _step(s, "Greeting", _greeting)
    _step(s, "EHLO", _ehlo)
    if _wants_starttls(s):
        _step(s, "STARTTLS", _starttls)
        _step(s, "TLS", _tls)
        _step(s, "EHLO", _ehlo)  # again: without it AUTH gets 503 and smtplib won't raise
    _step(s, "Authenticate", _authenticate)


def _goodbye(s: _Session, reset: bool = False) -> None:
    """RSET / QUIT are politeness: their failure does not fail the check."""
    try:
        if reset:
            s.client.rset()
        s.client.quit()
    except _EXPECTED:
        pass


# --- the steps -------------------------------------------------------------------------

def _resolve(s: _Session) -> Step:
    host = s.settings.host.strip()
    if not host:
        raise StepFailed("no host name is configured", "enter the mail server's host name")
    infos = _within(s.deadline, socket.getaddrinfo, host, s.settings.port, 0, socket.SOCK_STREAM)
    s.addresses = list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))
    ips = [sockaddr[0] for _, sockaddr in s.addresses]
    return _result(f"{host} resolves to {', '.join(ips)}", [("Address", ip) for ip in ips])


def _connect(s: _Session) -> Step:
    errors: list[OSError] = []
    for family, sockaddr in s.addresses:  # like socket.create_connection: first that answers
        try:
            sock = _open_socket(family, sockaddr, s.deadline)
        except (TimeoutError, DeadlineExceeded):
            raise DeadlineExceeded("connect timed out") from None
        except OSError as exc:
            errors.append(exc)
            continue
        s.peer = (family, sockaddr)
        s.client = _Client(sock, s.settings.host.strip(), _ehlo_name(s.settings, sock),
                           s.deadline, s.report.transcript)
        where = _endpoint(sockaddr)
        return _result(f"connected to {where}", [("Address", where)])
    raise errors[0]


def _open_socket(family: int, sockaddr: tuple, deadline: Deadline) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(deadline.left())
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def _tls(s: _Session) -> Step:
    context = _tls_context(s.settings)
    client = s.client
    client.sock.settimeout(s.deadline.left())
    client.sock = context.wrap_socket(client.sock, server_hostname=client._host)
    client.start_over()
    s.encrypted = True
    return _tls_result(client.sock, s.settings)


def _greeting(s: _Session) -> Step:
    code, text = s.client.getreply()
    if code != 220:
        raise _Rejected(code, text)
    reply = f"{code} {_text(text)}"
    return _result(f"the server greets: {reply}", [("Greeting", reply)])


def _ehlo(s: _Session) -> Step:
    code, text = s.client.ehlo()
    if code != 250:
        raise _Rejected(code, text)
    details = _ehlo_details(s.client)
    offers = ", ".join(name if value == "yes" else f"{name} {value}"
                       for name, value in details[1:] if value not in ("no", ""))
    when = "over TLS, " if s.encrypted else ""
    return _result(f"{when}the server offers: {offers or 'no extensions'}", details)


def _wants_starttls(s: _Session) -> bool:
    security = s.settings.security
    if security == Security.STARTTLS:
        return True
    if security == Security.AUTO:
        if s.client.has_extn("starttls"):
            return True
        s.report.add(Step(
            "STARTTLS", Outcome.WARNING,
            "the server does not offer STARTTLS: mail (and the password) goes unencrypted",
            hint="choose SSL/TLS if the server offers it on another port (usually 465), "
                 "or ask the mail administrator to enable STARTTLS"))
    return False


def _starttls(s: _Session) -> Step:
    if not s.client.has_extn("starttls"):
        raise StepFailed(
            "the server does not offer STARTTLS",
            "if this port expects implicit TLS (usually 465), choose SSL/TLS; the submission "
            "port 587 normally offers STARTTLS; choose None only on a trusted network")
    code, text = s.client.docmd("STARTTLS")
    if code != 220:
        raise _Rejected(code, text)
    return _result("the server is ready to start TLS", [("Reply", f"{code} {_text(text)}")])


def _authenticate(s: _Session) -> Step:
    settings = s.settings
    if not settings.authenticates:
        return _result("no username configured: not signing in", outcome=Outcome.SKIPPED)
    offered = s.client.esmtp_features.get("auth", "").upper().split()
    if not offered:
        raise StepFailed("the server offers no authentication (AUTH), but a username is configured",
                         _no_auth_hint(s))
    mechanism = _choose_mechanism(settings.mechanism, offered)
    s.client.user, s.client.password = settings.username, settings.password
    authobject = getattr(s.client, "auth_" + mechanism.lower().replace("-", "_"))
    try:
        code, text = s.client.auth(mechanism, authobject)
    except UnicodeEncodeError:
        raise StepFailed(f"{mechanism} can't use a password with non-ASCII characters",
                         "choose PLAIN or LOGIN as mechanism") from None
    if code != 235:
        raise _Rejected(code, text, mechanism)
    return _result(f"signed in as {settings.username} with {mechanism}",
                   [("Mechanism", mechanism), ("Offered", " ".join(offered)),
                    ("Reply", f"{code} {_text(text)}")])


def _choose_mechanism(wanted: AuthMechanism, offered: list[str]) -> str:
    if wanted == AuthMechanism.AUTO:
        usable = [m for m in PREFERRED_MECHANISMS if m in offered]
        if not usable:
            raise StepFailed(f"the server offers only {' '.join(offered)}, none of which "
                             f"Mailroom can use ({', '.join(PREFERRED_MECHANISMS)})",
                             "the server may need OAuth 2.0 (XOAUTH2); ask the mail administrator")
        return usable[0]
    if wanted.value not in offered:
        raise StepFailed(f"the server does not offer {wanted.value}; it offers {' '.join(offered)}",
                         "choose Automatic, or one of the offered mechanisms")
    return wanted.value


def _no_auth_hint(s: _Session) -> str:
    if not s.encrypted and s.client.has_extn("starttls"):
        return "the server may only offer AUTH after STARTTLS: choose STARTTLS as security"
    if not s.encrypted:
        return ("the server may only offer AUTH over an encrypted connection: choose STARTTLS "
                "or SSL/TLS (port 465); or leave the username empty if it accepts mail without")
    return ("leave the username empty if the server accepts mail without signing in, or check "
            "the port: the submission port (587 or 465) usually offers AUTH, port 25 often not")


def _mail_from(s: _Session) -> Step:
    sender = envelope_address(s.config.sender.address)
    needs_utf8 = not sender.isascii() or bool(s.outgoing and s.outgoing.needs_utf8)
    options = _mail_options(s, needs_utf8)
    code, text = s.client.mail(sender, options)
    if code != 250:
        raise _Rejected(code, text, sender)
    return _result(f"the server accepts {sender} as sender", [("Reply", f"{code} {_text(text)}")])


def _mail_options(s: _Session, needs_utf8: bool) -> list[str]:
    client, options = s.client, []
    if needs_utf8:
        if not client.has_extn("smtputf8"):
            raise StepFailed("an address has non-ASCII characters before the @, which needs "
                             "SMTPUTF8, and the server does not offer SMTPUTF8",
                             "use addresses with an ASCII local part")
        options += ["SMTPUTF8", "BODY=8BITMIME"]
    if s.outgoing and client.has_extn("size"):
        options.append(f"SIZE={len(s.outgoing.payload)}")
    return options


def _rcpt_to(s: _Session) -> Step:
    accepted, refused = [], []
    for recipient in s.outgoing.recipients:
        code, text = s.client.rcpt(recipient)
        if code in (250, 251):
            accepted.append(recipient)
        else:
            refused.append(_Rejected(code, text, recipient))
    if not accepted:
        raise refused[0]
    details = [("Accepted", r) for r in accepted]
    details += [("Refused", f"{r.subject}: {r.code} {r.text}") for r in refused]
    if refused:
        return _result(f"the server refused {len(refused)} of {len(s.outgoing.recipients)} "
                       "recipients; sending to the others", details, Outcome.WARNING,
                       hint=_explain_reply("RCPT TO", refused[0]).hint)
    return _result(f"the server accepts {len(accepted)} recipient(s)", details)


def _data(s: _Session) -> Step:
    try:
        code, text = s.client.data(s.outgoing.payload)
    except SMTPDataError as exc:  # DATA itself was refused (no 354)
        raise _Rejected(exc.smtp_code, exc.smtp_error) from None
    if code != 250:
        raise _Rejected(code, text)
    s.outgoing.reply = f"{code} {_text(text)}"
    return _result(f"the server accepted the message: {s.outgoing.reply}",
                   [("Reply", s.outgoing.reply), ("Message-ID", s.outgoing.message_id),
                    ("Size", f"{len(s.outgoing.payload)} bytes")])


def _prepare(s: _Session, message: EmailMessage) -> Step:
    """Envelope recipients from To/Cc/Bcc; the transmitted copy loses its Bcc header here."""
    recipients = list(dict.fromkeys(
        envelope_address(address)
        for _, address in getaddresses([str(v) for h in RECIPIENT_HEADERS
                                        for v in message.get_all(h, [])])
        if address))
    if not recipients:
        raise StepFailed("the message has no recipients", "add at least one To, Cc or Bcc address")
    copy = deepcopy(message)  # the caller's message keeps its Bcc
    del copy["Bcc"]
    if copy["Message-ID"] is None:
        copy["Message-ID"] = make_msgid(domain=envelope_address(s.config.sender.address).split("@")[1])
    policy = copy.policy.clone(linesep="\r\n")
    s.outgoing = _Outgoing(recipients=recipients, payload=copy.as_bytes(policy=policy),
                           message_id=str(copy["Message-ID"]),
                           needs_utf8=bool(getattr(policy, "utf8", False))
                           or not all(r.isascii() for r in recipients))
    return _result(f"{len(recipients)} recipient(s), {len(s.outgoing.payload)} bytes",
                   [("Message-ID", s.outgoing.message_id)])


# --- TLS ---------------------------------------------------------------------------------

def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.ca_cert.strip():
        try:
            context.load_verify_locations(cadata=settings.ca_cert)
        except (ssl.SSLError, ValueError):
            raise StepFailed("the CA certificate could not be read",
                             "paste the CA certificate in PEM form "
                             "(-----BEGIN CERTIFICATE----- ...)") from None
    if not settings.verify_cert:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _tls_result(sock: ssl.SSLSocket, settings: SmtpSettings) -> Step:
    name, _, bits = sock.cipher()
    details = [("TLS version", sock.version()), ("Cipher", f"{name} ({bits} bits)")]
    der = sock.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der) if der else None
    details += _certificate_details(cert)
    if settings.verify_cert:
        details.append(("Verification", "verified: trusted issuer, name matches"))
        return _result(f"encrypted with {sock.version()}; the certificate is valid", details)
    details.append(("Verification", "not verified (disabled)"))
    return _result(f"encrypted with {sock.version()}, but the certificate was not verified",
                   details, Outcome.WARNING,
                   hint="turn verification on (add the CA certificate if needed): "
                        "without it, anyone in between can read the password")


def _certificate_details(cert: x509.Certificate | None) -> list[tuple[str, str]]:
    if cert is None:
        return [("Certificate", "none presented")]
    return [("Certificate subject", cert.subject.rfc4514_string()),
            ("Certificate names", ", ".join(_certificate_names(cert))),
            ("Issuer", cert.issuer.rfc4514_string()),
            ("Valid from", _date(cert.not_valid_before_utc)),
            ("Expires", _date(cert.not_valid_after_utc))]


def _certificate_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    common = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return names or [str(name) for name in common] or ["(no names)"]


def _peek_certificate(s: _Session) -> x509.Certificate | None:
    """Connect again without verification, only to show why verification failed."""
    probe = _Session(config=s.config, settings=replace(s.settings, verify_cert=False),
                     deadline=s.deadline, addresses=[s.peer] if s.peer else [])
    try:
        _connect(probe)
        if s.settings.security != Security.TLS:
            _greeting(probe)
            _ehlo(probe)
            _starttls(probe)
        _tls(probe)
        return x509.load_der_x509_certificate(probe.client.sock.getpeercert(binary_form=True))
    except (*_EXPECTED, TypeError):
        return None
    finally:
        if probe.client is not None:
            probe.client.close()


# --- explaining failures -------------------------------------------------------------------

def _explain(name: str, exc: Exception, s: _Session) -> StepFailed:
    """Turn an exception at step `name` into words; first matching type wins."""
    for kind, explainer in _EXPLAINERS:
        if isinstance(exc, kind):
            return explainer(name, exc, s)
    return StepFailed(f"{type(exc).__name__}: {exc}")


def _explain_reply(name: str, exc: _Rejected, s: _Session | None = None) -> StepFailed:
    meaning, hint = _reply_meaning(name, exc.code, exc.text)
    nature = {4: "a temporary error: trying again later may work",
              5: "a permanent error"}.get(exc.code // 100, "an unexpected reply")
    fill = {"subject": exc.subject or "it", "code": exc.code}
    return StepFailed(
        f'{exc.code}: {meaning.format(**fill)}. The server said "{exc.code} {exc.text}" ({nature})',
        hint.format(**fill))


def _reply_meaning(name: str, code: int, text: str) -> tuple[str, str]:
    for pattern, meaning, hint in _SPECIAL_REPLIES:
        if pattern.search(text):
            return meaning, hint
    family = f"{code // 100}xx"
    return (_REPLY_MEANINGS.get((name, code)) or _REPLY_MEANINGS.get((name, family))
            or _REPLY_MEANINGS.get(("*", code)) or _REPLY_MEANINGS.get(("*", family))
            or ("the server gave an unexpected answer", "see the transcript for the conversation"))


def _explain_timeout(name: str, exc: Exception, s: _Session) -> StepFailed:
    t, host, port = _seconds(s.settings.timeout), s.settings.host.strip(), s.settings.port
    if name == "Resolve host":
        return StepFailed(f"the host name {host} could not be resolved within {t}",
                          "the name server did not answer in time: check the spelling of the "
                          "host name and this machine's DNS settings")
    if name == "Connect":
        return StepFailed(f"no answer within {t}: a firewall may be dropping the port",
                          f"check host and port {port}, and whether outgoing connections to "
                          f"port {port} are allowed from this machine")
    if name == "Greeting":
        return StepFailed(f"no answer within {t}: the server accepted the connection but "
                          "sent no greeting", _implicit_tls_hint(s.settings))
    return StepFailed(f"no answer within {t} (the whole {'send' if s.outgoing else 'check'} "
                      f"may take at most {t})",
                      "the server is slow or the connection stalled: try again, or raise "
                      "the timeout")


def _implicit_tls_hint(settings: SmtpSettings) -> str:
    if settings.security == Security.TLS:
        return "the server may be overloaded, or may not be a mail server: check host and port"
    chosen = SECURITY_LABELS[settings.security]
    if settings.port == 465:
        return f"port 465 expects implicit TLS, you chose {chosen}: choose SSL/TLS"
    return (f"the port may expect implicit TLS (like port 465) and wait for a TLS handshake; "
            f"you chose {chosen}: try SSL/TLS, or a firewall may be holding the connection")


def _explain_dns(name: str, exc: socket.gaierror, s: _Session) -> StepFailed:
    host = s.settings.host.strip()
    if exc.errno == socket.EAI_AGAIN:
        return StepFailed(f"the host name {host} could not be resolved: the name server did "
                          "not answer", "check this machine's network and DNS settings, then retry")
    return StepFailed(f"the host name {host} could not be resolved",
                      "check the spelling of the host name")


def _explain_refused(name: str, exc: OSError, s: _Session) -> StepFailed:
    where = f"{s.settings.host.strip()}:{s.settings.port}"
    return StepFailed(f"nothing listens on {where} (connection refused)",
                      "check the port, and that the mail server is running")


def _explain_os_error(name: str, exc: OSError, s: _Session) -> StepFailed:
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError,
                        ssl.SSLZeroReturnError)):
        during = "the TLS handshake" if name == "TLS" else name
        return StepFailed(f"the server closed the connection during {during}",
                          _implicit_tls_hint(s.settings) if name == "TLS" else
                          "the server may block this machine, or dislike what it was sent: "
                          "see the transcript")
    reason = exc.strerror or str(exc)
    where = _endpoint(s.peer[1]) if s.peer else f"{s.settings.host.strip()}:{s.settings.port}"
    return StepFailed(f"could not talk to {where}: {reason}",
                      "check host and port, and this machine's network connection")


def _explain_disconnected(name: str, exc: SMTPServerDisconnected, s: _Session) -> StepFailed:
    return StepFailed(f"the server closed the connection during {name}",
                      _implicit_tls_hint(s.settings) if name == "Greeting" else
                      "the server may limit connections or block this machine: "
                      "see the transcript")


def _explain_ssl(name: str, exc: ssl.SSLError, s: _Session) -> StepFailed:
    reason = getattr(exc, "reason", None) or ""
    if reason in _PLAIN_TEXT_REASONS:
        if s.settings.security == Security.TLS:
            return StepFailed(f"the server answered in plain text: port {s.settings.port} "
                              "expects STARTTLS (or None), you chose SSL/TLS",
                              "choose STARTTLS, or use the server's SSL/TLS port (usually 465)")
        return StepFailed("the server did not answer in TLS after STARTTLS",
                          "the server's TLS setup may be broken: ask the mail administrator")
    summary, hint = _SSL_REASONS.get(reason, (f"the TLS handshake failed: {reason or exc}",
                                               "ask the mail administrator to check TLS"))
    return StepFailed(summary, hint)


def _explain_certificate(name: str, exc: ssl.SSLCertVerificationError, s: _Session) -> StepFailed:
    cert = _peek_certificate(s)
    details = [*(_certificate_details(cert) if cert else []),
               ("Verification", f"failed: {exc.verify_message}")]
    code, host = exc.verify_code, s.settings.host.strip()
    if code in _NAME_MISMATCH:
        names = ", ".join(_certificate_names(cert)) if cert else "other names"
        return StepFailed(f"the certificate is for {names}, not for {host}",
                          f"enter a host name the certificate is for ({names}), or ask for a "
                          f"certificate that includes {host}", details)
    if code == _EXPIRED:
        when = _date(cert.not_valid_after_utc) if cert else "some time ago"
        return StepFailed(f"the server's certificate expired on {when}",
                          "the mail administrator must renew the certificate", details)
    if code == _NOT_YET_VALID:
        when = _date(cert.not_valid_before_utc) if cert else "a later date"
        return StepFailed(f"the server's certificate is only valid from {when}",
                          "check the clock of this machine and of the server", details)
    if code in _UNKNOWN_AUTHORITY:
        issuer = f" ({cert.issuer.rfc4514_string()})" if cert else ""
        return StepFailed(f"the certificate is signed by an unknown authority{issuer}: "
                          "add your CA certificate",
                          "paste the CA certificate (PEM) into the CA certificate field; turning "
                          "verification off works too, but lets anyone in between read the "
                          "password", details)
    return StepFailed(f"the certificate could not be verified: {exc.verify_message}",
                      "ask the mail administrator to check the certificate", details)


def _explain_known(name: str, exc: StepFailed, s: _Session) -> StepFailed:
    return exc


def _explain_value(name: str, exc: ValueError, s: _Session) -> StepFailed:
    return StepFailed(str(exc), "check the addresses in the settings and the message")


def _explain_smtp(name: str, exc: SMTPException, s: _Session) -> StepFailed:
    code = getattr(exc, "smtp_code", None)
    if code is not None:
        return _explain_reply(name, _Rejected(code, getattr(exc, "smtp_error", b"")))
    return StepFailed(f"SMTP error during {name}: {exc}", "see the transcript")


_NAME_MISMATCH = {62, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_EXPIRED, _NOT_YET_VALID = 10, 9
_UNKNOWN_AUTHORITY = {2, 18, 19, 20, 21}  # unknown issuer, self-signed (chain), can't verify leaf

_PLAIN_TEXT_REASONS = {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST",
                       "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_RECORD"}

_SSL_REASONS = {
    "TLSV1_ALERT_PROTOCOL_VERSION": (
        "the server only speaks an old TLS version that is disabled for safety",
        "ask the mail administrator to enable TLS 1.2 or newer"),
    "UNSUPPORTED_PROTOCOL": (
        "the server only speaks an old TLS version that is disabled for safety",
        "ask the mail administrator to enable TLS 1.2 or newer"),
    "SSLV3_ALERT_HANDSHAKE_FAILURE": (
        "the server and Mailroom share no TLS cipher",
        "ask the mail administrator to enable modern ciphers"),
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": (
        "the server wants a client certificate", "Mailroom does not send client certificates"),
}

# Replies by step and code ("5xx" = any code of that class); "*" for any step.
# {subject} is the address or mechanism concerned.
_REPLY_MEANINGS: dict[tuple[str, int | str], tuple[str, str]] = {
    ("Greeting", 421): ("the server does not accept connections right now",
                        "try again later; if it persists, it may refuse this machine's address"),
    ("Greeting", "5xx"): ("the server refuses to talk to this machine",
                          "it may block this machine's IP address, or not be a mail server"),
    ("EHLO", "5xx"): ("the server rejected the EHLO greeting",
                      "set the local host name (EHLO name) to this machine's DNS name"),
    ("STARTTLS", "4xx"): ("the server cannot start TLS right now", "try again later"),
    ("STARTTLS", "5xx"): ("the server refused to start TLS",
                          "choose SSL/TLS if the server has an implicit-TLS port (usually 465)"),
    ("Authenticate", 535): ("the server rejected the username or password",
                            "check username and password; with two-step sign-in many "
                            "providers need an app password"),
    ("Authenticate", 534): ("the server wants a stronger way to sign in for this account",
                            "the provider may require an app password or OAuth 2.0"),
    ("Authenticate", 538): ("the server only accepts a password over an encrypted connection",
                            "choose STARTTLS or SSL/TLS"),
    ("Authenticate", 530): ("the server wants encryption before signing in",
                            "choose STARTTLS or SSL/TLS"),
    ("Authenticate", 504): ("the server does not accept the mechanism {subject}",
                            "choose Automatic or another mechanism"),
    ("Authenticate", 503): ("the server did not expect AUTH now",
                            "usually EHLO was not repeated after STARTTLS; see the transcript"),
    ("Authenticate", "4xx"): ("the server could not check the password right now",
                              "try again later"),
    ("Authenticate", "5xx"): ("the server refused the sign-in",
                              "check username, password and mechanism"),
    ("*", 530): ("the server requires signing in first",
                 "enter the username and password of the mail account"),
    ("MAIL FROM", "5xx"): ("the server refused the sender {subject}",
                           "the account may not be allowed to send as {subject}: use the "
                           "account's own address as sender, or ask the mail administrator"),
    ("MAIL FROM", 552): ("the message is larger than the server accepts", "send a smaller message"),
    ("RCPT TO", "5xx"): ("the server refused the recipient {subject}",
                         "check the address; for other domains the server may not relay "
                         "for this account (sign in, or check the sender address)"),
    ("DATA", 552): ("the message is larger than the server accepts", "send a smaller message"),
    ("DATA", "5xx"): ("the server refused the message",
                      "it may look like spam or break a policy: ask the mail administrator"),
    ("*", 421): ("the server is closing the connection", "try again later"),
    ("*", "4xx"): ("the server could not go on right now", "try again later"),
    ("*", "5xx"): ("the server refused", "see the transcript for the conversation"),
}

_SPECIAL_REPLIES = [
    (re.compile(r"5\.7\.30|5\.7\.139|basic authentication is (not supported|disabled)", re.I),
     "Exchange Online (Microsoft 365) does not accept a username and password here "
     "(basic authentication is off)",
     "sign in with OAuth 2.0 instead, or ask the Microsoft 365 administrator to enable "
     "authenticated SMTP (SMTP AUTH) for this mailbox"),
    (re.compile(r"5\.7\.9|application-specific password", re.I),
     "the provider wants an app password, not the account password",
     "create an app password in the account's security settings and enter it as password"),
]

_EXPLAINERS = [
    (StepFailed, _explain_known),
    (_Rejected, _explain_reply),
    (DeadlineExceeded, _explain_timeout),
    (TimeoutError, _explain_timeout),
    (socket.gaierror, _explain_dns),
    (ConnectionRefusedError, _explain_refused),
    (ssl.SSLCertVerificationError, _explain_certificate),
    (ssl.SSLEOFError, _explain_os_error),
    (ssl.SSLZeroReturnError, _explain_os_error),
    (ssl.SSLError, _explain_ssl),
    (SMTPServerDisconnected, _explain_disconnected),
    (SMTPException, _explain_smtp),
    (OSError, _explain_os_error),
    (ValueError, _explain_value),
]


# --- small helpers ---------------------------------------------------------------------------

def _ehlo_details(client: _Client) -> list[tuple[str, str]]:
    features = client.esmtp_features
    size = features.get("size", "").strip()
    return [
        ("Server", _text(client.ehlo_resp or b"").split(" ")[0]),
        ("STARTTLS", "yes" if "starttls" in features else "no"),
        ("AUTH", features.get("auth", "").strip().upper() or "no"),
        ("SIZE", f"{int(size) / 1048576:.1f} MiB ({size} bytes)" if size.isdigit() and int(size)
         else ("no limit" if size else "")),
        ("8BITMIME", "yes" if "8bitmime" in features else "no"),
        ("SMTPUTF8", "yes" if "smtputf8" in features else "no"),
    ]


def _ehlo_name(settings: SmtpSettings, sock: socket.socket) -> str:
    """settings.local_hostname, else this machine's name if it looks like a domain, else
    an address literal. (Not socket.getfqdn(): it may do slow DNS outside our deadline.)"""
    if settings.local_hostname:
        return settings.local_hostname
    name = socket.gethostname()
    if "." in name:
        return name
    ip = sock.getsockname()[0]
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def _endpoint(sockaddr: tuple) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _date(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _scrub(report: Report, password: str) -> None:
    """Last line of defence: no password (plain or base64) in any text of the report."""
    secrets = [p for p in (password, _b64(password) if password else "") if len(p) >= 3]
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
