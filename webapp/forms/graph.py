"""The Microsoft Graph section of the server form (registered into the connection part)."""
from wtforms import EmailField, StringField
from wtforms.validators import InputRequired, Length, Optional

from ..mail.graph_protocol import GLOBAL_ENDPOINT
from .server import Section, register_section
from .validators import email_address, https_url


class GraphSection(Section):
    name, store = "graph", "settings"
    shown = staticmethod(lambda choices: choices.protocol == "graph")
    template = "servers/_graph.html"
    graph_endpoint = StringField("Graph endpoint", default=GLOBAL_ENDPOINT,
                           validators=[InputRequired(), Length(max=200), https_url],
                           description="With provider Microsoft 365, filled in from the cloud chosen under "
                                       "Authentication; with another provider, the Graph address its tokens "
                                       "are for.")
    shared_mailbox = EmailField("Send as (shared mailbox)", validators=[Optional(), email_address, Length(max=320)],
                                description="Empty: mail goes out from the OAuth mailbox. A shared mailbox needs "
                                            "the scope Mail.Send.Shared and “Send As” on it (delegated), or "
                                            "app-only access. Graph keeps a copy of every mail in its Sent Items.")


register_section(GraphSection, "connection", "endpoints")  # "endpoints": its endpoint follows the cloud
