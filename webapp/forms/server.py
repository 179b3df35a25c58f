"""The server form: small sections that appear by protocol, security and authentication.

Each section is a form class and the one place for its fields: label, default, help
text, and (as class attributes) where its values are stored, which are secret and which
are not stored at all. The History page's labels come from here too (fields.py).

A section is shown when its `shown(choices)` is true for the protocol, security and
authentication posted (or saved). A hidden section is neither validated nor saved; the
non-secret values typed into it ride along as hidden inputs, so showing it again
restores them. PARTIALS says which sections each swappable part of the page holds: a
swap builds only those.
"""
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from typing import Callable, ClassVar

from werkzeug.datastructures import MultiDict
from wtforms import (BooleanField, EmailField, IntegerField, PasswordField, SelectChoice, SelectField, StringField,
                     TextAreaField)
from wtforms.validators import EqualTo, InputRequired, Length, NumberRange, Optional, ValidationError

from ..credentials import CredentialValues, SidePassword, kind_for
from ..mail import oauth
from ..mail.auth import AUTH_LABELS, AuthType
from ..mail.oauth import CLOUD_LABELS, FLOW_LABELS, PROVIDER_LABELS, Cloud, Flow, Provider
from ..mail.proxy import KIND_LABELS as PROXY_LABELS, ProxyKind, ProxySettings
from ..mail.proxy import default_port as proxy_default_port
from ..mail.receiver import (PROTOCOL_LABELS as RECEIVER_LABELS, SECURITY_LABELS as RECEIVER_SECURITY_LABELS,
                             ReceiverProtocol, ReceiverSecurity, ReceiverSettings)
from ..mail.receiver import default_port as receiver_default_port
from ..mail.smtp import Security, default_port
from ..models import SecretPurpose
from ..mail.transport import TRANSPORTS
from .base import PartForm
from .render import focus_first_error
from .validators import email_address, hostname, https_url, pem_certificates

SECURITY_CHOICES = [
    SelectChoice(Security.NONE.value, "None"),
    SelectChoice(Security.STARTTLS.value, "STARTTLS (explicit)"),
    SelectChoice(Security.TLS.value, "SSL/TLS (implicit)"),
    SelectChoice(Security.AUTO.value, "Automatic (STARTTLS when offered)"),
]
SHOWN = "_shown"  # every rendered section posts its name here


@dataclass(frozen=True)
class Choices:
    """The choices that decide which sections show, read from the raw values."""
    protocol: str
    security: str
    auth_type: str
    provider: str = Provider.MICROSOFT.value
    flow: str = Flow.DELEGATED.value
    proxy_kind: str = ProxyKind.NONE.value
    receiver_protocol: str = ReceiverProtocol.NONE.value

    @classmethod
    def read(cls, formdata, saved: dict) -> "Choices":
        def pick(name, default):
            if formdata is not None and name in formdata:
                return formdata.get(name, default)
            return saved.get(name, default)
        protocol, auth_type = pick("protocol", "smtp"), pick("auth_type", AuthType.NONE.value)
        allowed = TRANSPORTS[protocol].auth_types if protocol in TRANSPORTS else ()
        if allowed and auth_type in KNOWN_AUTH_TYPES and auth_type not in allowed:  # another protocol's way
            auth_type = allowed[0].value
        providers = providers_for(protocol)
        provider = pick("provider", providers[0].value)
        if provider in KNOWN_PROVIDERS and provider not in providers:  # another protocol's provider
            provider = providers[0].value
        return cls(protocol, pick("security", Security.STARTTLS.value), auth_type, provider,
                   pick("flow", Flow.DELEGATED.value), pick("proxy_kind", ProxyKind.NONE.value),
                   pick("receiver_protocol", ReceiverProtocol.NONE.value))

    @property
    def known_protocol(self) -> bool:
        return self.protocol in TRANSPORTS

    def allows(self, auth_type: str) -> bool:
        return self.known_protocol and auth_type in TRANSPORTS[self.protocol].auth_types


