"""The Transport interface and the registry of transports by protocol.

A transport is a class with two verbs, both bounded by config.timeout as one deadline:

    check(config: ServerConfig) -> Report           Validate: nothing is sent
    send(config: ServerConfig, message) -> Receipt  raises DeliveryError

and what the web layer needs to offer it: `protocol` (the stored value), `label`,
`settings_type` (its typed settings), `auth_types` (the authentication it accepts) and
`mechanisms` (how it may send a password: {value: label}; empty when there is no choice) and
`oauth_flows` (the OAuth 2.0 flows it can use, when it accepts OAuth) and, optionally,
`oauth_providers` (the providers whose tokens its service accepts; all of them when absent).
A new protocol is a class decorated with @register; views and services find it here.
"""
from email.message import EmailMessage
from typing import ClassVar, Protocol

from .auth import AuthType
from .config import ServerConfig
from .report import Receipt, Report


class Transport(Protocol):
    protocol: ClassVar[str]
    label: ClassVar[str]
    settings_type: ClassVar[type]
    auth_types: ClassVar[tuple[AuthType, ...]]
    mechanisms: ClassVar[dict[str, str]]

    def check(self, config: ServerConfig) -> Report: ...

    def send(self, config: ServerConfig, message: EmailMessage) -> Receipt: ...


TRANSPORTS: dict[str, type[Transport]] = {}


def register(cls: type[Transport]) -> type[Transport]:
    TRANSPORTS[cls.protocol] = cls
    return cls


def unregister(protocol: str) -> None:
    TRANSPORTS.pop(protocol, None)


def transport_for(protocol: str) -> Transport:
    """KeyError for a protocol nobody registered."""
    return TRANSPORTS[protocol]()
