"""The forms. The protocols' own sections register themselves into the server form here."""
from . import ews, gmail, graph, options, smime, smtp_extras  # noqa: F401
