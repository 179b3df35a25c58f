"""Exchange Web Services as the form and the registry know it: the settings, the choices and the
Exchange Online warning. Nothing here imports exchangelib; the sending code (ews.py) is imported
when an EWS server is first checked or used (transport.register's `implementation`)."""
import hashlib
from dataclasses import asdict, dataclass, fields
from typing import ClassVar
from urllib.parse import urlsplit

from .auth import AuthType
from .oauth import Flow, Provider
from .transport import register

AUTO = "auto"
# the form's choices: exchangelib's API version names (what RequestServerVersion says), newest first
VERSIONS = {
    AUTO: "Automatic (ask the server)",
    "Exchange2019": "Exchange Server 2019 / Subscription Edition",
    "Exchange2016": "Exchange Server 2016",
    "Exchange2013_SP1": "Exchange Server 2013 SP1",
    "Exchange2013": "Exchange Server 2013",
    "Exchange2010_SP2": "Exchange Server 2010 SP2 / SP3",
    "Exchange2010_SP1": "Exchange Server 2010 SP1",
    "Exchange2010": "Exchange Server 2010",
}
MECHANISMS = {"auto": "Automatic (Basic, or NTLM when the server asks)", "basic": "Basic", "ntlm": "NTLM"}
# Exchange Online's EWS hosts (global, GCC High, DoD, China): EWS is being switched off there. The government
# hosts: https://learn.microsoft.com/microsoft-365/enterprise/microsoft-365-u-s-government-gcc-high-endpoints and
# .../microsoft-365-u-s-government-dod-endpoints (DoD: outlook-dod.office365.us, webmail.apps.mil)
ONLINE_HOSTS = ("outlook.office365.com", "outlook.office.com", "outlook.office365.us", "outlook-dod.office365.us",
                "webmail.apps.mil", "partner.outlook.cn")
ONLINE_SUFFIXES = (".outlook.com",)
ONLINE_WARNING = ("this is Exchange Online: Microsoft has been blocking EWS there since October 2026 (it is "
                  "switched off by April 2027), so mail through this URL will stop")
GRAPH_HINT = ("for Exchange Online choose the protocol “Microsoft Graph” (sendMail); EWS in Mailroom is for "
              "Exchange Server on premises")
@dataclass(frozen=True)
class EwsSettings:
    LISTED = ("ews_url",)  # the keys the server list reads (for `address`), not the whole settings
    ews_url: str = ""  # https://host/EWS/Exchange.asmx
    ews_version: str = AUTO  # AUTO or a key of BUILDS
    mailbox: str = ""  # the mailbox to send from (app-only: the one impersonated); empty: the From address
    save_copy: bool = True  # SendAndSaveCopy (Sent Items) instead of SendOnly
    ews_ca_cert: str = ""  # PEM: the server's own CA, trusted besides the system's and EXTRA_CA_CERTS

    @classmethod
    def from_dict(cls, values: dict) -> "EwsSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})

    def to_dict(self) -> dict:
        return asdict(self)

    def destination(self) -> dict:
        ca = self.ews_ca_cert.strip()
        return {"protocol": "ews", "url": normal_url(self.ews_url),
                "ca_cert": hashlib.sha256(ca.encode()).hexdigest() if ca else ""}

    @property
    def address(self) -> str:
        return self.ews_url


def normal_url(url: str) -> str:
    parts = urlsplit((url or "").strip())
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path}{query}"


def is_exchange_online(url: str) -> bool:
    try:
        host = (urlsplit((url or "").strip()).hostname or "").rstrip(".").lower()
    except ValueError:  # not an address at all (the form says so)
        return False
    return host in ONLINE_HOSTS or host.endswith(ONLINE_SUFFIXES)


def online_warning(url: str) -> str:
    """What the form and the report say about an Exchange Online URL ("" for any other)."""
    if not is_exchange_online(url):
        return ""
    return f"{ONLINE_WARNING[:1].upper()}{ONLINE_WARNING[1:]}. Use Microsoft Graph for Exchange Online mailboxes."




@register
class Ews:
    protocol = "ews"
    label = "Exchange Web Services (EWS)"
    settings_type = EwsSettings
    auth_types = (AuthType.BASIC, AuthType.OAUTH)
    mechanisms = MECHANISMS
    oauth_flows = (Flow.DELEGATED, Flow.APP)
    oauth_providers = (Provider.MICROSOFT, Provider.OTHER)
    transcript_name = "EWS requests"
    implementation: ClassVar[str] = "webapp.mail.ews:EwsTransport"
