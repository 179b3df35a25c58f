"""Sending mail, independent of Flask: typed settings in, reports and receipts out.

Each transport module offers the same two verbs:

    check(config: ServerConfig) -> Report        (Validate: no mail is sent)
    send(config: ServerConfig, message) -> Receipt  (raises DeliveryError)
"""
from types import ModuleType

from . import smtp

TRANSPORTS: dict[str, ModuleType] = {"smtp": smtp}


def transport_for(protocol: str) -> ModuleType:
    return TRANSPORTS[protocol]
