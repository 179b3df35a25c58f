"""Sending mail, independent of Flask: typed settings in, reports and receipts out.

See transport.py for the interface every protocol implements, and the registry. The
protocols register in the order the form offers them.
"""
from . import smtp  # noqa: F401,I001  (SMTP/SMTPS first)
from . import ews_protocol  # noqa: F401  (EWS's sending code, ews.py, is imported on first use)
from . import graph_protocol  # noqa: F401  (Graph's and Gmail's sending code, graph.py and gmail.py with the
from . import gmail_protocol  # noqa: F401  HTTP client, are imported on first use)
from .transport import TRANSPORTS, Transport, register, transport_for, unregister

__all__ = ["TRANSPORTS", "Transport", "register", "transport_for", "unregister"]
