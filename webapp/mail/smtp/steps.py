"""The steps of an SMTP conversation. Each does one thing with the Session and returns
its Step, or raises: StepFailed, Rejected, or whatever the network or smtplib raised."""
import re
import socket
import ssl
from dataclasses import replace
from smtplib import SMTPDataError, quoteaddr

from cryptography import x509

from .. import client_cert, proxy, receiver, smime
from . import ntlm
from ..auth import BearerAuth, PasswordAuth
from ..deadline import Deadline, DeadlineExceeded, Watchdog, cut_short
from ..egress import EgressRefused
from ..envelope import Envelope
from ..message import envelope_address
from ..report import Outcome, RecipientOutcome, Step, StepFailed, step_result
from ..tls import handshake_result, tls_context
from .client import Client, one_line
from .failures import EXPECTED, certificate_failure, explain_reply
from .session import Outgoing, Rejected, Session
from .settings import SECURITY_LABELS, Mechanism, Security, SmtpSettings

PREFERRED_MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")  # smtplib's own order of preference
# Automatic takes NTLM only where the server offers nothing else Mailroom can use: NTLM wants the username
# in Windows' form (DOMAIN\user), which a mailbox address given for PLAIN or LOGIN often is not.
LAST_RESORT = ("NTLM",)
LEADING_DOT = re.compile(rb"(?m)^\.")
# An address smtplib.quoteaddr gives back as it is, in angle brackets: a dot-atom local part and an
# ASCII domain of letters, digits and hyphens (quoteaddr parses every address with the email package).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
PLAIN_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def protect(s: Session) -> None:
    """S/MIME (when the server has it), the last step before the bytes are handed over: in its own
    step, on exactly what DATA transmits (without Bcc)."""
    s.outgoing.payload = smime.protected(s.attempt.run, s.config.smime, s.outgoing.payload, s.outgoing.recipients)


def prepare(s: Session, envelope: Envelope) -> Step:
    """The envelope as stored; the transmitted bytes lose the Bcc header here."""
    if not envelope.recipients:
        raise StepFailed("the message has no recipients", "add at least one To, Cc or Bcc address",
                         temporary=False)
    s.outgoing = Outgoing(mail_from=envelope.mail_from, recipients=list(envelope.recipients),
                          payload=envelope.without_bcc(), message_id=envelope.message_id,
                          needs_utf8=envelope.needs_utf8)
    return step_result(f"{len(envelope.recipients)} recipient(s), {len(s.outgoing.payload)} bytes",
                       [("Message-ID", s.outgoing.message_id)])


def receiver_login(s: Session) -> Step:
    """POP-before-SMTP: log in to the mail receiver first (mail/receiver.py), through the same network."""
    return receiver.login(s.config.receiver, s.config.network, s.deadline)


def resolve(s: Session) -> Step:
    host = s.settings.host.strip()
    if not host:
        raise StepFailed("no host name is configured", "enter the mail server's host name")
    addresses = proxy.targets(s.config.network, host, s.settings.port, s.deadline)
    if addresses is None:  # SOCKS5 resolving at the proxy
        s.addresses = []
        return step_result(f"the proxy resolves {host}: the egress policy checked the name and port only",
                           outcome=Outcome.SKIPPED)
    s.addresses = addresses
    ips = [sockaddr[0] for _, sockaddr in s.addresses]
    return step_result(f"{host} resolves to {', '.join(ips)}", [("Address", ip) for ip in ips])


def connect(s: Session) -> Step:
    """To the first address that answers (like socket.create_connection), or through the proxy:
    then this is the "Proxy" step (connected to the proxy, the tunnel established)."""
    connection = proxy.connect(s.config.network, s.settings.host.strip(), s.settings.port, s.deadline,
                               s.addresses or None)
    s.peer = connection.peer
    s.client = Client(connection.sock, s.settings.host.strip(), _ehlo_name(s.settings, connection.sock),
                      s.deadline, s.report.transcript, s.redactor)
    if connection.proxy is not None:
        return connection.step()
    return step_result(f"connected to {s.endpoint}", [("Address", s.endpoint)])


