"""Sending mail, independent of Flask: typed settings in, reports and receipts out.

Each transport module offers the same two verbs:

    check(config: ServerConfig) -> Report           (Validate: no mail is sent)
    send(config: ServerConfig, message) -> Receipt  (raises DeliveryError)
"""
from importlib import import_module
from types import ModuleType

TRANSPORTS = {"smtp": "webapp.mail.smtp"}


def transport_for(protocol: str) -> ModuleType:
    return import_module(TRANSPORTS[protocol])
