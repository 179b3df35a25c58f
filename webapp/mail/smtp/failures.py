"""Why a step failed, in plain words: what happened (summary) and what to try (hint).

explain() turns whatever a step raised into a StepFailed, explain_reply() does so for
an unexpected SMTP reply, and certificate_failure() for a certificate that did not verify.
"""
import re
import socket
import ssl
from smtplib import SMTPException, SMTPServerDisconnected

from cryptography import x509

from ..deadline import DeadlineExceeded
from ..egress import REFUSED_HINT, EgressRefused, egress_details
from ..report import StepFailed
from ..tls import certificate_details, certificate_names, format_utc
from .session import Rejected, Session
from .settings import SECURITY_LABELS, Security, SmtpSettings

MESSAGE_STEPS = ("MAIL FROM", "RCPT TO", "DATA")  # a 5xx there refuses the message for good
CREDENTIALS_REFUSED = (535, 534)  # at AUTH: the credentials (or the token) are refused: hold the mail


def explain(name: str, exc: Exception, s: Session) -> StepFailed:
    """Turn an exception at step `name` into words; first matching type wins."""
    explainer = next(explainer for kind, explainer in _EXPLAINERS if isinstance(exc, kind))
    return explainer(name, exc, s)


def explain_reply(name: str, exc: Rejected, s: Session | None = None) -> StepFailed:
    meaning, hint = _reply_meaning(name, exc.code, exc.text, exc.subject, s)
    nature = {4: "a temporary error: trying again later may work",
              5: "a permanent error"}.get(exc.code // 100, "an unexpected reply")
    fill = {"subject": exc.subject or "it", "code": exc.code}
    return StepFailed(
        f'{exc.code}: {meaning.format(**fill)}. The server said "{exc.code} {exc.text}" ({nature})',
        hint.format(**fill), code=exc.code,
        temporary=not (exc.code // 100 == 5 and name in MESSAGE_STEPS),
        credentials=name == "Authenticate" and exc.code in CREDENTIALS_REFUSED)


def certificate_failure(exc: ssl.SSLCertVerificationError, host: str,
                        cert: x509.Certificate | None) -> StepFailed:
    """`cert` is the server's certificate, fetched again without verification, if we could."""
    details = [*(certificate_details(cert) if cert else []),
               ("Verification", f"failed: {exc.verify_message}")]
    code = exc.verify_code
    if code in _NAME_MISMATCH:
        names = ", ".join(certificate_names(cert)) if cert else "other names"
        return StepFailed(f"the certificate is for {names}, not for {host}",
                          f"enter a host name the certificate is for ({names}), or ask for a "
                          f"certificate that includes {host}", details)
    if code == _EXPIRED:
        when = format_utc(cert.not_valid_after_utc) if cert else "some time ago"
        return StepFailed(f"the server's certificate expired on {when}",
                          "the mail administrator must renew the certificate", details)
    if code == _NOT_YET_VALID:
        when = format_utc(cert.not_valid_before_utc) if cert else "a later date"
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


def _reply_meaning(name: str, code: int, text: str, subject: str = "",
                   s: Session | None = None) -> tuple[str, str]:
    if name == "Authenticate" and subject == "XOAUTH2" and code // 100 == 5:
        return _token_refused(s)
    if name == "Authenticate" and subject == "NTLM" and code == 535:
        return ("the server rejected the NTLM sign-in (username or password)",
                "check the password, and write the username as the Windows account is known: DOMAIN\\user or "
                "user@domain")
    for pattern, meaning, hint in _SPECIAL_REPLIES:
        if pattern.search(text):
            return meaning, hint
    family = f"{code // 100}xx"
    return (_REPLY_MEANINGS.get((name, code)) or _REPLY_MEANINGS.get((name, family))
            or _REPLY_MEANINGS.get(("*", code)) or _REPLY_MEANINGS.get(("*", family))
            or ("the server gave an unexpected answer", "see the transcript for the conversation"))


# Exchange Online's SMTP submission hosts (global, US Government, China): Microsoft's "How to set
# up a multifunction device or application to send email using Microsoft 365" and the national
# cloud endpoint lists.
EXCHANGE_ONLINE_SMTP = ("smtp.office365.com", "outlook.office365.com", "smtp.office365.us", "outlook.office365.us",
                        "smtp.partner.outlook.cn", "partner.outlook.cn")


def _token_refused(s: Session | None) -> tuple[str, str]:
    """XOAUTH2 refused: what failed is the token, i.e. the consent behind it, so the first thing to
    try is a new consent. A mailbox setting of Exchange Online is named only for Exchange Online."""
    auth = s.auth if s is not None else None
    mailbox = (getattr(auth, "username", "") or "the mailbox").replace("{", "{{").replace("}", "}}")
    if getattr(auth, "app_only", False):
        meaning = f"the server refused the app's OAuth token for {mailbox}"
        hint = ("the app may not send as this mailbox: grant admin consent for its permission (SMTP.SendAsApp), "
                "and give the app's service principal access to the mailbox in Exchange")
    else:
        meaning = f"the server refused the OAuth token for {mailbox}"
        hint = (f"re-authorize (Authorize on the server's page), signing in as {mailbox} or as someone allowed "
                "to send as it: the consent may have been withdrawn, or given for another account or without "
                "the scope this server wants")
    host = (s.settings.host.strip().lower().rstrip(".") if s is not None else "")
    if host in EXCHANGE_ONLINE_SMTP or host.endswith(tuple(f".{h}" for h in EXCHANGE_ONLINE_SMTP)):
        hint += ("; if it is refused again, SMTP AUTH must be enabled for the mailbox (Exchange admin center → "
                 "the mailbox → Email apps → Authenticated SMTP)")
    return meaning, hint


def _explain_timeout(name: str, exc: Exception, s: Session) -> StepFailed:
    t, host, port = s.deadline, s.settings.host.strip(), s.settings.port
    if name == "Resolve host":
        return StepFailed(f"the host name {host} could not be resolved within {t}",
                          "the name server did not answer in time: check the spelling of the "
                          "host name and this machine's DNS settings")
    if name == "Proxy":
        return StepFailed(f"no answer from the proxy within {t}",
                          "check the proxy's host, port and type; a firewall may be dropping the connection")
    if name == "Connect":
        return StepFailed(f"no answer within {t}: a firewall may be dropping the port",
                          f"check host and port {port}, and whether outgoing connections to "
                          f"port {port} are allowed from this machine")
    if name == "TLS":
        return StepFailed(f"no answer within {t}: the server accepted the connection but did not finish the "
                          "TLS handshake", _handshake_hint(s.settings))
    if name == "Greeting" and getattr(exc, "begun", False):
        return StepFailed(f"no answer within {t}: the server began its greeting but did not finish it",
                          "the server, or something in between (a firewall, a proxy), sends very slowly: try "
                          "again, or ask the mail administrator")
    if name == "Greeting":
        return StepFailed(f"no answer within {t}: the server accepted the connection but "
                          "sent no greeting", _implicit_tls_hint(s.settings))
    return StepFailed(f"no answer within {t} (the whole {'send' if s.outgoing else 'check'} "
                      f"may take at most {t})",
                      "the server is slow or the connection stalled: try again, or raise "
                      "the timeout")


def _handshake_hint(settings: SmtpSettings) -> str:
    if settings.security == Security.TLS:
        return (f"check that port {settings.port} expects TLS from the start (implicit TLS, usually 465); a "
                "firewall or TLS-inspecting proxy in between may be holding the connection")
    return ("the server said it was ready for TLS (STARTTLS) but did not go on: a firewall or TLS-inspecting "
            "proxy in between may be holding the connection; try again, or ask the mail administrator")


def _implicit_tls_hint(settings: SmtpSettings) -> str:
    if settings.security == Security.TLS:
        return "the server may be overloaded, or may not be a mail server: check host and port"
    chosen = SECURITY_LABELS[settings.security]
    if settings.port == 465:
        return f"port 465 expects implicit TLS, you chose {chosen}: choose SSL/TLS"
    return (f"the port may expect implicit TLS (like port 465) and wait for a TLS handshake; "
            f"you chose {chosen}: try SSL/TLS, or a firewall may be holding the connection")


def _explain_dns(name: str, exc: socket.gaierror, s: Session) -> StepFailed:
    host = s.settings.host.strip()
    if exc.errno == socket.EAI_AGAIN:
        return StepFailed(f"the host name {host} could not be resolved: the name server did "
                          "not answer", "check this machine's network and DNS settings, then retry")
    return StepFailed(f"the host name {host} could not be resolved",
                      "check the spelling of the host name")


def _explain_refused(name: str, exc: OSError, s: Session) -> StepFailed:
    return StepFailed(f"nothing listens on {s.endpoint} (connection refused)",
                      "check the port, and that the mail server is running")


def _explain_os_error(name: str, exc: OSError, s: Session) -> StepFailed:
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError,
                        ssl.SSLZeroReturnError)):
        if name in ("Greeting", "EHLO") and s.encrypted and getattr(s.tls_handshake, "requested", False):
            return _closed_after_certificate_request(s)
        during = "the TLS handshake" if name == "TLS" else name
        return StepFailed(f"the server closed the connection during {during}",
                          _implicit_tls_hint(s.settings) if name == "TLS" else
                          "the server may block this machine, or dislike what it was sent: "
                          "see the transcript")
    reason = exc.strerror or str(exc)
    return StepFailed(f"could not talk to {s.endpoint}: {reason}",
                      "check host and port, and this machine's network connection")