def handshake(s: Session) -> Step:
    """TLS, implicit or after STARTTLS."""
    context = tls_context(s.settings.verify_cert, s.settings.ca_cert, s.config.network.extra_ca_pem,
                          s.config.client_cert, watched=True)
    client = s.client
    client.sock.settimeout(s.deadline.left())
    try:
        with cut_short(s.deadline, "no TLS handshake in time"):  # the client's watchdog ends a trickled one
            client.sock = context.wrap_socket(client.sock, server_hostname=client.server_name)
    except ssl.SSLCertVerificationError as exc:
        raise certificate_failure(exc, s.settings.host.strip(), _peek_certificate(s)) from None
    client.start_over()
    s.encrypted = True
    s.tls_handshake = client_cert.handshake_of(client.sock)
    step = handshake_result(client.sock, s.settings.verify_cert)
    step.details.append(("Client certificate", _asked(s)))
    return step


def _asked(s: Session) -> str:
    seen, configured = s.tls_handshake, s.config.client_cert is not None
    if seen is None:
        return "Mailroom cannot tell whether the server asked for one (this Python reports no handshake messages)"
    if not seen.requested:
        return "the server did not ask for one" + (" (the configured one was not sent)" if configured else "")
    if seen.sent:
        return f"the server asked for one; Mailroom sent {s.config.client_cert.facts()['subject']}"
    return "the server asked for one; none is configured" if not configured else \
        "the server asked for one, but Mailroom could not send the configured one (a kind the server does not take)"


def client_certificate(s: Session) -> Step:
    """After the first reply over TLS: the server went on, so it did not refuse the certificate (a refusal
    is a TLS alert on that read, which failures.py puts in words)."""
    subject = s.config.client_cert.facts()["subject"]
    details = [("Subject", subject), ("Expires", s.config.client_cert.facts()["expires"])]
    seen = s.tls_handshake
    if seen is None:
        return step_result(f"the server went on after the handshake; Mailroom cannot tell whether it asked for "
                           f"the certificate {subject} (this Python reports no handshake messages)", details,
                           Outcome.WARNING, hint="the server did not refuse the connection, which is all that shows")
    if not seen.requested:
        return step_result("the server did not ask for a client certificate (no CertificateRequest in the TLS "
                           "handshake), so it was not sent", details, Outcome.WARNING,
                           hint="this server (or port) does not use client certificates: ask the mail "
                                "administrator, or turn the client certificate off")
    if not seen.sent:
        return step_result("the server asked for a client certificate, but Mailroom could not send this one",
                           details, Outcome.WARNING,
                           hint="the server may not accept its key type or signature: ask for an RSA or EC certificate")
    return step_result(f"the server asked for a client certificate and accepted {subject}", details)


IMPLICIT_TLS_PROBE_AFTER = 2.0  # seconds of silence before asking whether the port wants TLS first


def greeting(s: Session) -> Step:
    if not s.encrypted:
        _await_greeting_or_implicit_tls(s)
    code, text = s.client.getreply()
    if code == -1:
        raise StepFailed(f"{s.endpoint} does not speak SMTP: its first line is not an SMTP greeting",
                         "check host and port: this is another kind of server")
    if code != 220:
        raise Rejected(code, text)
    reply = f"{code} {one_line(text)}"
    return step_result(f"the server greets: {reply}", [("Greeting", reply)])


def ehlo(s: Session) -> Step:
    code, text = s.client.ehlo()
    if code != 250:
        raise Rejected(code, text)
    details = _ehlo_details(s.client)
    offers = ", ".join(name if value == "yes" else f"{name} {value}"
                       for name, value in details[1:] if value not in ("no", ""))
    when = "over TLS, " if s.encrypted else ""
    return step_result(f"{when}the server offers: {offers or 'no extensions'}", details)


