"""Mail receiver login before sending (POP-before-SMTP, eG's "mail receiver settings").

Some SMTP servers take mail only from a machine that has just logged in to receive mail there
(a POP3 or IMAP login opens the SMTP server to that address for a while). `login()` does that
login: it connects through the server's network (the egress policy, and the proxy when one is
set: mail/proxy.py), starts TLS (implicit, STARTTLS, or none), logs in with poplib or imaplib,
and says goodbye (QUIT, LOGOUT) without reading any mail. The SMTP transport runs it as the
step "Mail receiver login" before each SMTP session it opens (smtp/transport.py).

Time: everything runs under the caller's deadline (each operation gets the time left, and a
watchdog shuts the connection down when it is over, over TLS too, so a server that trickles its
answers a byte at a time cannot outlast it; what that cuts short is "no answer within …"). What
is read is bounded by poplib's and imaplib's line limits; the server's words are shown at most
REPLY_SHOWN characters long.
"""
import imaplib
import poplib
import socket
import ssl
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum

from . import proxy
from .deadline import Deadline, DeadlineExceeded, Watchdog
from .egress import REFUSED_HINT, EgressRefused, Network, egress_details
from .report import Step, StepFailed, step_result
from .tls import handshake_result, tls_context

REPLY_SHOWN = 200
ANSWER_LIMIT = 256 * 1024  # a multi-line POP3 answer or an IMAP literal (arrival.py reads headers only)


class ReceiverProtocol(StrEnum):
    NONE = "none"
    POP3 = "pop3"
    IMAP = "imap"


class ReceiverSecurity(StrEnum):
    TLS = "tls"
    STARTTLS = "starttls"
    NONE = "none"


PROTOCOL_LABELS = {ReceiverProtocol.NONE: "No", ReceiverProtocol.POP3: "POP3", ReceiverProtocol.IMAP: "IMAP"}
SECURITY_LABELS = {ReceiverSecurity.TLS: "SSL/TLS (implicit)", ReceiverSecurity.STARTTLS: "STARTTLS (explicit)",
                   ReceiverSecurity.NONE: "None (the password crosses the network unencrypted)"}
DEFAULT_PORTS = {(ReceiverProtocol.POP3, True): 995, (ReceiverProtocol.POP3, False): 110,
                 (ReceiverProtocol.IMAP, True): 993, (ReceiverProtocol.IMAP, False): 143}


def default_port(protocol: str, security: str) -> int:
    try:
        kind = ReceiverProtocol(protocol)
    except ValueError:
        kind = ReceiverProtocol.POP3
    return DEFAULT_PORTS.get((kind, security == ReceiverSecurity.TLS), 995)


@dataclass(frozen=True)
class ReceiverSettings:
    """Where and how to log in before sending (the password is sealed apart)."""
    protocol: ReceiverProtocol = ReceiverProtocol.NONE
    host: str = ""
    port: int | None = None  # None: the protocol's and security's default
    security: ReceiverSecurity = ReceiverSecurity.TLS
    username: str = ""
    verify_cert: bool = True

    def __post_init__(self):
        object.__setattr__(self, "protocol", ReceiverProtocol(self.protocol or ReceiverProtocol.NONE))
        object.__setattr__(self, "security", ReceiverSecurity(self.security or ReceiverSecurity.TLS))
        object.__setattr__(self, "port", int(self.port) if self.port else default_port(self.protocol, self.security))

    @classmethod
    def from_dict(cls, values: dict | None) -> "ReceiverSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in known})

    def to_dict(self) -> dict:
        if not self.enabled:
            return {}
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in asdict(self).items()}

    def destination(self) -> dict:
        """Where the receiver's password may go: a stored one serves only while this stays the same."""
        return {"protocol": str(self.protocol), "host": self.host.strip().lower().rstrip("."), "port": self.port,
                "security": str(self.security), "verify_cert": self.verify_cert}

    @property
    def enabled(self) -> bool:
        return self.protocol != ReceiverProtocol.NONE

    @property
    def address(self) -> str:
        return f"{self.host.strip()}:{self.port}"