def _explain_disconnected(name: str, exc: SMTPServerDisconnected, s: Session) -> StepFailed:
    if name in ("Greeting", "EHLO") and s.encrypted and getattr(s.tls_handshake, "requested", False):
        return _closed_after_certificate_request(s)
    return StepFailed(f"the server closed the connection during {name}",
                      _implicit_tls_hint(s.settings) if name == "Greeting" else
                      "the server may limit connections or block this machine: "
                      "see the transcript")


def _explain_ssl(name: str, exc: ssl.SSLError, s: Session) -> StepFailed:
    reason = getattr(exc, "reason", None) or ""
    if reason in _PLAIN_TEXT_REASONS:
        if s.settings.security == Security.TLS:
            return StepFailed(f"the server answered in plain text: port {s.settings.port} "
                              "expects STARTTLS (or None), you chose SSL/TLS",
                              "choose STARTTLS, or use the server's SSL/TLS port (usually 465)")
        return StepFailed("the server did not answer in TLS after STARTTLS",
                          "the server's TLS setup may be broken: ask the mail administrator")
    if reason in _CLIENT_CERT_ALERTS:
        return _client_certificate_refused(reason, s)
    summary, hint = _SSL_REASONS.get(reason, (f"the TLS handshake failed: {reason or exc}",
                                               "ask the mail administrator to check TLS"))
    return StepFailed(summary, hint)