def wants_starttls(s: Session) -> bool:
    """Whether to STARTTLS; with Automatic security, a warning Step when the server can't."""
    security = s.settings.security
    if security == Security.STARTTLS:
        return True
    if security == Security.AUTO:
        if s.client.has_extn("starttls"):
            return True
        s.report.add(Step(
            "STARTTLS", Outcome.WARNING,
            "the server does not offer STARTTLS: mail goes unencrypted, and Mailroom signs in only "
            "where “Allow sign-in without encryption” is ticked",
            hint="choose SSL/TLS if the server offers it on another port (usually 465), "
                 "or ask the mail administrator to enable STARTTLS"))
    return False


def starttls(s: Session) -> Step:
    if not s.client.has_extn("starttls"):
        raise StepFailed(
            "the server does not offer STARTTLS",
            "if this port expects implicit TLS (usually 465), choose SSL/TLS; the submission "
            "port 587 normally offers STARTTLS; choose None only on a trusted network")
    code, text = s.client.docmd("STARTTLS")
    if code != 220:
        raise Rejected(code, text)
    return step_result("the server is ready to start TLS", [("Reply", f"{code} {one_line(text)}")])


def authenticate(s: Session) -> Step:
    auth = s.auth
    if not isinstance(auth, PasswordAuth | BearerAuth):
        return step_result("no authentication configured: not signing in", outcome=Outcome.SKIPPED)
    if not s.encrypted and not s.settings.plaintext_auth:
        raise StepFailed("Mailroom does not send credentials over an unencrypted connection",
                         "choose STARTTLS or SSL/TLS; only if this server is on a trusted network "
                         "and signs in without encryption, tick “Allow sign-in without encryption”")
    offered = s.client.esmtp_features.get("auth", "").upper().split()
    if not offered:
        raise StepFailed("the server offers no authentication (AUTH), but authentication is configured",
                         _no_auth_hint(s))
    if isinstance(auth, BearerAuth):
        mechanism = "XOAUTH2"
        if mechanism not in offered:
            raise StepFailed(f"the server does not offer XOAUTH2 (OAuth 2.0); it offers {' '.join(offered)}",
                             "check the host: Microsoft 365 and Gmail offer XOAUTH2 on port 587 after STARTTLS")
        initial = f"user={auth.username}\x01auth=Bearer {s.token}\x01\x01"
        code, text = s.client.auth(mechanism, lambda challenge=None: initial if challenge is None else "")
    else:
        mechanism = _choose_mechanism(Mechanism(auth.mechanism), offered)
        if mechanism == ntlm.MECHANISM:
            code, text = ntlm.sign_in(s, auth)
        else:
            code, text = _sasl(s, auth, mechanism)
    if code != 235:
        raise Rejected(code, text, mechanism)
    return step_result(f"signed in as {auth.username} with {mechanism}",
                       [("Mechanism", mechanism), ("Offered", " ".join(offered)),
                        ("Reply", f"{code} {one_line(text)}")])


def _sasl(s: Session, auth: PasswordAuth, mechanism: str) -> tuple[int, bytes]:
    s.client.user, s.client.password = auth.username, auth.password
    authobject = getattr(s.client, "auth_" + mechanism.lower().replace("-", "_"))
    try:
        return s.client.auth(mechanism, authobject)
    except UnicodeEncodeError:
        raise StepFailed(f"{mechanism} can't use a password with non-ASCII characters",
                         "choose PLAIN or LOGIN as mechanism") from None


def mail_from(s: Session) -> Step:
    sender, options = _sender(s)
    code, text = s.client.mail(sender, options)
    return _sender_reply(s, sender, code, text)


def rcpt_to(s: Session) -> Step:
    notify = _notify(s)
    return _recipient_replies(s, [s.client.rcpt(recipient, notify) for recipient in s.outgoing.recipients])


