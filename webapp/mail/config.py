"""The typed settings a transport needs, built by the web layer from a server and its credential.

Each protocol has its own settings type (smtp.SmtpSettings, ...); what every protocol
shares is here: who the mail is from, how long a check or send may take, how to sign
in, and the network the connection must go through (with the server's proxy, if any:
`network.proxy`).
"""
from dataclasses import dataclass, field
from typing import Any, Protocol

from .auth import Auth, NoAuth


@dataclass(frozen=True)
class Sender:
    address: str
    name: str = ""
    reply_to: str = ""


class Settings(Protocol):
    """A protocol's own settings: made from and stored as a plain dict."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Settings": ...

    def to_dict(self) -> dict[str, Any]: ...

    def destination(self) -> dict[str, Any]:
        """Where a secret saved with these settings may be sent: host, port, security, URLs.
        A stored secret is used only while this stays the same."""
        ...

    @property
    def address(self) -> str:
        """host:port or the endpoint, for lists and messages."""
        ...


@dataclass(frozen=True)
class ServerConfig:
    protocol: str
    sender: Sender
    settings: Any  # the protocol's Settings
    network: Any  # egress.Network: every connection is resolved and checked there
    auth: Auth = field(default_factory=NoAuth)
    timeout: float = 10.0  # seconds for the whole check or send, token included
    label: str = ""  # what admins call this server, for messages
    receiver: Any = None  # SMTP: a receiver.Receiver to log in to before each session (POP-before-SMTP)
    options: Any = None  # options.MessageOptions written into every message it sends; None: none
    smime: Any = None  # a smime.Smime: every message sent is signed/encrypted as the last step before handing it over
    client_cert: Any = None  # SMTP: a client_cert.ClientCertificate presented in the TLS handshake
    transcripts: Any = None  # SMTP: a transcripts.TranscriptLog that keeps each conversation
