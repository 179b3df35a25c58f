"""Microsoft Graph as the registry and the form know it: the settings and what it accepts. Nothing
here imports the HTTP client; the sending code (graph.py, with requests, urllib3 and python-socks) is
imported when a Graph server is first checked or used (transport.register's `implementation`)."""
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from .auth import AuthType
from .oauth import CLOUDS, Cloud, Flow, Provider
from .transport import register

GLOBAL_ENDPOINT = CLOUDS[Cloud.GLOBAL][1]


@dataclass(frozen=True)
class GraphSettings:
    LISTED = ("graph_endpoint",)  # the keys the server list reads (for `address`), not the whole settings
    graph_endpoint: str = GLOBAL_ENDPOINT  # the Graph root of the Microsoft cloud
    shared_mailbox: str = ""  # send from this mailbox instead of the OAuth mailbox (Mail.Send.Shared / app-only)

    @classmethod
    def from_dict(cls, values: dict) -> "GraphSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})

    def to_dict(self) -> dict:
        return asdict(self)

    def destination(self) -> dict:
        return {"protocol": "graph", "endpoint": self.graph_endpoint.strip().rstrip("/").lower()}

    @property
    def address(self) -> str:
        return self.graph_endpoint


@register
class Graph:
    protocol = "graph"
    label = "Microsoft Graph"
    settings_type = GraphSettings
    auth_types = (AuthType.OAUTH,)
    mechanisms: dict = {}
    oauth_flows = (Flow.DELEGATED, Flow.APP)
    oauth_providers = (Provider.MICROSOFT, Provider.OTHER)
    implementation: ClassVar[str] = "webapp.mail.graph:GraphTransport"
