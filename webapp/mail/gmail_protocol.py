"""The Gmail API as the registry and the form know it: the settings and what it accepts. Nothing here
imports the HTTP client; the sending code (gmail.py, with requests, urllib3 and python-socks) is
imported when a Gmail server is first checked or used (transport.register's `implementation`)."""
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from .auth import AuthType
from .oauth import Flow, Provider
from .transport import register

ENDPOINT = "https://gmail.googleapis.com"


@dataclass(frozen=True)
class GmailSettings:
    LISTED = ("gmail_endpoint",)  # the keys the server list reads (for `address`), not the whole settings
    gmail_endpoint: str = ENDPOINT

    @classmethod
    def from_dict(cls, values: dict) -> "GmailSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v})

    def to_dict(self) -> dict:
        return asdict(self)

    def destination(self) -> dict:
        return {"protocol": "gmail", "endpoint": self.gmail_endpoint.strip().rstrip("/").lower()}

    @property
    def address(self) -> str:
        return self.gmail_endpoint


@register
class Gmail:
    protocol = "gmail"
    label = "Gmail API"
    settings_type = GmailSettings
    auth_types = (AuthType.SERVICE_ACCOUNT, AuthType.OAUTH)
    mechanisms: dict = {}
    oauth_flows = (Flow.DELEGATED,)
    oauth_providers = (Provider.GOOGLE, Provider.OTHER)
    implementation: ClassVar[str] = "webapp.mail.gmail:GmailTransport"