@dataclass(frozen=True)
class Receiver:
    """The login as the SMTP transport runs it: its settings, its password, and the CA certificate
    (PEM) trusted besides the system's (the SMTP server's own, from the same organisation)."""
    settings: ReceiverSettings
    password: str = field(default="", repr=False)
    ca_pem: str = ""


def login(receiver: Receiver, network: Network, deadline: Deadline,
          then: Callable[["_Pop3 | _Imap", Deadline], None] | None = None) -> Step:
    """Log in and out again; the Step says how, or StepFailed says why not, in words. `then`, if
    given, is run on the logged-in client before the goodbye (mail/arrival.py reads a mail there)."""
    settings = receiver.settings
    host, port = settings.host.strip(), settings.port
    if not host:
        raise StepFailed("no mail receiver server is configured", "enter the server for receiving mails")
    try:
        connection = proxy.connect(network, host, port, deadline)
    except EgressRefused as refused:
        raise StepFailed(str(refused), REFUSED_HINT, egress_details(refused)) from None
    except ConnectionRefusedError:
        raise StepFailed(f"nothing listens on the mail receiver {settings.address} (connection refused)",
                         _port_hint(settings)) from None
    except (DeadlineExceeded, TimeoutError):
        raise _too_slow(settings, deadline) from None
    except socket.gaierror:
        raise StepFailed(f"the mail receiver's host name {host} could not be resolved",
                         "check the spelling of the server for receiving mails") from None
    except OSError as error:
        raise StepFailed(f"could not connect to the mail receiver {settings.address}: {error.strerror or error}",
                         _port_hint(settings)) from None
    watchdog = Watchdog(connection.sock, deadline)  # TLS or not: it shuts the connection itself down
    try:
        with _cut_short(watchdog):
            step = _session(receiver, network, connection, deadline, then)
        if watchdog.fired:  # a reply cut short by it may have looked whole ("+OK" and the end of the stream)
            raise DeadlineExceeded("no answer in time")
        return step
    except StepFailed:
        raise
    except (DeadlineExceeded, TimeoutError):
        raise _too_slow(settings, deadline) from None
    except ssl.SSLCertVerificationError as error:
        raise StepFailed(f"the mail receiver's certificate could not be verified: {error.verify_message}",
                         "add its CA certificate under “CA certificate” (the SMTP server's), or ask for a "
                         "certificate for this name") from None
    except ssl.SSLError as error:
        raise _tls_failure(settings, error) from None
    except (poplib.error_proto, imaplib.IMAP4.error) as error:
        raise _refusal(settings, error) from None
    except (EOFError, OSError) as error:
        raise StepFailed(f"the mail receiver {settings.address} closed the connection",
                         _port_hint(settings)) from None
    finally:
        watchdog.cancel()
        connection.sock.close()


@contextmanager
def _cut_short(watchdog: Watchdog):
    """What the watchdog's shutdown makes of a conversation (a failed TLS handshake, poplib's "-ERR EOF",
    imaplib's "socket error: EOF", a broken pipe) is DeadlineExceeded, never the server's refusal."""
    try:
        yield
    except (OSError, EOFError, poplib.error_proto, imaplib.IMAP4.error):
        if watchdog.fired:
            raise DeadlineExceeded("no answer in time") from None
        raise