# TLS alerts a server sends about the client's certificate (RFC 8446 6.2), by OpenSSL's reason name.
_CLIENT_CERT_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "it requires a client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "it does not trust the certificate's issuer",
    "SSLV3_ALERT_BAD_CERTIFICATE": "it found the certificate bad",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "it does not support this kind of certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the certificate has expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the certificate was revoked",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "it could not accept the certificate",
    "TLSV1_ALERT_ACCESS_DENIED": "the certificate is not allowed access",
}


def _closed_after_certificate_request(s: Session) -> StepFailed:
    """No alert came, only the end of the connection, right after a handshake in which the server asked
    for a certificate: the likely reason, said as likely."""
    if s.config.client_cert is None:
        return StepFailed("the server closed the connection right after a TLS handshake in which it asked for a "
                          "client certificate, and none is configured: it most likely requires one",
                          "add the certificate and key under “Client certificate”", credentials=True)
    subject = s.config.client_cert.facts()["subject"]
    return StepFailed(f"the server closed the connection right after the TLS handshake in which it got the client "
                      f"certificate {subject}: it most likely refused it",
                      "ask the mail administrator which certificate authority the server trusts for client "
                      "certificates, and upload a certificate it issued (with its key)", credentials=True)


def _client_certificate_refused(reason: str, s: Session) -> StepFailed:
    why = _CLIENT_CERT_ALERTS[reason]
    cert = s.config.client_cert
    if cert is None:
        if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
            return StepFailed("the server requires a client certificate, and none is configured",
                              "add the certificate and key under “Client certificate”", credentials=True)
        return StepFailed(f"the server refused the TLS connection: {why}",
                          "the server may want a client certificate: add it under “Client certificate”")
    subject = cert.facts()["subject"]
    return StepFailed(f"the server refused the client certificate {subject}: {why}",
                      "ask the mail administrator which certificate authority the server trusts for client "
                      "certificates, and upload a certificate it issued (with its key)", credentials=True)


def _explain_known(name: str, exc: StepFailed, s: Session) -> StepFailed:
    return exc


def _explain_value(name: str, exc: ValueError, s: Session) -> StepFailed:
    return StepFailed(str(exc), "check the addresses in the settings and the message",
                      temporary=name != "Message")


def _explain_egress(name: str, exc: EgressRefused, s: Session) -> StepFailed:
    return StepFailed(str(exc), REFUSED_HINT, egress_details(exc))


def _explain_smtp(name: str, exc: SMTPException, s: Session) -> StepFailed:
    code = getattr(exc, "smtp_code", None)
    if code is not None:
        return explain_reply(name, Rejected(code, getattr(exc, "smtp_error", b"")))
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
    (EgressRefused, _explain_egress),
    (Rejected, explain_reply),
    (DeadlineExceeded, _explain_timeout),
    (TimeoutError, _explain_timeout),
    (socket.gaierror, _explain_dns),
    (ConnectionRefusedError, _explain_refused),
    (ssl.SSLEOFError, _explain_os_error),
    (ssl.SSLZeroReturnError, _explain_os_error),
    (ssl.SSLError, _explain_ssl),
    (SMTPServerDisconnected, _explain_disconnected),
    (SMTPException, _explain_smtp),
    (OSError, _explain_os_error),
    (ValueError, _explain_value),
]

# What the server or the network can raise (anything else is a bug): all explain() knows.
EXPECTED = tuple(kind for kind, _ in _EXPLAINERS)
