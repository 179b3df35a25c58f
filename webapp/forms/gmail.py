"""The Gmail API section and the service-account key section of the server form."""
import json

from wtforms import FileField, StringField
from wtforms.validators import InputRequired, Length, ValidationError

from ..mail.auth import AuthType
from ..mail.gmail_protocol import ENDPOINT
from ..mail.oauth import GMAIL_SEND, check_service_account_key
from .server import Section, register_section
from .validators import email_address, https_url

MAX_KEY_BYTES = 20_000


class GmailSection(Section):
    name, store = "gmail", "settings"
    shown = staticmethod(lambda choices: choices.protocol == "gmail")
    gmail_endpoint = StringField("Gmail API endpoint", default=ENDPOINT, validators=[InputRequired(), Length(max=200),
                                                                               https_url],
                           description="Google's address for the Gmail API; change it only for a gateway of your own.")


def service_account_key(form, field) -> None:
    """The uploaded JSON key: checked, then kept as a dict (it is stored encrypted, never shown)."""
    upload = field.data
    if not upload or isinstance(upload, dict):
        return
    raw = upload.read(MAX_KEY_BYTES + 1) if hasattr(upload, "read") else b""
    if not raw:
        field.data = None
        return
    if len(raw) > MAX_KEY_BYTES:
        raise ValidationError("This file is too large to be a service-account key.")
    try:
        key = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValidationError("This is not a JSON key file: download the key as JSON from the service account's "
                              "Keys tab.") from None
    problem = check_service_account_key(key) if isinstance(key, dict) else "this is not a service-account key"
    if problem:
        raise ValidationError(problem[:1].upper() + problem[1:] + ".")
    field.data = key


class ServiceAccountSection(Section):
    name, store = "service_account", "credential"
    shown = staticmethod(lambda c: c.auth_type == AuthType.SERVICE_ACCOUNT and c.allows(AuthType.SERVICE_ACCOUNT))
    template = "servers/_service_account.html"
    secret = frozenset({"key"})
    username = StringField("Mailbox to send as", validators=[InputRequired(), email_address, Length(max=320)],
                           description="A Google Workspace mailbox the service account may act for (domain-wide "
                                       "delegation).")
    key = FileField("Service-account key (JSON)", validators=[service_account_key],
                    description="The key file from Google Cloud (IAM → Service accounts → Keys → Add key → JSON).")
    scope = StringField("Scope", default=GMAIL_SEND, validators=[InputRequired(), Length(max=1000)],
                        description="Allow this scope for the service account's client ID in the Workspace admin "
                                    "console (Security → API controls → Domain-wide delegation). With "
                                    "gmail.settings.basic and gmail.metadata besides (space-separated, allowed there "
                                    "too), Mailroom can check which From Gmail uses.")


register_section(GmailSection, "connection")
register_section(ServiceAccountSection, "credentials")