def _session(receiver: Receiver, network: Network, connection: proxy.Connection, deadline: Deadline,
             then=None) -> Step:
    settings = receiver.settings
    context = tls_context(settings.verify_cert, receiver.ca_pem, network.extra_ca_pem)
    sock = connection.sock
    details: list[tuple[str, str]] = [("Server", f"{PROTOCOL_LABELS[settings.protocol]} at {connection.target}")]
    if connection.proxy is not None:
        details.append(("Through", connection.proxy.settings.label))
    tls: list[tuple[str, str]] | None = None  # the handshake's facts, read before the goodbye closes it
    if settings.security == ReceiverSecurity.TLS:
        sock.settimeout(deadline.left())
        sock = context.wrap_socket(sock, server_hostname=settings.host.strip())
        tls = _tls_facts(sock, settings)
    sock.settimeout(deadline.left())
    if settings.protocol == ReceiverProtocol.POP3:
        client = _Pop3(sock, settings.host.strip(), settings.port)
        details.append(("Greeting", _shown(client.getwelcome())))
        if settings.security == ReceiverSecurity.STARTTLS:
            sock.settimeout(deadline.left())
            _pop3_stls(client, settings, context)
            tls = _tls_facts(client.sock, settings)
        client.sock.settimeout(deadline.left())
        client.user(settings.username)
        client.sock.settimeout(deadline.left())
        reply = client.pass_(receiver.password)
        details.append(("Reply", _shown(reply)))
        if then is not None:
            then(client, deadline)
        _goodbye(client.quit)
    else:
        client = _Imap(sock, settings.host.strip(), settings.port)
        details.append(("Greeting", _shown(client.welcome)))
        if settings.security == ReceiverSecurity.STARTTLS:
            if "STARTTLS" not in client.capabilities:
                raise StepFailed("the IMAP server does not offer STARTTLS",
                                 "choose SSL/TLS (usually port 993), or None only on a trusted network")
            client.sock.settimeout(deadline.left())
            client.starttls(context)
            tls = _tls_facts(client.sock, settings)
        if "LOGINDISABLED" in client.capabilities:
            raise StepFailed("the IMAP server does not accept a login here (LOGINDISABLED): it wants TLS first",
                             "choose SSL/TLS or STARTTLS")
        client.sock.settimeout(deadline.left())
        try:
            kind, data = client.login(settings.username, receiver.password)
        except UnicodeEncodeError:
            raise StepFailed("IMAP's LOGIN takes a login and password in ASCII only",
                             "use an ASCII password for the mail receiver, or POP3") from None
        details.append(("Reply", _shown(f"{kind} {b' '.join(data).decode('utf-8', 'replace')}")))
        if then is not None:
            then(client, deadline)
        _goodbye(client.logout)
    details += tls or []
    return step_result(f"logged in to the {PROTOCOL_LABELS[settings.protocol]} server {connection.target} as "
                       f"{settings.username}" + (" over TLS" if tls is not None else ", unencrypted"), details)


def _tls_facts(sock: ssl.SSLSocket, settings: ReceiverSettings) -> list[tuple[str, str]]:
    return [(name, value) for name, value in handshake_result(sock, settings.verify_cert).details
            if name in ("TLS version", "Certificate subject", "Expires", "Verification")]


class _Pop3(poplib.POP3):
    """poplib on the socket Mailroom connected (through the egress policy and the proxy); a
    multi-line answer (TOP) is read up to ANSWER_LIMIT bytes."""

    def __init__(self, sock: socket.socket, host: str, port: int):
        self._given = sock
        super().__init__(host, port)

    def _create_socket(self, timeout):
        return self._given

    def _getlongresp(self):
        resp, lines, octets = self._getresp(), [], 0
        line, o = self._getline()
        while line != b'.':
            if line.startswith(b'..'):
                o, line = o - 1, line[1:]
            octets += o
            if octets > ANSWER_LIMIT:
                raise poplib.error_proto(f"-ERR an answer longer than {ANSWER_LIMIT // 1024} KB")
            lines.append(line)
            line, o = self._getline()
        return resp, lines, octets


class _Imap(imaplib.IMAP4):
    """imaplib on the socket Mailroom connected (through the egress policy and the proxy); a
    literal (a FETCH's data) is read up to ANSWER_LIMIT bytes."""

    def __init__(self, sock: socket.socket, host: str, port: int):
        self._given = sock
        super().__init__(host, port)

    def _create_socket(self, timeout):
        return self._given

    def read(self, size):
        if size > ANSWER_LIMIT:
            raise self.error(f"a literal of {size} bytes, more than {ANSWER_LIMIT // 1024} KB")
        return super().read(size)