def data(s: Session) -> Step:
    try:
        code, text = s.client.data(s.outgoing.payload)
    except SMTPDataError as exc:  # DATA itself was refused (no 354)
        raise Rejected(exc.smtp_code, exc.smtp_error) from None
    return _message_reply(s, code, text)


# RFC 2920 (PIPELINING, when the server offers it): MAIL FROM, every RCPT TO and DATA go in one write,
# and the three steps below read their replies in order. A step that fails reads the replies still due
# first (and ends a DATA the server took anyway with a lone "."), so the session stays in step with the
# server for the next message.

def pipelines(s: Session) -> bool:
    return s.client.has_extn("pipelining")


def pipelined_mail_from(s: Session) -> Step:
    sender, options = _sender(s)
    if "SMTPUTF8" in options:
        s.client.command_encoding = "utf-8"  # as smtplib's mail() does
    notify = "".join(f" {option}" for option in _notify(s))
    s.client.pipeline([f"mail FROM:{quoted(sender)}{''.join(f' {o}' for o in options)}",
                       *(f"rcpt TO:{quoted(r)}{notify}" for r in s.outgoing.recipients), "data"])
    code, text = s.client.getreply()
    if code != 250:
        _read_refused_transaction(s, len(s.outgoing.recipients))
    return _sender_reply(s, sender, code, text)


def pipelined_rcpt_to(s: Session) -> Step:
    replies = [s.client.getreply() for _ in s.outgoing.recipients]
    if not any(code in (250, 251) for code, _ in replies):
        _read_refused_transaction(s, 0)
    return _recipient_replies(s, replies)


def pipelined_data(s: Session) -> Step:
    code, text = s.client.getreply()
    if code != 354:
        raise Rejected(code, text)
    s.client.send(_dot_stuffed(s.outgoing.payload))
    code, text = s.client.getreply()
    return _message_reply(s, code, text)


def quoted(address: str) -> str:
    """smtplib.quoteaddr(address), without parsing the plain addresses nearly all mail has."""
    return f"<{address}>" if PLAIN_ADDRESS.fullmatch(address) else quoteaddr(address)


def _read_refused_transaction(s: Session, recipients_due: int) -> None:
    """After a refused MAIL FROM, or every RCPT TO refused: the replies still due, DATA's last. A server
    that takes DATA all the same (354) gets an empty message, a lone "." (RFC 2920 3.1), whose
    reply is read and ignored; the transaction is reset before the next message (a failed one)."""
    try:
        for _ in range(recipients_due):
            s.client.getreply()
        code, _ = s.client.getreply()
        if code == 354:
            s.client.send(b".\r\n")
            s.client.getreply()
    except EXPECTED:
        s.client.close()  # out of step with the server: not to be reused


def _sender(s: Session) -> tuple[str, list[str]]:
    sender = s.outgoing.mail_from if s.outgoing else envelope_address(s.config.sender.address)
    needs_utf8 = not sender.isascii() or bool(s.outgoing and s.outgoing.needs_utf8)
    return sender, _mail_options(s, needs_utf8)


def _sender_reply(s: Session, sender: str, code: int, text: bytes) -> Step:
    if code != 250:
        raise Rejected(code, text, sender)
    details = [("Reply", f"{code} {one_line(text)}")]
    if _wants_dsn(s):
        details.append(("Delivery receipt", "asked for as a DSN (RET=HDRS, NOTIFY=SUCCESS,FAILURE)"
                        if _offers_dsn(s) else "the server does not offer DSN: only the Return-Receipt-To header"))
    return step_result(f"the server accepts {sender} as sender", details)


def _notify(s: Session) -> list[str]:
    return ["NOTIFY=SUCCESS,FAILURE"] if _wants_dsn(s) and _offers_dsn(s) else []


