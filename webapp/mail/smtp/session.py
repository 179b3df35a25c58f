"""One SMTP conversation: the state its steps share, and how a step ends — with a
Step (step_result), or by raising StepFailed or Rejected."""
from dataclasses import dataclass, field

from ..attempt import Attempt
from ..auth import Auth
from ..config import ServerConfig
from ..deadline import Deadline
from ..redact import Redactor
from ..report import RecipientOutcome, Report
from .client import Client, one_line
from .settings import SmtpSettings


@dataclass
class Outgoing:
    """What send() transmits: envelope plus the message bytes without Bcc."""
    mail_from: str
    recipients: list[str]
    payload: bytes
    message_id: str
    needs_utf8: bool
    reply: str = ""
    outcomes: list[RecipientOutcome] = field(default_factory=list)  # each recipient's answer to RCPT TO


@dataclass
class Session:
    config: ServerConfig
    settings: SmtpSettings
    deadline: Deadline
    report: Report = field(default_factory=lambda: Report(transcript_name="SMTP conversation"))
    addresses: list[tuple] = field(default_factory=list)  # (family, sockaddr), checked by the egress policy
    peer: tuple | None = None  # the (family, sockaddr) we connected to
    client: Client | None = None
    encrypted: bool = False
    outgoing: Outgoing | None = None
    redactor: Redactor = field(default_factory=Redactor)  # the secrets no report may show
    token: str = field(default="", repr=False)  # the OAuth access token, once obtained
    attempt: Attempt | None = None  # runs the steps (set by start)
    tls_handshake: object = None  # client_cert.Handshake of the last TLS handshake (None: cannot tell)

    @classmethod
    def start(cls, config: ServerConfig, redactor: Redactor | None = None) -> "Session":
        """`redactor`: that of the session sending the previous message over the same connection,
        which already knows this configuration's secrets and the token."""
        if not isinstance(config.settings, SmtpSettings):
            raise TypeError("this server configuration has no SMTP settings")
        from .failures import EXPECTED, explain

        if redactor is None:
            password = getattr(config.auth, "password", "")
            others = [getattr(config.network.proxy, "password", ""), getattr(config.receiver, "password", "")]
            redactor = Redactor([password, *(other for other in others if other)])
        session = cls(config=config, settings=config.settings, deadline=Deadline(config.timeout), redactor=redactor)
        session.attempt = Attempt(session.report, session.redactor,
                                  lambda name, error: explain(name, error, session) if isinstance(error, EXPECTED)
                                  else None)
        return session

    def resume(self, previous: "Session") -> None:
        """Take over the connection of a session that sent the previous message: the
        client now keeps to this session's deadline and writes into this report."""
        self.addresses, self.peer, self.client = previous.addresses, previous.peer, previous.client
        self.encrypted, self.token = previous.encrypted, previous.token
        if self.token:
            self.redactor.add(self.token)
        self.client.rebind(self.deadline, self.report.transcript, self.redactor)

    @property
    def auth(self) -> Auth:
        return self.config.auth

    @property
    def endpoint(self) -> str:
        """The address we connected to ("[::1]:587"), or host:port as configured before that."""
        if self.peer is None:
            return f"{self.settings.host.strip()}:{self.settings.port}"
        host, port = self.peer[1][0], self.peer[1][1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Rejected(Exception):
    """The server answered with an unexpected reply code."""

    def __init__(self, code: int, text: bytes | str, subject: str = ""):
        super().__init__(code)
        self.code = code
        self.text = one_line(text)
        self.subject = subject  # the address or mechanism concerned, for the explanation
