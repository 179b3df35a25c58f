"""The Transport interface and the registry of transports by protocol.

A transport is a class with two verbs, both bounded by config.timeout as one deadline:

    check(config: ServerConfig) -> Report                Validate: nothing is sent
    send(config: ServerConfig, envelope) -> Receipt      raises DeliveryError

(`envelope`: a mail.envelope.Envelope, the message as stored: the same bytes on every attempt),
and optionally `open(config) -> Connection` for several messages over one connection (each
send under its own deadline); open_connection() gives a one-message-at-a-time Connection for
transports without it. Each step runs through mail.attempt.Attempt.

and what the web layer needs to offer it: `protocol` (the stored value), `label`,
`settings_type` (its typed settings), `auth_types` (the authentication it accepts) and
`mechanisms` (how it may send a password: {value: label}; empty when there is no choice) and
`oauth_flows` (the OAuth 2.0 flows it can use, when it accepts OAuth) and, optionally,
`oauth_providers` (the providers whose tokens its service accepts; all of them when absent).
A new protocol is a class decorated with @register; views and services find it here.

Every message leaves through send_message() or open_connection(): the one place where the
message is made what this server sends, its message options (mail/options.py) written into its
head (outgoing()); a transport reads `config.options` for what its protocol carries apart from
the headers (SMTP's DSN parameters, EWS's item fields).

A registered class may name its sending code instead of having it: `implementation =
"package.module:Class"` (a subclass with check and send). That module, and the libraries it needs
(exchangelib for EWS), is imported when a server of the protocol is first checked or used, not
when the app starts: the form and the lists need only the registered class.
"""
from functools import cache
from importlib import import_module
from typing import ClassVar, Protocol

from .auth import AuthType
from .config import ServerConfig
from .envelope import Envelope
from .options import MessageOptions, apply
from .report import Receipt, Report


class Transport(Protocol):
    protocol: ClassVar[str]
    label: ClassVar[str]
    settings_type: ClassVar[type]
    auth_types: ClassVar[tuple[AuthType, ...]]
    mechanisms: ClassVar[dict[str, str]]

    def check(self, config: ServerConfig) -> Report: ...

    def send(self, config: ServerConfig, envelope: Envelope) -> Receipt: ...


class Connection(Protocol):
    """Messages to one server, one after the other, over one connection where the protocol allows."""

    def send(self, envelope: Envelope) -> Receipt: ...

    def close(self) -> None: ...


TRANSPORTS: dict[str, type[Transport]] = {}


def register(cls: type[Transport]) -> type[Transport]:
    TRANSPORTS[cls.protocol] = cls
    return cls


def unregister(protocol: str) -> None:
    TRANSPORTS.pop(protocol, None)


def transport_for(protocol: str) -> Transport:
    """KeyError for a protocol nobody registered."""
    registered = TRANSPORTS[protocol]
    path = getattr(registered, "implementation", None)
    return (_implementation(path) if path else registered)()


@cache
def _implementation(path: str) -> type[Transport]:
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)


def outgoing(config: ServerConfig, envelope: Envelope) -> Envelope:
    """The message as this server sends it: the stored one with the server's message options applied."""
    options = config.options or MessageOptions()
    raw = apply(envelope.raw, options)
    return envelope if raw is envelope.raw else Envelope(mail_from=envelope.mail_from, recipients=envelope.recipients,
                                                         raw=raw, message_id=envelope.message_id)


def send_message(config: ServerConfig, envelope: Envelope) -> Receipt:
    """One message through the server of `config` (KeyError for an unknown protocol)."""
    return transport_for(config.protocol).send(config, outgoing(config, envelope))


class _WithOptions:
    """A Connection that sends each message as its server sends it (outgoing())."""

    def __init__(self, connection: Connection, config: ServerConfig):
        self.connection, self.config = connection, config

    def send(self, envelope: Envelope) -> Receipt:
        return self.connection.send(outgoing(self.config, envelope))

    def close(self) -> None:
        self.connection.close()


class _OneAtATime:
    """A Connection for a transport without open(): every message is a conversation of its own."""

    def __init__(self, transport: Transport, config: ServerConfig):
        self.transport, self.config = transport, config

    def send(self, envelope: Envelope) -> Receipt:
        return self.transport.send(self.config, envelope)

    def close(self) -> None:
        pass


def open_connection(config: ServerConfig) -> Connection:
    """A Connection to the server of `config` (KeyError for an unknown protocol). Close it when done."""
    transport = transport_for(config.protocol)
    opener = getattr(transport, "open", None)
    return _WithOptions(opener(config) if opener is not None else _OneAtATime(transport, config), config)