def _recipient_replies(s: Session, replies: list[tuple[int, bytes]]) -> Step:
    """Each recipient's answer to RCPT TO is its outcome; the step fails only when none was accepted."""
    accepted, refused = [], []
    for recipient, (code, text) in zip(s.outgoing.recipients, replies):
        s.outgoing.outcomes.append(RecipientOutcome(recipient, code in (250, 251), code, f"{code} {one_line(text)}",
                                                    temporary=code // 100 != 5))
        if code in (250, 251):
            accepted.append(recipient)
        else:
            refused.append(Rejected(code, text, recipient))
    if not accepted:
        raise min(refused, key=lambda r: r.code // 100 != 4)  # a temporary refusal, if any: the message may go later
    details = [("Accepted", r) for r in accepted]
    details += [("Refused", f"{r.subject}: {r.code} {r.text}") for r in refused]
    if refused:
        return step_result(f"the server refused {len(refused)} of {len(s.outgoing.recipients)} "
                           "recipients; sending to the others", details, Outcome.WARNING,
                           hint=explain_reply("RCPT TO", refused[0]).hint)
    return step_result(f"the server accepts {len(accepted)} recipient(s)", details)


def _message_reply(s: Session, code: int, text: bytes) -> Step:
    if code != 250:
        raise Rejected(code, text)
    s.outgoing.reply = f"{code} {one_line(text)}"
    return step_result(f"the server accepted the message: {s.outgoing.reply}",
                       [("Reply", s.outgoing.reply), ("Message-ID", s.outgoing.message_id),
                        ("Size", f"{len(s.outgoing.payload)} bytes")])


def _dot_stuffed(payload: bytes) -> bytes:
    """The message as DATA transmits it, as smtplib's data() makes it: leading dots doubled, ended by "."."""
    stuffed = LEADING_DOT.sub(b"..", payload)
    return stuffed + (b".\r\n" if stuffed.endswith(b"\r\n") else b"\r\n.\r\n")


def _peek_certificate(s: Session) -> x509.Certificate | None:
    """Connect again without verification, only to show why verification failed."""
    probe = Session(config=s.config, settings=replace(s.settings, verify_cert=False),
                    deadline=s.deadline, addresses=[s.peer] if s.peer else [], redactor=s.redactor)
    try:
        connect(probe)
        if s.settings.security != Security.TLS:
            greeting(probe)
            ehlo(probe)
            starttls(probe)
        handshake(probe)
        return x509.load_der_x509_certificate(probe.client.sock.getpeercert(binary_form=True))
    except (*EXPECTED, TypeError):
        return None
    finally:
        if probe.client is not None:
            probe.client.close()


def _await_greeting_or_implicit_tls(s: Session) -> None:
    """Wait for the greeting's first byte. After a short silence, ask a second connection
    whether the port expects TLS first (like 465): if so, say it now instead of waiting out
    the whole timeout."""
    sock = s.client.sock
    window = min(IMPLICIT_TLS_PROBE_AFTER, s.deadline.left())
    sock.settimeout(window)
    try:
        sock.recv(1, socket.MSG_PEEK)
        return
    except TimeoutError:
        pass
    if (s.peer is not None or s.config.network.proxy is not None) and _speaks_tls(s):
        chosen = SECURITY_LABELS[s.settings.security]
        raise StepFailed(f"port {s.settings.port} expects TLS from the start (implicit TLS, like 465) "
                         f"and sends no greeting before it; you chose {chosen}",
                         "choose SSL/TLS as security for this port")


def _speaks_tls(s: Session) -> bool:
    try:
        probe = proxy.connect(s.config.network, s.settings.host.strip(), s.settings.port,
                              Deadline(min(IMPLICIT_TLS_PROBE_AFTER, s.deadline.left())),
                              [s.peer] if s.peer else None).sock
    except (OSError, DeadlineExceeded, StepFailed, EgressRefused):
        return False
    watchdog = None
    try:
        window = Deadline(min(IMPLICIT_TLS_PROBE_AFTER, s.deadline.left()))
        watchdog = Watchdog(probe, window)  # a handshake trickled a byte at a time ends with the window too
        probe.settimeout(window.left())
        tls_context(False).wrap_socket(probe, server_hostname=s.settings.host.strip() or None).close()
        return not watchdog.fired
    except (OSError, ssl.SSLError, DeadlineExceeded):
        return False
    finally:
        if watchdog is not None:
            watchdog.cancel()
        probe.close()


def _ehlo_name(settings: SmtpSettings, sock: socket.socket) -> str:
    """settings.local_hostname, else this machine's name if it looks like a domain, else
    an address literal. (Not socket.getfqdn(): it may do slow DNS outside our deadline.)"""
    if settings.local_hostname:
        name = settings.local_hostname.strip().rstrip(".")
        return name if name.startswith("[") else name.encode("idna").decode("ascii")
    name = socket.gethostname()
    if "." in name:
        return name
    ip = sock.getsockname()[0]
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def _ehlo_details(client: Client) -> list[tuple[str, str]]:
    features = client.esmtp_features
    size = features.get("size", "").strip()
    return [
        ("Server", one_line(client.ehlo_resp or b"").split(" ")[0]),
        ("STARTTLS", "yes" if "starttls" in features else "no"),
        ("AUTH", features.get("auth", "").strip().upper() or "no"),
        ("SIZE", f"{int(size) / 1048576:.1f} MiB ({size} bytes)" if size.isdigit() and int(size)
         else ("no limit" if size else "")),
        ("8BITMIME", "yes" if "8bitmime" in features else "no"),
        ("SMTPUTF8", "yes" if "smtputf8" in features else "no"),
    ]


def _choose_mechanism(wanted: Mechanism, offered: list[str]) -> str:
    if wanted == Mechanism.AUTO:
        usable = [m for m in PREFERRED_MECHANISMS if m in offered] or [m for m in LAST_RESORT if m in offered]
        if not usable:
            raise StepFailed(f"the server offers only {' '.join(offered)}, none of which "
                             f"Mailroom can use ({', '.join(PREFERRED_MECHANISMS + LAST_RESORT)})",
                             "the server may need OAuth 2.0 (XOAUTH2); ask the mail administrator")
        return usable[0]
    if wanted.value not in offered:
        raise StepFailed(f"the server does not offer {wanted.value}; it offers {' '.join(offered)}",
                         "choose Automatic, or one of the offered mechanisms")
    return wanted.value


def _no_auth_hint(s: Session) -> str:
    if not s.encrypted and s.client.has_extn("starttls"):
        return "the server may only offer AUTH after STARTTLS: choose STARTTLS as security"
    if not s.encrypted:
        return ("the server may only offer AUTH over an encrypted connection: choose STARTTLS "
                "or SSL/TLS (port 465); or leave the username empty if it accepts mail without")
    return ("leave the username empty if the server accepts mail without signing in, or check "
            "the port: the submission port (587 or 465) usually offers AUTH, port 25 often not")


def _mail_options(s: Session, needs_utf8: bool) -> list[str]:
    client, options = s.client, []
    if needs_utf8:
        if not client.has_extn("smtputf8"):
            raise StepFailed("an address has non-ASCII characters before the @, which needs "
                             "SMTPUTF8, and the server does not offer SMTPUTF8",
                             "use addresses with an ASCII local part")
        options += ["SMTPUTF8", "BODY=8BITMIME"]
    if s.outgoing and client.has_extn("size"):
        options.append(f"SIZE={len(s.outgoing.payload)}")
    if _wants_dsn(s) and _offers_dsn(s):
        options.append("RET=HDRS")  # the notification returns the headers only, not the whole message
    return options


def _wants_dsn(s: Session) -> bool:
    """A message is being sent through a server whose options ask for a return (delivery) receipt."""
    return bool(s.outgoing) and bool(s.config.options and s.config.options.wants_dsn)


def _offers_dsn(s: Session) -> bool:
    """RFC 3461: the DSN parameters only to a server that names DSN in its EHLO answer."""
    return s.client.has_extn("dsn")
