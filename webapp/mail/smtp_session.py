"""One SMTP conversation: the state its steps share, and how a step ends — with a
Step (step_result), or by raising StepFailed or Rejected."""
from dataclasses import dataclass, field

from .config import ServerConfig, SmtpSettings
from .deadline import Deadline
from .report import Outcome, Report, Step
from .smtp_client import Client, one_line


@dataclass
class Outgoing:
    """What send() transmits: envelope plus the message bytes without Bcc."""
    recipients: list[str]
    payload: bytes
    message_id: str
    needs_utf8: bool
    reply: str = ""


@dataclass
class Session:
    config: ServerConfig
    settings: SmtpSettings
    deadline: Deadline
    report: Report = field(default_factory=Report)
    addresses: list[tuple] = field(default_factory=list)  # (family, sockaddr)
    peer: tuple | None = None  # the (family, sockaddr) we connected to
    client: Client | None = None
    encrypted: bool = False
    outgoing: Outgoing | None = None

    @classmethod
    def start(cls, config: ServerConfig) -> "Session":
        if config.smtp is None:
            raise ValueError("this server configuration has no SMTP settings")
        return cls(config=config, settings=config.smtp, deadline=Deadline(config.smtp.timeout))

    @property
    def endpoint(self) -> str:
        """The address we connected to ("[::1]:587"), or host:port as configured before that."""
        if self.peer is None:
            return f"{self.settings.host.strip()}:{self.settings.port}"
        host, port = self.peer[1][0], self.peer[1][1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def step_result(summary: str, details=(), outcome: Outcome = Outcome.PASSED,
                hint: str = "") -> Step:
    """A step's Step; the caller that ran the step fills in its name and elapsed time."""
    return Step(name="", outcome=outcome, summary=summary, details=list(details), hint=hint)


class StepFailed(Exception):
    """A step failed for a reason already put in words."""

    def __init__(self, summary: str, hint: str = "", details: list | None = None):
        super().__init__(summary)
        self.summary, self.hint, self.details = summary, hint, details or []


class Rejected(Exception):
    """The server answered with an unexpected reply code."""

    def __init__(self, code: int, text: bytes | str, subject: str = ""):
        super().__init__(code)
        self.code = code
        self.text = one_line(text)
        self.subject = subject  # the address or mechanism concerned, for the explanation
