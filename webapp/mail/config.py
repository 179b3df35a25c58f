"""The typed settings a transport needs. Built by the web layer from a MailServer row."""
from dataclasses import dataclass, field
from enum import StrEnum


class Security(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"
    AUTO = "auto"


SECURITY_LABELS = {
    Security.NONE: "None",
    Security.STARTTLS: "STARTTLS",
    Security.TLS: "SSL/TLS",
    Security.AUTO: "Automatic",
}

DEFAULT_PORTS = {
    Security.NONE: 25,
    Security.STARTTLS: 587,
    Security.TLS: 465,
    Security.AUTO: 587,
}


class AuthMechanism(StrEnum):
    AUTO = "auto"
    PLAIN = "PLAIN"
    LOGIN = "LOGIN"
    CRAM_MD5 = "CRAM-MD5"


@dataclass(frozen=True)
class Sender:
    address: str
    name: str = ""
    reply_to: str = ""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: Security = Security.STARTTLS
    verify_cert: bool = True
    ca_cert: str = ""  # PEM, trusted in addition to the system store
    timeout: float = 10.0  # seconds, for the whole check or send
    username: str = ""
    password: str = field(default="", repr=False)
    mechanism: AuthMechanism = AuthMechanism.AUTO
    local_hostname: str | None = None

    @property
    def authenticates(self) -> bool:
        return bool(self.username)


@dataclass(frozen=True)
class ServerConfig:
    protocol: str
    sender: Sender
    smtp: SmtpSettings | None = None
    label: str = ""  # what admins call this server, for messages
