"""SMTP's own settings: where the server is and how to talk to it securely."""
import hashlib
from dataclasses import asdict, dataclass, fields
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


def default_port(security: str) -> int:
    """The one default-port rule: 587 (STARTTLS, Automatic), 465 (SSL/TLS), 25 (None)."""
    try:
        return DEFAULT_PORTS[Security(security)]
    except ValueError:
        return DEFAULT_PORTS[Security.STARTTLS]


class Mechanism(StrEnum):
    AUTO = "auto"
    PLAIN = "PLAIN"
    LOGIN = "LOGIN"
    CRAM_MD5 = "CRAM-MD5"
    NTLM = "NTLM"  # Microsoft's challenge-response (MS-SMTPNTLM), through pyspnego (smtp/ntlm.py)


MECHANISM_LABELS = {m: ("Automatic" if m is Mechanism.AUTO else m.value) for m in Mechanism}


@dataclass(frozen=True)
class SmtpSettings:
    LISTED = ("host", "port", "security")  # the keys the server list reads (for `address`), not the whole settings
    host: str
    port: int | None = None  # None: the default of the security
    security: Security = Security.STARTTLS
    verify_cert: bool = True
    ca_cert: str = ""  # PEM, trusted in addition to the system store
    local_hostname: str = ""  # the EHLO name; empty: this machine's name or its address
    plaintext_auth: bool = False  # may a password cross an unencrypted connection?

    def __post_init__(self):
        object.__setattr__(self, "security", Security(self.security))
        object.__setattr__(self, "port", int(self.port) if self.port else default_port(self.security))

    @classmethod
    def from_dict(cls, values: dict) -> "SmtpSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in asdict(self).items()}

    def destination(self) -> dict:
        return {"protocol": "smtp", "host": self.host.strip().lower(), "port": self.port,
                "security": str(self.security), "verify_cert": self.verify_cert,
                "ca_cert": hashlib.sha256(self.ca_cert.strip().encode()).hexdigest() if self.ca_cert.strip() else "",
                "plaintext_auth": self.plaintext_auth}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def encrypted(self) -> bool:
        """TLS is certain before any password is sent (Automatic may end up without)."""
        return self.security in (Security.STARTTLS, Security.TLS)