def _pop3_stls(client: _Pop3, settings: ReceiverSettings, context: ssl.SSLContext) -> None:
    try:
        client.stls(context)
    except poplib.error_proto as error:
        raise StepFailed(f"the POP3 server does not start TLS (STLS): {_shown(error)}",
                         "choose SSL/TLS (usually port 995), or None only on a trusted network") from None


def _goodbye(say) -> None:
    """QUIT / LOGOUT is politeness: the login already counted."""
    try:
        say()
    except (OSError, EOFError, poplib.error_proto, imaplib.IMAP4.error, DeadlineExceeded):
        pass


def _shown(reply) -> str:
    if isinstance(reply, Exception):
        reply = reply.args[0] if reply.args else ""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    text = " ".join(text.split())
    return text if len(text) <= REPLY_SHOWN else text[:REPLY_SHOWN] + "…"


def _refusal(settings: ReceiverSettings, error: Exception) -> StepFailed:
    said = _shown(error)
    upper = said.upper()
    where = f"the mail receiver {settings.address}"
    if "[AUTH]" in upper or "AUTHENTICATIONFAILED" in upper or "AUTHENTICATION FAILED" in upper \
            or "LOGIN FAILED" in upper or "INVALID" in upper and "PASS" in upper:
        if "PLAINTEXT" in upper or "PRIVACYREQUIRED" in upper:
            return StepFailed(f"{where} takes a password only over TLS: “{said}”", "choose SSL/TLS or STARTTLS")
        return StepFailed(f"{where} rejected the login or password: “{said}”",
                          "check the mail receiver ID and password (often the mailbox's own login)",
                          credentials=True)
    if "PRIVACYREQUIRED" in upper or "PLAINTEXT" in upper:
        return StepFailed(f"{where} takes a password only over TLS: “{said}”", "choose SSL/TLS or STARTTLS")
    if "[SYS/TEMP]" in upper or "UNAVAILABLE" in upper or "[IN-USE]" in upper:
        return StepFailed(f"{where} cannot log in right now: “{said}”", "try again later")
    if "LINE TOO LONG" in upper:
        return StepFailed(f"{where} sent a line longer than {settings.protocol.upper()} allows",
                          "check host and port: this may be another kind of server")
    if not said.startswith(("-ERR", "NO", "BAD", "[")) and settings.protocol == ReceiverProtocol.POP3 \
            and not said.startswith("+OK"):
        return StepFailed(f"{where} does not speak POP3: “{said}”", _port_hint(settings))
    return StepFailed(f"{where} refused the login: “{said}”",
                      "check the mail receiver ID and password, and the protocol", credentials="-ERR" in said)


def _tls_failure(settings: ReceiverSettings, error: ssl.SSLError) -> StepFailed:
    reason = getattr(error, "reason", None) or ""
    if reason in ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return StepFailed(f"the mail receiver {settings.address} answered in plain text: this port expects STARTTLS "
                          "or None, you chose SSL/TLS", _port_hint(settings))
    return StepFailed(f"the TLS handshake with the mail receiver {settings.address} failed ({reason or error})",
                      "ask the mail administrator to check TLS on the receiving server")


def _too_slow(settings: ReceiverSettings, deadline: Deadline) -> StepFailed:
    return StepFailed(f"no answer from the mail receiver {settings.address} within {deadline}",
                      f"check the server and port ({_usual(settings)}); the port may expect implicit TLS, or a "
                      "firewall may drop it")


def _usual(settings: ReceiverSettings) -> str:
    return "POP3: 995 with SSL/TLS, 110 otherwise" if settings.protocol == ReceiverProtocol.POP3 else \
        "IMAP: 993 with SSL/TLS, 143 otherwise"


def _port_hint(settings: ReceiverSettings) -> str:
    return f"check the server and port for receiving mails ({_usual(settings)}) and the security"