class Section(PartForm):
    name: ClassVar[str]
    store: ClassVar[str]  # "server" (a column), "settings" (the protocol's), "credential"
    shown: ClassVar[Callable[[Choices], bool]] = staticmethod(lambda c: True)
    secret: ClassVar[frozenset[str]] = frozenset()  # never rendered back, audited as "(changed)"
    not_stored: ClassVar[frozenset[str]] = frozenset()  # confirmations and actions
    template: ClassVar[str | None] = None  # its partial; None: its fields one after the other
    nested: ClassVar[bool] = False  # rendered inside another section's template


def _smtp(choices: Choices) -> bool:
    return choices.protocol == "smtp"


class GeneralSection(Section):
    name, store = "general", "server"
    description = StringField("Description", validators=[Length(max=200)],
                              description="A name for this server, e.g. “Office relay”.")
    protocol = SelectField("Connection protocol", default="smtp")
    enabled = BooleanField("Enabled", default=True,
                           description="Validate and sample mails work on a disabled server too, to try it first.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.protocol.choices = [SelectChoice(p, t.label) for p, t in TRANSPORTS.items()]


class SmtpSection(Section):
    name, store, shown = "smtp", "settings", staticmethod(_smtp)
    template = "servers/_smtp.html"
    host = StringField("Server name / IP address", validators=[InputRequired(), hostname])
    security = SelectField("Security", choices=SECURITY_CHOICES, default=Security.STARTTLS.value)
    local_hostname = StringField("Local host name (EHLO)", validators=[Length(max=253), hostname],
                                 description="The name Mailroom gives in EHLO. Empty: this machine's name, or "
                                             "its address when the name is not a domain.")


class PortSection(Section):
    name, store, shown, nested = "port", "settings", staticmethod(_smtp), True
    port = IntegerField("Port", validators=[Optional(), NumberRange(1, 65535, "Enter a port from 1 to 65535.")],
                        description="Usual ports: 587 for STARTTLS, 465 for SSL/TLS, 25 between servers.")


class TlsSection(Section):
    name, store, nested = "tls", "settings", True
    shown = staticmethod(lambda c: _smtp(c) and c.security != Security.NONE)
    verify_cert = BooleanField("Verify the server's certificate", default=True)
    ca_cert = TextAreaField("CA certificate (PEM, optional)", validators=[Optional(), pem_certificates],
                            description="Add your own certificate authority when the server's certificate "
                                        "is not signed by a public one.")


class PlaintextSection(Section):
    name, store, nested = "plaintext", "settings", True
    shown = staticmethod(lambda c: _smtp(c) and c.security in (Security.NONE, Security.AUTO))
    plaintext_auth = BooleanField("Allow sign-in without encryption", default=False,
                                  description="Only for a server on a trusted network: the password or token "
                                              "then crosses the network readable by anyone on the way.")


class AuthSection(Section):
    name, store = "auth", "credential"
    auth_type = SelectField("Authentication", default=AuthType.NONE.value)

    def __init__(self, *args, protocol: str = "smtp", **kwargs):
        super().__init__(*args, **kwargs)
        allowed = TRANSPORTS[protocol].auth_types if protocol in TRANSPORTS else (AuthType.NONE,)
        self.auth_type.choices = [SelectChoice(a.value, AUTH_LABELS[a]) for a in allowed]
        if self.auth_type.data in KNOWN_AUTH_TYPES and self.auth_type.data not in allowed:
            self.auth_type.data = allowed[0].value


class BasicSection(Section):
    name, store = "basic", "credential"
    shown = staticmethod(lambda c: c.auth_type == AuthType.BASIC and c.allows(AuthType.BASIC))
    secret = frozenset({"password"})
    not_stored = frozenset({"confirm_password"})
    username = StringField("Username", validators=[InputRequired(), Length(max=320)])
    password = PasswordField("Password", validators=[Length(max=1000)])
    confirm_password = PasswordField("Confirm password",
                                     validators=[EqualTo("password", "The passwords do not match.")])
    mechanism = SelectField("Authentication mechanism", default="auto")

    def __init__(self, *args, protocol: str = "smtp", **kwargs):
        super().__init__(*args, **kwargs)
        mechanisms = getattr(TRANSPORTS.get(protocol), "mechanisms", {})
        if mechanisms:
            self.mechanism.choices = [SelectChoice(value, label) for value, label in mechanisms.items()]
            self.mechanism.description = getattr(TRANSPORTS[protocol], "mechanism_note", "")
        else:
            del self.mechanism


def _oauth(choices: Choices) -> bool:
    return choices.auth_type == AuthType.OAUTH and choices.allows(AuthType.OAUTH)


class OAuthSection(Section):
    name, store = "oauth", "credential"
    shown = staticmethod(_oauth)
    template = "servers/_oauth.html"
    secret = frozenset({"client_secret"})
    provider = SelectField("Provider", default=Provider.MICROSOFT.value,
                           choices=[SelectChoice(p.value, label) for p, label in PROVIDER_LABELS.items()])
    username = StringField("Mailbox", validators=[InputRequired(), Length(max=320)],
                           description="The mailbox the mail is sent as (the account that consents, or that "
                                       "the app acts for).")
    client_id = StringField("Client ID", validators=[InputRequired(), Length(max=200)])
    client_secret = PasswordField("Client secret", validators=[Length(max=2000)],
                                  description="The secret the authorization server issued for this client.")
    flow = SelectField("Flow", default=Flow.DELEGATED.value)
    authorize_url = StringField("Authorization URL", validators=[Length(max=2000), https_url])
    token_url = StringField("Token URL", validators=[InputRequired(), Length(max=2000), https_url])
    scope = StringField("Scope", validators=[InputRequired(), Length(max=1000)],
                        description="Filled in for the provider, protocol and flow (for Other: sign-in and a "
                                    "refresh token; add what your mail server wants in its tokens); “Default” "
                                    "puts it back.")

    def __init__(self, *args, protocol: str = "smtp", **kwargs):
        super().__init__(*args, **kwargs)
        providers = providers_for(protocol)
        self.provider.choices = [SelectChoice(p.value, PROVIDER_LABELS[p]) for p in providers]
        if self.provider.data in KNOWN_PROVIDERS and self.provider.data not in providers:
            self.provider.data = providers[0].value
        flows = TRANSPORTS[protocol].oauth_flows if protocol in TRANSPORTS else (Flow.DELEGATED,)
        if self.provider.data != Provider.MICROSOFT:
            flows = tuple(f for f in flows if f == Flow.DELEGATED)
        self.flow.choices = [SelectChoice(f.value, FLOW_LABELS[f]) for f in flows]
        if self.provider.data == Provider.MICROSOFT:  # Entra shows a secret's Value and its Secret ID
            self.client_secret.description = "The secret's Value (not its Secret ID)."

    def validate_authorize_url(self, field) -> None:
        if self.flow.data == Flow.DELEGATED and not field.data:
            raise ValidationError("Enter the authorization URL (where the mailbox owner signs in).")


class MicrosoftSection(Section):
    name, store, nested = "microsoft", "credential", True
    shown = staticmethod(lambda c: _oauth(c) and c.provider == Provider.MICROSOFT)
    cloud = SelectField("Cloud", default=Cloud.GLOBAL.value,
                        choices=[SelectChoice(c.value, label) for c, label in CLOUD_LABELS.items()])
    tenant = StringField("Tenant ID", validators=[Length(max=200)],
                         description="A GUID or a domain (example.com); “organizations” lets any work account "
                                     "consent (delegated only).")

    def validate_tenant(self, field) -> None:
        value = (field.data or "").strip()
        if value and not re.fullmatch(r"[A-Za-z0-9.-]+", value):
            raise ValidationError("A tenant is a GUID or a domain, e.g. 0b1c… or example.com.")


class IssuerSection(Section):
    name, store, nested = "issuer", "credential", True
    shown = staticmethod(lambda c: _oauth(c) and c.provider == Provider.OTHER)
    issuer = StringField("Issuer URL", validators=[Length(max=2000), https_url],
                         description="Its metadata (RFC 8414 or OpenID discovery) fills in the endpoints: "
                                     "click Discover.")


class SenderSection(Section):
    name, store = "sender", "server"
    from_address = EmailField("From address", validators=[InputRequired(), email_address, Length(max=320)])
    sender_name = StringField("Sender name", validators=[Length(max=200)],
                              description="Shown as the sender in mail clients.")
    reply_to = EmailField("Reply-to address", validators=[Optional(), email_address, Length(max=320)])


class LimitsSection(Section):
    name, store = "limits", "server"
    timeout = IntegerField("Server timeout (seconds)", default=10,
                           validators=[InputRequired(), NumberRange(1, 60, "Enter 1 to 60 seconds.")],
                           description="The longest a whole Validate or sample mail may take.")
    max_connections = IntegerField("Max. concurrent connections", default=5,
                                   validators=[InputRequired(), NumberRange(1, 100, "Enter 1 to 100.")],
                                   description="How many connections Mailroom may have open to this server at "
                                               "once. Delivery counts them across every worker on every host; "
                                               "Validate and sample mails count theirs in each app process "
                                               "(gunicorn worker), so the server may see that many more per "
                                               "process. Beyond it a check answers “busy, try again” at once and "
                                               "queued mail waits for a free connection.")
    rate_per_minute = IntegerField(
        "Send rate: messages per minute", validators=[Optional(), NumberRange(1, 100_000, "Enter 1 to 100,000, or "
                                                                                        "leave it empty.")],
        description="Empty: no limit. Mail beyond it waits for a later minute. Exchange Online takes 30 messages a "
                    "minute per mailbox; the Gmail API 60 sends a minute per user (6,000 quota units, 100 per "
                    "send). Microsoft Graph limits requests at once instead (4 per mailbox): set that as Max. "
                    "concurrent connections.")
    rate_per_day = IntegerField(
        "Send rate: messages per day", validators=[Optional(), NumberRange(1, 10_000_000, "Enter 1 to 10,000,000, or "
                                                                                         "leave it empty.")],
        description="Empty: no limit. Google Workspace sends 2,000 messages a day per user (500 on a trial); "
                    "Exchange Online 10,000 recipients a day per mailbox.")


def _proxied(choices: Choices) -> bool:
    return choices.proxy_kind in (ProxyKind.HTTP, ProxyKind.SOCKS4, ProxyKind.SOCKS5)


class ProxySection(Section):
    """Proxy / firewall (Privileged Identity's "Firewall Configuration", SupportCenter Plus's proxy)."""
    name, store = "proxy", "proxy"
    proxy_kind = SelectField("Proxy / firewall", default=ProxyKind.NONE.value,
                             choices=[SelectChoice(k.value, label) for k, label in PROXY_LABELS.items()],
                             description="How Mailroom reaches this server: directly, or through an HTTP proxy (a "
                                         "CONNECT tunnel) or a SOCKS proxy. Every connection of this server goes "
                                         "through it: SMTP, the mail receiver login, and the token, EWS, Graph and "
                                         "Gmail requests.")


class ProxyServerSection(Section):
    name, store = "proxy_server", "proxy"
    shown = staticmethod(_proxied)
    proxy_host = StringField("Proxy host", validators=[InputRequired(), Length(max=253), hostname],
                             description="The proxy's name or address. The egress policy checks it: it is where "
                                         "Mailroom connects.")
    proxy_port = IntegerField("Proxy port", validators=[Optional(), NumberRange(1, 65535, "Enter a port from 1 to "
                                                                                          "65535.")],
                              description="Empty: 8080 for HTTP, 1080 for SOCKS.")
    proxy_username = StringField("Proxy username", validators=[Length(max=255)],
                                 description="Empty: the proxy is used without signing in. SOCKS4 sends it as its "
                                             "user ID (SOCKS4 has no password).")

    def validate_proxy_username(self, field) -> None:
        if not (field.data or "").isascii() or ":" in (field.data or ""):
            raise ValidationError("A proxy username is ASCII, without a colon.")


class ProxyPasswordSection(Section):
    name, store = "proxy_password", "proxy"
    shown = staticmethod(lambda c: c.proxy_kind in (ProxyKind.HTTP, ProxyKind.SOCKS5))
    secret = frozenset({"proxy_password"})
    proxy_password = PasswordField("Proxy password", validators=[Length(max=255)],
                                   description="Needed with a username. Sent only to the proxy it was saved for.")

    def validate_proxy_password(self, field) -> None:
        if field.data and not field.data.isascii():
            raise ValidationError("A proxy password is ASCII (SOCKS5 and HTTP Basic carry nothing else).")


class ProxyDnsSection(Section):
    name, store = "proxy_dns", "proxy"
    shown = staticmethod(lambda c: c.proxy_kind == ProxyKind.SOCKS5)
    proxy_remote_dns = BooleanField(
        "Resolve names at the proxy", default=False,
        description="Off (safer): Mailroom resolves the server's name, the egress policy checks every address, and "
                    "the proxy is given the checked address. On: the proxy resolves the name (for names only it "
                    "knows); the egress policy then checks only the name and port, not the address the proxy "
                    "reaches.")


def _receives(choices: Choices) -> bool:
    return _smtp(choices) and choices.receiver_protocol in (ReceiverProtocol.POP3, ReceiverProtocol.IMAP)


class ReceiverSection(Section):
    """eG's "mail receiver settings": log in to receive mail before sending (POP-before-SMTP)."""
    name, store, shown = "receiver", "receiver", staticmethod(_smtp)
    receiver_protocol = SelectField(
        "Log in to receive mail before sending", default=ReceiverProtocol.NONE.value,
        choices=[SelectChoice(p.value, label) for p, label in RECEIVER_LABELS.items()],
        description="Some mail servers accept mail only from a machine that has just logged in to receive mail "
                    "there (POP-before-SMTP). Mailroom then logs in with POP3 or IMAP before each SMTP session; it "
                    "reads no mail.")


class ReceiverServerSection(Section):
    name, store = "receiver_server", "receiver"
    shown = staticmethod(_receives)
    secret = frozenset({"receiver_password"})
    receiver_host = StringField("Server for receiving mails", validators=[InputRequired(), Length(max=253), hostname])
    receiver_security = SelectField("Security for receiving mails", default=ReceiverSecurity.TLS.value,
                                    choices=[SelectChoice(k.value, label) for k, label in
                                             RECEIVER_SECURITY_LABELS.items()])
    receiver_port = IntegerField("Port used for receiving mails",
                                 validators=[Optional(), NumberRange(1, 65535, "Enter a port from 1 to 65535.")],
                                 description="Empty: 995 (POP3) or 993 (IMAP) with SSL/TLS, 110 or 143 otherwise.")
    receiver_username = StringField("Mail receiver ID", validators=[InputRequired(), Length(max=320)],
                                    description="The login for receiving mails.")
    receiver_password = PasswordField("Mail receiver password", validators=[Length(max=1000)],
                                      description="Sent only to the server, port and security it was saved for.")
    receiver_verify_cert = BooleanField("Verify the receiving server's certificate", default=True,
                                        description="It is trusted like the SMTP server's: the public authorities, "
                                                    "and the CA certificate above.")


SECTIONS: dict[str, type[Section]] = {s.name: s for s in (
    GeneralSection, SmtpSection, PortSection, TlsSection, PlaintextSection, AuthSection, BasicSection,
    OAuthSection, MicrosoftSection, IssuerSection, SenderSection, LimitsSection, ProxySection, ProxyServerSection,
    ProxyPasswordSection, ProxyDnsSection, ReceiverSection, ReceiverServerSection)}
# The sections of the way out, stored apart from the protocol's settings (their passwords too).
SIDE_STORES = {"proxy": ("proxy_", ProxySettings, SecretPurpose.PROXY),
               "receiver": ("receiver_", ReceiverSettings, SecretPurpose.RECEIVER)}

# Other secrets beside the credential, from other modules' sections (the SMTP client certificate): each gives
# its SidePasswords for a form.
SIDE_SOURCES: list[Callable[["ServerForm"], list[SidePassword]]] = []

# The parts of the page that are swapped, and the sections each holds.
PARTIALS: dict[str, list[str]] = {
    "connection": ["smtp", "port", "tls", "plaintext"],  # when the protocol changes
    "tls": ["port", "tls", "plaintext"],  # when the security changes
    "credentials": ["basic", "oauth", "microsoft", "issuer"],  # when the authentication or provider changes
    "endpoints": ["oauth", "microsoft", "issuer"],  # when the tenant, cloud or flow changes (endpoints and scope)
    "proxy": ["proxy_server", "proxy_password", "proxy_dns"],  # when the proxy's type changes
    "receiver": ["receiver_server"],  # when the mail receiver login is turned on or off
    "options": [],  # when a custom header row is added or removed (forms/options.py)
}
# Parts that gather whichever of their sections show; every other part is its first section's own
# markup, and can be rendered only when the posted choices show that section.
GATHERING = frozenset({"connection", "credentials", "proxy", "receiver"})
# Sections stored in a JSON column of their own: store name -> its values as the column keeps them.
COLUMN_STORES: dict[str, Callable[[dict], dict]] = {}
FOLLOWS_THE_CLOUD = "graph_endpoint"  # a protocol's service root that is filled in from the Microsoft cloud


def register_section(section: type[Section], *partials: str) -> None:
    """A new protocol's settings (or a new way to sign in): a section in swappable parts."""
    SECTIONS[section.name] = section
    for partial in partials:
        PARTIALS[partial].append(section.name)


def unregister_section(name: str) -> None:
    SECTIONS.pop(name, None)
    for names in PARTIALS.values():
        if name in names:
            names.remove(name)


class ServerForm:
    """The sections of one server form, built from the posted values (`formdata`) or the
    saved ones (`saved`, flat: columns, settings and credential by field name).
    `only` builds just one partial's sections (a swap)."""

    def __init__(self, formdata: MultiDict | None = None, saved: dict | None = None, only: str | None = None,
                 stored_secret: bool = False):
        self.formdata = formdata
        self.saved = saved or {}
        self.saved_data = {k: v for k, v in self.saved.items() if v is not None}  # None: the field's default
        self.choices = Choices.read(formdata, self.saved)
        self.stored_secret = stored_secret  # the server has a stored password/secret
        self.form_errors: list[str] = []
        self.sections: dict[str, Section] = {}
        self.carried: dict[str, dict[str, str]] = {}  # hidden section -> {field: raw value}
        seen = set(formdata.getlist(SHOWN)) if formdata is not None else set()
        names = PARTIALS[only] if only else SECTIONS
        shown = [name for name in names if SECTIONS[name].shown(self.choices)]
        owned = {field for name in shown for field, _ in _fields(SECTIONS[name])}  # "username" is several's
        for name in names:
            if name in shown:
                self.sections[name] = self._build(SECTIONS[name], first_time=formdata is not None and name not in seen)
            else:
                self.carried[name] = self._carry(SECTIONS[name], owned)

    def _build(self, section: type[Section], first_time: bool) -> Section:
        extra = {"protocol": self.choices.protocol} if section in (AuthSection, BasicSection, OAuthSection) else {}
        if self.formdata is None:
            form = section(data=self.saved_data, **extra)
        else:
            form = section(self.formdata, **extra)
            if first_time:  # not on the page when posted: an absent checkbox is not "off"
                for field in form:
                    if field.type != "FieldList" and not field.raw_data and field.default is not None:
                        field.data = field.default
        return form

    def _carry(self, section: type[Section], owned: set[str]) -> dict[str, str]:
        """A hidden section's values as hidden inputs; not those a shown section has a field for
        (a second input of that name would come first and win)."""
        carried = {}
        for name, unbound in _fields(section):
            if name in section.secret or name in section.not_stored or name in owned:
                continue
            if self.formdata is not None:
                if name in self.formdata:
                    carried[name] = self.formdata.get(name, "")
                continue
            if name not in self.saved:  # a section appearing later starts from its defaults anyway
                continue
            value = self.saved[name]
            if unbound.field_class is BooleanField:
                carried[name] = "y" if value else ""
            elif value not in (None, ""):
                carried[name] = str(value)
        return carried

    # -- reading -------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return any(name in section for section in self.sections.values())

    def __getitem__(self, name: str):
        for section in self.sections.values():
            if name in section:
                return section[name]
        raise KeyError(name)

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("sections", "formdata", "saved", "choices"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def shows(self, section: str) -> bool:
        return section in self.sections

    def can_render(self, partial: str) -> bool:
        """The posted choices show what this part is made of (e.g. "endpoints" needs the OAuth section)."""
        return partial in GATHERING or PARTIALS[partial][0] in self.sections

    def in_partial(self, partial: str) -> list[tuple[str, Section | None]]:
        """The partial's own sections in order: (name, the section if shown, else None for a carry)."""
        return [(name, self.sections.get(name)) for name in PARTIALS[partial]
                if name not in self.sections or not SECTIONS[name].nested]

    @property
    def fields(self):
        for section in self.sections.values():
            yield from section

    @property
    def first_error(self) -> str | None:
        return next((field.id for field in self.fields if field.errors), None)

    def default_port(self) -> int:
        return default_port(self.choices.security)

    def proxy_default_port(self) -> int:
        return proxy_default_port(self.choices.proxy_kind)

    def receiver_default_port(self) -> int:
        security = self["receiver_security"].data if "receiver_security" in self else ReceiverSecurity.TLS
        return receiver_default_port(self.choices.receiver_protocol, security)

    # -- validating and the values to save ------------------------------------------

    def validate(self) -> bool:
        valid = all([section.validate() for section in self.sections.values()])
        if not self.choices.known_protocol:
            self["protocol"].errors = [*self["protocol"].errors, "Choose one of the protocols."]
            valid = False
        focus_first_error(self.fields)
        return valid

    def refuse_secret(self, message: str, field_name: str | None = None) -> None:
        """The stored secret may not be used for these values: ask for it beside its field (the
        credential's, unless `field_name` names another, e.g. the proxy's password)."""
        field = self[field_name] if field_name else next(
            self[name] for section in self.sections.values() if section.store == "credential" for name in section.secret)
        field.errors = [*field.errors, message]
        focus_first_error(self.fields)

    def values(self) -> tuple[dict, dict, CredentialValues]:
        """(server columns, protocol settings, credential) from the shown sections."""
        stores: dict[str, dict] = defaultdict(dict)  # server, settings, credential, proxy, receiver, and a
        # registered section's own store (e.g. smime: forms/smime.py reads that section itself)
        provider: dict = {}
        for section in self.sections.values():
            for field in section:
                if field.name in section.not_stored or field.name in section.secret:
                    continue
                value = "" if field.data is None and isinstance(field, StringField) else field.data
                if section.name in PROVIDER_SECTIONS and field.name != "username":
                    provider[field.name] = value
                else:
                    stores[section.store][field.name] = value
        settings = stores["settings"]
        if "port" in settings and settings["port"] is None:
            settings["port"] = self.default_port()
        for store in SIDE_STORES:  # {} when its section does not show (no proxy, not SMTP)
            stores["server"][store] = self._side_settings(store, stores.get(store, {})).to_dict()
        for store, to_column in COLUMN_STORES.items():
            stores["server"][store] = to_column(stores[store])
        credential = stores["credential"]
        auth_type = credential.pop("auth_type", AuthType.NONE.value)
        return stores["server"], settings, CredentialValues(
            kind=kind_for(auth_type, provider.get("flow", "")), username=credential.get("username", ""),
            mechanism=credential.get("mechanism", "auto"), secret=self.new_secret(), provider=provider)

    def new_secret(self) -> dict | None:
        """The credential's secret parts typed into the form, if any (a blank secret field keeps the stored one)."""
        typed = {name: section[name].data for section in self.sections.values() if section.store == "credential"
                 for name in section.secret if section[name].data}
        return typed or None

    def typed_secret(self, field_name: str | None = None) -> bool:
        """A secret was posted (typed, or a file chosen) that the re-rendered page cannot show again:
        the credential's, or the one `field_name` names."""
        if self.formdata is None:
            return False
        if field_name:
            return bool(self.formdata.get(field_name)) and field_name in self
        return any(self.formdata.get(name) for section in self.sections.values() if section.store == "credential"
                   for name in section.secret)

    def _side_settings(self, store: str, values: dict):
        prefix, settings_type, _ = SIDE_STORES[store]
        return settings_type.from_dict({name.removeprefix(prefix): value for name, value in values.items()})

    def side_passwords(self) -> list[SidePassword]:
        """The proxy's and the mail receiver's passwords: wanted or not, where they may go, what was typed."""
        passwords = []
        for store, (prefix, _, purpose) in SIDE_STORES.items():
            values = {field.name: field.data for section in self.sections.values() if section.store == store
                      for field in section if field.name not in section.secret}
            settings = self._side_settings(store, values)
            wanted = settings.enabled and (store == "receiver" or (settings.takes_password and bool(settings.username)))
            typed = self[f"{prefix}password"].data if f"{prefix}password" in self else None
            passwords.append(SidePassword(purpose, wanted, settings.destination(), typed or None))
        for source in SIDE_SOURCES:
            passwords += source(self)
        return passwords

    def needs_files(self) -> bool:
        return any(field.type == "FileField" for field in self.fields)

    # -- the port follows the security ----------------------------------------------------

    def follow_port_default(self) -> None:
        """After a security change: a port that was empty or some security's default follows along."""
        if "port" in self and (self["port"].data is None or self["port"].data in DEFAULT_PORT_VALUES):
            self.reset_port()

    def reset_port(self) -> None:
        if "port" in self:
            self["port"].data = self.default_port()
            self["port"].raw_data = None  # else the field re-renders what was posted

    # -- OAuth: the provider's endpoints and scope follow the choices ---------------------

    def default_scope(self) -> str:
        return oauth.default_scope(self.choices.provider, self.choices.protocol, self.choices.flow,
                                   self["cloud"].data if "cloud" in self else oauth.Cloud.GLOBAL)

    def follow_oauth_defaults(self, trigger: str | None) -> None:
        """After a change of provider, cloud, tenant, flow or protocol: known endpoints and the
        default scope are filled in (a scope the admin wrote stays, unless it is another default)."""
        if "oauth" not in self.sections:
            return
        empty = not self["token_url"].data or ("authorize_url" in self and not self["authorize_url"].data)
        known = self.choices.provider != Provider.OTHER
        if known and (trigger in ("provider", "cloud", "tenant", "auth_type", "protocol")
                      or (trigger is None and empty)):
            cloud = self["cloud"].data if "cloud" in self else oauth.Cloud.GLOBAL
            tenant = self["tenant"].data if "tenant" in self else ""
            authorize_url, token_url = oauth.endpoints(self.choices.provider, cloud, tenant)
            self._set("authorize_url", authorize_url)
            self._set("token_url", token_url)
        if not known and trigger == "provider" and self._known_endpoints():
            self._set("authorize_url", "")  # another provider's endpoints: Discover (or type) this one's
            self._set("token_url", "")
        if FOLLOWS_THE_CLOUD in self and trigger in ("cloud", "protocol", "auth_type", None):
            root = self[FOLLOWS_THE_CLOUD].data or ""
            if not root or root in {graph for _, graph in oauth.CLOUDS.values()}:
                cloud = self["cloud"].data if "cloud" in self else oauth.Cloud.GLOBAL
                self._set(FOLLOWS_THE_CLOUD, oauth.CLOUDS.get(cloud, oauth.CLOUDS[oauth.Cloud.GLOBAL])[1])
        scope = (self["scope"].data or "").strip()
        if not scope or scope in KNOWN_SCOPES or trigger in ("auth_type", "protocol"):
            self.reset_scope()

    def _known_endpoints(self) -> bool:
        """The endpoints are some known provider's (as filled in), not typed or discovered ones."""
        token_url = self["token_url"].data or ""
        return token_url.startswith(tuple(f"{authority}/" for authority, _ in oauth.CLOUDS.values())) or \
            token_url == oauth.endpoints(Provider.GOOGLE)[1]

    def reset_scope(self) -> None:
        if "scope" in self:
            self._set("scope", self.default_scope())

    def fill_endpoints(self, metadata: dict) -> None:
        self._set("authorize_url", str(metadata.get("authorization_endpoint") or ""))
        self._set("token_url", str(metadata.get("token_endpoint") or ""))

    def _set(self, name: str, value: str) -> None:
        self[name].data = value
        self[name].raw_data = None


DEFAULT_PORT_VALUES = frozenset(default_port(s) for s in Security)
# Stored together as the credential's provider settings (all but the mailbox and the secret).
PROVIDER_SECTIONS = frozenset({"oauth", "microsoft", "issuer", "service_account"})
KNOWN_AUTH_TYPES = frozenset(a.value for a in AuthType)
KNOWN_PROVIDERS = frozenset(p.value for p in Provider)


def providers_for(protocol: str) -> tuple[Provider, ...]:
    """The OAuth providers whose tokens the protocol's service accepts."""
    return getattr(TRANSPORTS.get(protocol), "oauth_providers", tuple(Provider))
KNOWN_SCOPES = frozenset({*oauth.DEFAULT_SCOPES.values(), oauth.OTHER_SCOPE,
                          *(f"{graph}/.default" for _, graph in oauth.CLOUDS.values())})


@cache
def _fields(section: type[Section]):
    return [(name, getattr(section, name)) for name in dir(section)
            if getattr(getattr(section, name), "_formfield", False)]

