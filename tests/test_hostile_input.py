"""Hostile input, form by form and route by route: the catalog the Security issue asks for.

Every case ends in exactly one of these ways:

- refused: a 4xx. For a form field the error stands beside the field
  (<small id="<field>-help" class="error">, aria-invalid="true" on the control) and the
  database is exactly as before (nothing half-saved, no History record). For a route
  parameter: 404 when no row can have that id (or it is another portal's), 400 for an
  unknown section, protocol or role. A stale or impossible version is a 409;
- accepted: a legitimate but unusual value is saved, the pages show it escaped, and it
  works afterwards: mail sent through the saved server reaches a real SMTP peer
  (aiosmtpd, recorded) with the From name, the Subject and the envelope as typed; a
  password can be signed in with; an egress rule is enforced.

A case that shows a bug in the app is written as the app should behave and marked
xfail(strict=True) with the bug as its reason.

Speed: the cases share one app and one set of signed-in users per module (a sign-in costs
a password hash, an app a few hundred milliseconds). Before each case the database is put
back as it was and the rate limits are reset (`fresh`), so no case sees another's traces.
"""
import email
import json
import re
from dataclasses import dataclass, field
from dataclasses import fields as fields_of
from email import policy
from email.header import decode_header, make_header
from email.utils import getaddresses
from html import unescape
from io import BytesIO
from urllib.parse import urlencode, urljoin, urlsplit

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from markupsafe import escape
from sqlmodel import SQLModel, select

from webapp import create_app, db, senders
from webapp.audit import COMMAND_LINE
from webapp.credentials import auth_type_of
from webapp.forms.base import ONE_LINE_ERROR, PASSWORD_ERROR
from webapp.forms.gmail import MAX_KEY_BYTES
from webapp.limits import limiter
from webapp.mail.options import MessageOptions
from webapp.mail.transport import TRANSPORTS
from webapp.models import AppSetting, MailServer, Membership, OutboundMail, Role, SmimeCertificate, utcnow
from webapp.sessions import SESSIONLESS_PATH
from webapp.submission import credentials as smtp_credentials

from .conftest import LOOPBACK, PASSWORD, SECRET_KEYS, Client, Factory
from .test_oauth import credential, payload
from .test_server_checks import peer_form
from .test_server_form import VALID, field_error

NEW = "/p/help/servers/new"
SCRIPT = "<script>alert(1)</script>"
RAW_SCRIPT = "<script>alert"  # pages have <script src=...> of their own: look for the injected one


# -- one app, one world, put back before every case ---------------------------------------------

@dataclass
class World:
    app: object
    clients: dict[str, Client]  # who -> a signed-in client
    ids: dict[str, int]  # rows the cases point at
    baseline: dict = field(default_factory=dict)

    @property
    def engine(self):
        return self.app.extensions["mailroom.engine"]

    def client(self, who: str | None) -> Client:
        return self.clients[who] if who else Client(self.app)  # None: someone not signed in

    def url(self, template: str) -> str:
        return template.format(**self.ids)


def dump(engine, skip=()) -> dict[str, list[dict]]:
    """Every row of every table of the app, in primary-key order."""
    with engine.connect() as connection:
        return {table.name: [dict(row) for row in connection.execute(
                    table.select().order_by(*table.primary_key.columns)).mappings()]
                for table in SQLModel.metadata.sorted_tables if table.name not in skip}


def put_back(engine, rows: dict[str, list[dict]]) -> None:
    tables = SQLModel.metadata.sorted_tables
    with engine.begin() as connection:
        for table in reversed(tables):
            connection.execute(table.delete())
        for table in tables:
            if rows.get(table.name):
                connection.execute(table.insert(), rows[table.name])


def database(world: World) -> dict:
    """What a refused request must not change (sessions are touched by any request, rate limits
    count requests whatever their outcome)."""
    return dump(world.engine, skip={"user_session", "rate_count"})


@pytest.fixture(scope="module")
def world(migrated, database_url, tmp_path_factory):
    put_back(migrated, {})
    # No EXTRA_CA_CERTS: a server's own CA certificate is the only trust its STARTTLS gets here.
    app = create_app({"TESTING": True, "DATABASE_URL": database_url, "AUTO_MIGRATE": False,
                      "SECRET_KEY": "test-secret-key", "SECRET_KEYS": SECRET_KEYS},
                     instance_path=str(tmp_path_factory.mktemp("hostile") / "instance"))
    with app.app_context():
        db.session().add(AppSetting(name="egress", value={"allow": LOOPBACK, "deny": ""}))
        db.session().commit()
    make = Factory(app)
    portal = make.portal()  # /p/help
    other = make.portal(slug="other", name="Other")
    make.member(portal, "admin@example.com", Role.ADMIN)
    make.member(portal, "agent@example.com", Role.STAFF)
    make.member(other, "outsider@example.com", Role.ADMIN)
    make.user("root@example.com", superadmin=True)
    someone = make.user("someone@example.com")  # signs in with next=, is edited, is added as a member
    make.user("pw@example.com")  # changes their password
    make.user("leser@bücher.example")  # an international address
    server = make.server(portal, description="Relay")
    elsewhere = make.server(other, description="Elsewhere")
    mails = [OutboundMail(portal_id=p.id, subject="Hello", raw=b"Subject: Hello\r\n\r\nHi") for p in (portal, other)]
    with app.app_context():
        memberships = {m.portal_id: m.id for m in db.session().exec(select(Membership).order_by(Membership.id))}
        db.session().add_all(mails)
        db.session().commit()
        other_credential, _ = smtp_credentials.create(COMMAND_LINE, other, smtp_credentials.CredentialValues(
            "Elsewhere", from_addresses="scanner@example.com"))
        other_sender = senders.add(COMMAND_LINE, other, "theirs@example.net")
        other_certificate = SmimeCertificate(portal_id=other.id, address="jane@example.org", der=b"0",
                                             subject="CN=Jane", issuer="CN=CA", not_after=utcnow())
        db.session().add(other_certificate)
        db.session().commit()
    clients = {}
    for who in ("admin", "root", "pw"):
        clients[who] = Client(app).login(f"{who}@example.com")
        clients[who].csrf_token()  # the session keeps its CSRF token from here on
    world = World(app, clients, {"server": server.id, "other_server": elsewhere.id,
                                 "membership": memberships[portal.id], "other_membership": memberships[other.id],
                                 "user": someone.id, "mail": mails[0].id, "other_mail": mails[1].id,
                                 "other_credential": other_credential.id, "other_sender": other_sender.id,
                                 "other_smime_certificate": other_certificate.id})
    world.baseline = dump(world.engine)
    yield world
    world.engine.dispose()
    put_back(migrated, {})


@pytest.fixture(autouse=True)
def fresh(world):
    if dump(world.engine) != world.baseline:
        put_back(world.engine, world.baseline)
    with world.app.app_context():
        limiter.reset()
    yield


# -- what a refusal looks like --------------------------------------------------------------------

def assert_refused_beside(response, field: str, says: str = "", status: int = 422) -> None:
    html = response.text
    assert response.status_code == status, (response.status_code, field_error(html, field), html[:300])
    error = field_error(html, field)
    assert error, f"no error beside {field!r}"
    assert says in unescape(error), error
    controls = re.findall(rf'<(?:input|select|textarea)\b[^>]*\bid="{field}"[^>]*>', html)
    assert len(controls) == 1, f"{len(controls)} controls have the id {field!r}: its label and error are ambiguous"
    assert 'aria-invalid="true"' in controls[0], f"{field!r} is not marked invalid"
    assert RAW_SCRIPT not in html


# -- the forms, and the valid data each case changes one field of ----------------------------------

PORTAL = {"name": "Support", "slug": "support", "base_url": "https://support.example.com"}
MICROSOFT = "https://login.microsoftonline.com/example.com/oauth2/v2.0"
OAUTH = {**VALID, "auth_type": "oauth", "provider": "microsoft", "cloud": "global", "tenant": "example.com",
         "flow": "delegated", "username": "helpdesk@example.com", "client_id": "mailroom-client-1",
         "client_secret": "Client-Secret-1", "authorize_url": f"{MICROSOFT}/authorize",
         "token_url": f"{MICROSOFT}/token", "scope": "https://outlook.office.com/SMTP.Send offline_access",
         "_shown": ["smtp", "port", "tls", "plaintext", "oauth", "microsoft"]}
OAUTH_OTHER = {**OAUTH, "provider": "other", "issuer": "https://auth.example.com",
               "authorize_url": "https://auth.example.com/authorize", "token_url": "https://auth.example.com/token",
               "scope": "https://mail.example.com/smtp", "_shown": ["smtp", "port", "tls", "plaintext", "oauth",
                                                                    "issuer"]}

@dataclass(frozen=True)
class Upload:
    """A file in a form's data: a fresh stream for every post (a BytesIO is read once, and the
    cases share their data)."""
    content: bytes
    filename: str = "service-account.json"


def posted(data: dict) -> dict:
    """The data as the test client posts it (None: the field is not posted, as an unchecked box)."""
    return {name: (BytesIO(value.content), value.filename) if isinstance(value, Upload) else value
            for name, value in data.items() if value is not None}


def private_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


# A Google service-account key file as the Cloud console gives it, its RSA key made here: the form checks
# the file and no token is asked for, so 1024 bits do (loading a 2048-bit key, as every Gmail case does,
# costs 40 ms of RSA checks; 1024 bits, 7).
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)
SA_KEY = {"type": "service_account", "project_id": "mailroom-test",
          "private_key_id": "3f5d0c8a2e7b1d4c3e9a6f2d8e1b4c7a90aa1b2c", "private_key": private_pem(RSA_KEY),
          "client_email": "mailer@mailroom-test.iam.gserviceaccount.com", "client_id": "104729000000000000001",
          "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": "https://oauth2.googleapis.com/token",
          "universe_domain": "googleapis.com"}


def key_file(*drop: str, **changes) -> Upload:
    """The key with `changes` (and without the names in `drop`), as the JSON file an admin uploads."""
    key = {name: value for name, value in {**SA_KEY, **changes}.items() if name not in drop}
    return Upload(json.dumps(key).encode())


# The protocols with settings of their own: each form's valid data saves (see ACCEPTED).
SENDER_AND_LIMITS = {name: VALID[name] for name in ("timeout", "from_address", "sender_name", "reply_to",
                                                     "max_connections", "enabled")}
MICROSOFT_OAUTH = {name: OAUTH[name] for name in ("auth_type", "provider", "cloud", "tenant", "flow", "username",
                                                  "client_id", "client_secret", "authorize_url", "token_url")}
GRAPH = {"description": "Graph mailer", "protocol": "graph", "graph_endpoint": "https://graph.microsoft.com",
         "shared_mailbox": "", "importance": "", "headers-0-name": "X-Portal", "headers-0-value": "help-desk",
         **SENDER_AND_LIMITS, **MICROSOFT_OAUTH, "scope": "Mail.Send offline_access",
         "_shown": ["graph", "oauth", "microsoft"]}
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GMAIL = {"description": "Gmail API", "protocol": "gmail", "gmail_endpoint": "https://gmail.googleapis.com",
         **SENDER_AND_LIMITS, "auth_type": "service_account", "username": "helpdesk@example.com", "key": key_file(),
         "scope": GMAIL_SEND, "_shown": ["gmail", "service_account"]}
GMAIL_OAUTH = {**{name: value for name, value in GMAIL.items() if name != "key"}, "auth_type": "oauth",
               "provider": "google", "flow": "delegated", "client_id": "mailroom.apps.googleusercontent.com",
               "client_secret": "Client-Secret-1", "authorize_url": "https://accounts.google.com/o/oauth2/v2/auth",
               "token_url": "https://oauth2.googleapis.com/token", "_shown": ["gmail", "oauth"]}
EWS_URL = "https://mail.example.com/EWS/Exchange.asmx"
EWS = {"description": "Exchange on premises", "protocol": "ews", "ews_url": EWS_URL, "ews_version": "auto",
       "mailbox": "helpdesk@example.com", "save_copy": "y", "ews_ca_cert": "", **SENDER_AND_LIMITS,
       "auth_type": "basic", "username": "EXAMPLE\\mailer", "password": "Ews-Pass-7wq",
       "confirm_password": "Ews-Pass-7wq", "mechanism": "auto", "_shown": ["ews", "basic"]}
PROTOCOL_FORMS = {  # the five ways a protocol's form is posted: new, new by htmx, an edit, Validate, by htmx
    f"{kind}-{protocol}": (url, {**data, "version": "1"} if kind == "server-edit" else data, htmx)
    for protocol, data in (("graph", GRAPH), ("gmail", GMAIL), ("ews", EWS))
    for kind, url, htmx in (("server", NEW, False), ("server-htmx", NEW, True),
                            ("server-edit", "/p/help/servers/{server}/edit", False),
                            ("validate", "/p/help/servers/new/validate", False),
                            ("validate-htmx", "/p/help/servers/new/validate", True))}

FORMS = {  # name: (who posts, URL, valid data, as htmx)
    "server": ("admin", NEW, VALID, False),
    "server-htmx": ("admin", NEW, VALID, True),
    "server-edit": ("admin", "/p/help/servers/{server}/edit", {**VALID, "version": "1"}, False),
    "server-oauth": ("admin", NEW, OAUTH, False),
    "server-oauth-other": ("admin", NEW, OAUTH_OTHER, False),
    "validate": ("admin", "/p/help/servers/new/validate", VALID, False),
    "validate-htmx": ("admin", "/p/help/servers/new/validate", VALID, True),
    "sample": ("admin", "/p/help/servers/{server}/sample", {"recipient": "someone@example.org"}, False),
    "sample-htmx": ("admin", "/p/help/servers/{server}/sample", {"recipient": "someone@example.org"}, True),
    "portal-new": ("root", "/portals/new", PORTAL, False),
    "portal-settings": ("admin", "/p/help/settings", {"name": "Help Desk", "base_url": "https://help.example.com"},
                        False),
    "portal-egress": ("root", "/p/help/egress", {"allow": "", "deny": ""}, False),
    "global-egress": ("root", "/settings/egress", {"allow": LOOPBACK, "deny": ""}, False),
    "egress-probe": ("root", "/settings/egress/probe", {"host": "smtp.example.com", "port": "25"}, False),
    "member": ("admin", "/p/help/members", {"email": "someone@example.com", "role": "staff"}, False),
    "user-new": ("root", "/users/new", {"email": "new@example.com", "name": "New", "password": "long enough 1"},
                 False),
    "user-edit": ("root", "/users/{user}", {"email": "someone@example.com", "name": "Some One", "is_active": "y"},
                  False),
    "password": ("pw", "/account/password", {"current": PASSWORD, "new": "a new password 1",
                                             "confirm": "a new password 1"}, False),
    "sign-in": (None, "/login", {"email": "someone@example.com", "password": PASSWORD}, False),
    **{name: ("admin", url, data, htmx) for name, (url, data, htmx) in PROTOCOL_FORMS.items()},
    "server-gmail-oauth": ("admin", NEW, GMAIL_OAUTH, False),
}


def refused(form, field, value, label, says="", bug=None, also=None):
    """One hostile `value` in `field` of the form's valid data (`also`: companion fields it needs)."""
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(form, field, value, says, also or {}, id=f"{form}:{field}:{label}", marks=marks)


# Control characters and line separators, inside a value (strip() takes them off the ends).
CONTROLS = [("NUL", "\x00x"), ("CR", "\rx"), ("LF", "\nx"), ("CRLF+Bcc", "\r\nBcc: x@evil.example"),
            ("VT", "\x0bx"), ("FF", "\x0cx"), ("NEL", "\x85x"), ("U+2028", "\u2028x"), ("U+2029", "\u2029x"),
            ("TAB", "\tx"), ("ESC", "\x1bx"), ("DEL", "\x7fx"), ("C1-CSI", "\x9bx")]
SOME_CONTROLS = [c for c in CONTROLS if c[0] in ("NUL", "CRLF+Bcc", "VT", "NEL", "U+2028", "TAB")]
SERVER_LINES = {"description": "Office relay", "host": "smtp.example.com", "local_hostname": "mailroom.example.com",
                "sender_name": "Help Desk", "username": "mailer@example.com", "from_address": "helpdesk@example.com",
                "reply_to": "support@example.com"}
OTHER_LINES = [("portal-new", "name", "Support"), ("portal-new", "base_url", "https://support.example.com"),
               ("portal-settings", "name", "Help Desk"), ("portal-settings", "base_url", "https://help.example.com"),
               ("member", "email", "someone@example.com"), ("user-new", "email", "new@example.com"),
               ("user-new", "name", "New"), ("user-edit", "email", "someone@example.com"),
               ("user-edit", "name", "Some One"), ("sample", "recipient", "someone@example.org"),
               ("egress-probe", "host", "smtp.example.com"), ("sign-in", "email", "someone@example.com")]
ONE_LINE = [refused("server", name, base + tail, label, ONE_LINE_ERROR)
            for name, base in SERVER_LINES.items() for label, tail in CONTROLS] + \
           [refused(form, name, base + tail, label, ONE_LINE_ERROR)
            for form, name, base in OTHER_LINES for label, tail in SOME_CONTROLS]

# A password may hold anything a protocol can carry: not NUL, CR or LF.
PASSWORDS = [refused(form, name, "long enough" + tail, label, PASSWORD_ERROR)
             for form, name in [("server", "password"), ("user-new", "password"), ("password", "current"),
                                ("password", "new"), ("sign-in", "password")]
             for label, tail in [("NUL", "\x00x"), ("CR", "\rx"), ("LF", "\nx")]]

TOO_LONG = [
    refused("server", "description", "d" * 201, "201-chars", "longer than 200"),
    refused("server", "sender_name", "s" * 201, "201-chars", "longer than 200"),
    refused("server", "username", "u" * 321, "321-chars", "longer than 320"),
    refused("server", "password", "p" * 1001, "1001-chars", "longer than 1000"),
    refused("server", "host", ".".join(["a" * 63] * 4), "255-chars", "at most 253"),
    refused("server", "local_hostname", ".".join(["a" * 63] * 4), "255-chars", "longer than 253"),
    refused("server", "from_address", "a" * 250 + "@example.com", "262-chars", "too long"),
    refused("server", "reply_to", "a" * 250 + "@example.com", "262-chars", "too long"),
    refused("sample", "recipient", "a" * 250 + "@example.org", "262-chars", "too long"),
    refused("portal-new", "name", "n" * 201, "201-chars", "longer than 200"),
    refused("portal-new", "slug", "s" * 64, "64-chars", "longer than 63"),
    refused("portal-new", "base_url", "https://support.example.com/" + "p" * 1980, "2008-chars", "longer than 2000"),
    refused("portal-settings", "name", "n" * 201, "201-chars", "longer than 200"),
    refused("portal-settings", "base_url", "https://help.example.com/" + "p" * 1980, "2005-chars",
            "longer than 2000"),
    refused("member", "email", "a" * 250 + "@example.com", "262-chars", "too long"),
    refused("user-new", "email", "a" * 250 + "@example.com", "262-chars", "too long"),
    refused("user-new", "name", "n" * 201, "201-chars", "longer than 200"),
    refused("user-edit", "email", "a" * 250 + "@example.com", "262-chars", "too long"),
    refused("user-edit", "name", "n" * 201, "201-chars", "longer than 200"),
]

NUMBERS = [("0", "0"), ("-1", "-1"), ("65536", "65536"), ("2**63", str(2**63)), ("10**30", str(10**30)),
           ("1e3", "1e3"), ("NaN", "NaN"), ("empty", ""), ("25abc", "25abc"), ("5000-digits", "9" * 5000)]
NUMBER_FIELDS = [("server", "port", "from 1 to 65535"), ("server", "timeout", ""),
                 ("server", "max_connections", ""), ("egress-probe", "port", "")]
NUMBER_CASES = [refused(form, name, value, label, says)
                for form, name, says in NUMBER_FIELDS for label, value in NUMBERS
                if not (name == "port" and form == "server" and value == "")]  # empty port: the default

CHOICES = [refused("server", name, value, label, "Not a valid choice")
           for name, values in {"protocol": ["x400", "", "SMTP"], "security": ["ssl", "", "NONE"],
                                "auth_type": ["kerberos", "", "BASIC"], "mechanism": ["GSSAPI", "", "plain"]}.items()
           for label, value in zip(("unknown", "empty", "upper-case"), values)] + \
          [refused("member", "role", value, label, "Not a valid choice")
           for label, value in (("unknown", "owner"), ("empty", ""), ("upper-case", "ADMIN"))]

CA = trustme.CA()  # a certificate authority of its own, for the certificate cases
PEM = CA.cert_pem.bytes().decode()
KEY = CA.private_key_pem.bytes().decode()
CA_CERTS = [
    refused("server", "ca_cert", "not a certificate", "garbage", "PEM"),
    refused("server", "ca_cert", KEY, "a-private-key", "PEM"),
    refused("server", "ca_cert", PEM[:300], "truncated-block", "PEM"),
    refused("server", "ca_cert", PEM.replace("CERTIFICATE", "TRUSTED CERTIFICATE"), "openssl-trusted-label", "PEM"),
    refused("server", "ca_cert", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----", "empty-block", "PEM"),
    refused("server", "ca_cert", PEM.replace("\n", "\n\x00", 1), "NUL-inside", "NUL characters"),
    refused("server", "ca_cert", PEM + PEM[:300], "second-block-truncated", ""),
]

BAD_ADDRESSES = [("display-name-CRLF", "Jane\r\n <jane@example.com>"), ("display-name", "Jane <jane@example.com>"),
                 ("two-@", "jane@b@example.com"), ("no-domain", "jane@"), ("no-@", "jane.example.com"),
                 ("comment", "jane(comment)@example.com"), ("quoted-local-part", '"jane doe"@example.com'),
                 ("ip-literal", "jane@[127.0.0.1]"), ("leading-dot", ".jane@example.com"),
                 ("space-in-domain", "jane@exa mple.com"), ("two-addresses", "jane@example.com, joe@example.com"),
                 ("hyphen-after-@", "jane@-example.com")]
ADDRESSES = [refused(form, name, value, label)
             for form, name in [("server", "from_address"), ("server", "reply_to"), ("sample", "recipient"),
                                ("member", "email"), ("user-new", "email"), ("user-edit", "email")]
             for label, value in BAD_ADDRESSES]

HOSTNAMES = [
    refused("server", "host", "smtp example.com", "space", "cannot contain spaces"),
    refused("server", "host", "smtp://smtp.example.com", "scheme", "without smtp://"),
    refused("server", "host", "smtp.example.com/submit", "path", "without smtp://"),
    refused("server", "host", "smtp.example.com:587", "port-suffix", "Port field"),
    refused("server", "host", "-smtp.example.com", "leading-hyphen", "not a valid server name"),
    refused("server", "host", "smtp..example.com", "empty-label", "not a valid server name"),
    refused("server", "host", "a" * 64 + ".example.com", "64-char-label", "not a valid server name"),
    refused("server", "host", "", "empty", "required"),
    refused("server", "host", "[127.0.0.1", "unbalanced-["),
    refused("server", "host", "127.0.0.1]", "unbalanced-]"),
    refused("server", "local_hostname", "mail room.example.com", "space", "cannot contain spaces"),
    refused("server", "local_hostname", "mailroom..example.com", "empty-label", "not a valid server name"),
    refused("server", "local_hostname", "[127.0.0.1", "unbalanced-["),
]

URLS = [refused(form, "base_url", value, label, "https://help.example.com")
        for form in ("portal-new", "portal-settings")
        for label, value in [
            ("javascript", "javascript:alert(1)"), ("no-scheme", "help.example.com"),
            ("scheme-relative", "//evil.example"), ("space", "https://help example.com"),
            ("CRLF", "https://help.example.com\r\nSet-Cookie: x=1"), ("ftp", "ftp://help.example.com"),
            ("data", f"data:text/html,{SCRIPT}"), ("no-host", "https://"),
            ("quote-breakout", f'https://help.example.com/">{SCRIPT}')]]


# A required field given only spaces: every form's InputRequired looks at the raw value, the strip filter
# then empties it, and nothing else asks for a value.
BLANKS = [refused(form, name, "   ", "spaces-only", "required")
          for form, name in [("server", "host"), ("server", "from_address"), ("server", "username"),
                             ("server-oauth", "username"), ("server-oauth", "client_id"),
                             ("server-oauth", "token_url"), ("server-oauth", "scope"), ("portal-new", "name"),
                             ("portal-settings", "name"), ("user-new", "email"), ("user-edit", "email"),
                             ("sample", "recipient"), ("sample-htmx", "recipient"), ("egress-probe", "host")]]

# -- OAuth 2.0 (auth_type oauth: Microsoft, or another provider's issuer) ---------------------------

BAD_HTTPS_URLS = [("http", "http://login.example.com/oauth2"), ("javascript", "javascript:alert(1)"),
                  ("data", f"data:text/html,{SCRIPT}"), ("scheme-relative", "//evil.example/oauth2"),
                  ("no-host", "https://"), ("space", "https://login example.com/oauth2"),
                  ("quote-breakout", f'https://login.example.com/">{SCRIPT}'),
                  ("backslash", "https://login.example.com\\@evil.example/"),
                  ("fragment", "https://login.example.com/oauth2#x"), ("file", "file:///etc/passwd")]
OAUTH_URLS = [refused(form, name, value, label, "Enter an https:// address")
              for form, name in [("server-oauth", "authorize_url"), ("server-oauth", "token_url"),
                                 ("server-oauth-other", "issuer")]
              for label, value in BAD_HTTPS_URLS]
LONG_URL = "https://login.example.com/" + "p" * 1980
OAUTH_FIELDS = [
    refused("server-oauth", "client_id", "", "empty", "required"),
    refused("server-oauth", "client_id", "c" * 201, "201-chars", "longer than 200"),
    refused("server-oauth", "client_secret", "s" * 2001, "2001-chars", "longer than 2000"),
    refused("server-oauth", "username", "", "empty", "required"),
    refused("server-oauth", "username", "u" * 321, "321-chars", "longer than 320"),
    refused("server-oauth", "scope", "", "empty", "required"),
    refused("server-oauth", "scope", "s" * 1001, "1001-chars", "longer than 1000"),
    refused("server-oauth", "token_url", "", "empty", "required"),
    refused("server-oauth", "token_url", LONG_URL, "2006-chars", "longer than 2000"),
    refused("server-oauth", "authorize_url", "", "empty-for-delegated", "Enter the authorization URL"),
    refused("server-oauth", "authorize_url", LONG_URL, "2006-chars", "longer than 2000"),
    refused("server-oauth", "tenant", "t" * 201, "201-chars", "longer than 200"),
    refused("server-oauth-other", "issuer", LONG_URL, "2006-chars", "longer than 2000"),
    refused("server-oauth-other", "flow", "app", "app-only-is-microsoft's", "Not a valid choice"),
]
TENANTS = [refused("server-oauth", "tenant", value, label, "A tenant is a GUID or a domain") for label, value in [
    ("space", "example com"), ("slash", "example.com/common"), ("dot-dot-slash", "../common"),
    ("query", "example.com?x=1"), ("fragment", "example.com#x"), ("markup", SCRIPT), ("percent-encoded", "%2e%2e"),
    ("at", "admin@example.com"), ("backslash", "example\\com")]]
OAUTH_CHOICES = [refused("server-oauth", name, value, label, "Not a valid choice")
                 for name, values in {"provider": ["facebook", "", "MICROSOFT"], "cloud": ["mars", "", "GLOBAL"],
                                      "flow": ["implicit", "", "APP"]}.items()
                 for label, value in zip(("unknown", "empty", "upper-case"), values)]
OAUTH_LINES = [refused(form, name, base + tail, label, ONE_LINE_ERROR)
               for form, name, base in [
                   ("server-oauth", "client_id", "mailroom-client-1"), ("server-oauth", "tenant", "example.com"),
                   ("server-oauth", "scope", "https://outlook.office.com/SMTP.Send"),
                   ("server-oauth", "username", "helpdesk@example.com"),
                   ("server-oauth", "token_url", f"{MICROSOFT}/token"),
                   ("server-oauth", "authorize_url", f"{MICROSOFT}/authorize"),
                   ("server-oauth-other", "issuer", "https://auth.example.com")]
               for label, tail in SOME_CONTROLS] + \
              [refused("server-oauth", "client_secret", "Client-Secret" + tail, label, PASSWORD_ERROR)
               for label, tail in [("NUL", "\x00x"), ("CR", "\rx"), ("LF", "\nx")]]

# -- Microsoft Graph, the Gmail API, Exchange Web Services: their own fields ---------------------------

# The bugs these cases found were fixed; a case that shows a new bug gets refused(..., bug=REASON).
USERINFO_BUG = None
URL_BUG = None
BRACKET_BUG = None
HEADER_NAME_BUG = None
HEADER_VALUE_BUG = None
KEY_DEPTH_BUG = None
KEY_EC_BUG = None
TOKEN_URI_BUG = None
CLIENT_EMAIL_BUG = None

ENDPOINT_FIELDS = [("server-graph", "graph_endpoint", "https://graph.microsoft.com", "", 200),
                   ("server-gmail", "gmail_endpoint", "https://gmail.googleapis.com", "", 200),
                   ("server-ews", "ews_url", "https://mail.example.com", "/EWS/Exchange.asmx", 2000)]
ENDPOINTS = [
    refused(form, name, value, label, "Enter an https:// address")
    for form, name, _, _, _ in ENDPOINT_FIELDS for label, value in BAD_HTTPS_URLS
    if form == "server-graph" or label in ("http", "javascript", "quote-breakout")
] + [
    refused(form, name, root + path + tail, label, ONE_LINE_ERROR)
    for form, name, root, path, _ in ENDPOINT_FIELDS
    for label, tail in [("NUL", "\x00x"), ("CRLF-header", "\r\nAuthorization: x")]
] + [
    refused(form, name, root + "/" + "p" * (limit - len(root)), f"{limit + 1}-chars", f"longer than {limit}")
    for form, name, root, _, limit in ENDPOINT_FIELDS
] + [
    refused(form, name, "   ", "spaces-only", "required") for form, name, _, _, _ in ENDPOINT_FIELDS
] + [
    refused(form, name, value, label, bug=bug)
    for form, name, root, path, _ in ENDPOINT_FIELDS
    for label, value, bug in [
        ("userinfo-look-alike", f"{root}@evil.example{path}", USERINFO_BUG),
        ("user-and-password", root.replace("https://", "https://mailer:Secret-Pw-1@") + path, USERINFO_BUG),
        ("port-not-a-number", f"{root}:abc{path}", URL_BUG),
        ("port-99999", f"{root}:99999{path}", URL_BUG),
        ("empty-host", f"https://:443{path}", URL_BUG),
        ("unbalanced-bracket", f"https://[::1{path}", BRACKET_BUG if name == "ews_url" else URL_BUG)]
    if form == "server-ews" or label in ("userinfo-look-alike", "port-not-a-number", "empty-host")
] + [
    refused("server-ews", "ews_url", "https://[mail.example.com]/EWS/Exchange.asmx", "bracketed-name",
            bug=BRACKET_BUG),
] + [
    refused("server-ews", "ews_url", value, label, "Enter the whole EWS address")  # no Autodiscover: the URL itself
    for label, value in [("bare-host", "https://mail.example.com"), ("bare-host-slash", "https://mail.example.com/"),
                         ("bare-host-query", "https://mail.example.com/?wsdl")]
]

MAILBOXES = [refused(form, name, value, label, says)
             for form, name in [("server-graph", "shared_mailbox"), ("server-ews", "mailbox"),
                                ("server-gmail", "username")]
             for label, value, says in [
                 *[(label, value, "") for label, value in BAD_ADDRESSES
                   if label in ("display-name-CRLF", "two-@", "no-domain", "two-addresses")],
                 ("domain-backslash-user", "EXAMPLE\\mailer", "@-sign"),
                 ("262-chars", "a" * 250 + "@example.com", "too long"),
                 ("CRLF+Bcc", "helpdesk@example.com\r\nBcc: x@evil.example", ONE_LINE_ERROR)]]

SETTING_CHOICES = [refused(form, name, value, label, "Not a valid choice") for form, name, values in [
    ("server-graph", "importance", [("unknown", "urgent"), ("upper-case", "HIGH"),
                                    ("NUL-after", "high\x00"), ("markup", SCRIPT)]),
    ("server-graph", "sensitivity", [("unknown", "secret"), ("ews's-confidential", "confidential"),
                                     ("NUL-after", "private\x00")]),
    ("server-graph", "priority", [("x-priority-number", "1"), ("upper-case", "URGENT"), ("markup", SCRIPT)]),
    ("server-ews", "ews_version", [("unknown", "Exchange2007"), ("empty", ""), ("upper-case", "EXCHANGE2019"),
                                   ("NUL-after", "auto\x00"), ("graph's-importance", "normal")]),
    ("server-ews", "mechanism", [("unknown", "GSSAPI"), ("empty", ""), ("upper-case", "NTLM"),
                                 ("NUL-after", "ntlm\x00"), ("smtp's-PLAIN", "PLAIN"),
                                 ("smtp's-CRAM-MD5", "CRAM-MD5")]),
] for label, value in values]

# The message options' custom headers (every protocol; here in Graph's form): an RFC 5322 name that is not one
# Mailroom writes itself, a value of one line that fits a mail's line; the receipt addresses one address each.
SETS_ITSELF, OPTION_ABOVE, NOT_A_NAME = "Mailroom sets itself", "set by the option above", "printable ASCII"
LINE_BREAKS = "line breaks or control characters"
GRAPH_HEADERS = [refused("server-graph", field, value, label, says, bug=bug, also=also)
                 for field, label, value, says, bug, also in [
    *[("headers-0-name", label, value, says, None, {}) for label, value, says in [
        ("Bcc", "Bcc", SETS_ITSELF), ("From", "from", SETS_ITSELF), ("Message-ID", "Message-Id", SETS_ITSELF),
        ("Content-Type", "Content-Type", SETS_ITSELF), ("Content-anything", "Content-X", SETS_ITSELF),
        ("MIME-Version", "MIME-Version", SETS_ITSELF), ("Importance", "Importance", OPTION_ABOVE),
        ("X-Priority", "x-priority", OPTION_ABOVE), ("Disposition-Notification-To", "Disposition-Notification-To",
                                                      OPTION_ABOVE),
        ("space-in-the-name", "X-Help Desk", NOT_A_NAME), ("colon-in-the-name", "X-Portal:", NOT_A_NAME),
        ("non-ASCII-name", "X-Täg", NOT_A_NAME), ("Kelvin-sign-name", "X-\u212a", NOT_A_NAME),
        ("long-s-name", "X-\u017f", NOT_A_NAME), ("77-chars", "X-" + "a" * 75, "at most 76")]],
    *[("headers-0-value", label, value, says, None, {}) for label, value, says in [
        ("CRLF+Bcc-in-a-value", "help\r\nBcc: x@evil.example", LINE_BREAKS),
        ("LF+Bcc-in-a-value", "help\nBcc: x@evil.example", LINE_BREAKS),
        ("VT+Bcc-in-a-value", "help\x0bBcc: x@evil.example", LINE_BREAKS),
        ("NEL+Bcc-in-a-value", "help\x85Bcc: x@evil.example", LINE_BREAKS),
        ("U+2028+Bcc-in-a-value", "help\u2028Bcc: x@evil.example", LINE_BREAKS),
        ("NUL-in-a-value", "help\x00desk", LINE_BREAKS), ("ESC-in-a-value", "help\x1b[2Jdesk", LINE_BREAKS),
        ("BS-in-a-value", "help\x08desk", LINE_BREAKS), ("DEL-in-a-value", "help\x7fdesk", LINE_BREAKS),
        ("901-chars", "v" * 901, "at most 900")]],
    ("headers-0-name", "a-value-without-a-name", "", "Enter the header's name", None, {}),
    ("headers-1-name", "the-same-name-twice", "x-portal", "in the list already", None, {"headers-1-value": "2"}),
    *[(field, label, value, says, None, {}) for field in ("read_receipt_to", "return_receipt_to")
      for label, value, says in [("two-addresses", "a@example.com, b@example.com", "one email address"),
                                 ("no-domain", "receipts@", "one email address"),
                                 ("CRLF+Bcc", "a@example.com\r\nBcc: x@evil.example", ONE_LINE_ERROR)]],
    ("organization", "CRLF+Bcc", "Example\r\nBcc: x@evil.example", ONE_LINE_ERROR, None, {}),
    ("organization", "201-chars", "o" * 201, "", None, {}),
]] + [refused("server-graph", "token_url", "https://login.microsoftonline.com:abc/example.com/oauth2/v2.0/token",
              "port-not-a-number", bug=URL_BUG)]

# The service-account key file: JSON of a Google service account, at most MAX_KEY_BYTES.
NOT_JSON, NOT_A_KEY, NOT_READ = "This is not a JSON key file", "This is not a service-account key", "cannot be read"
EC_PEM = private_pem(ec.generate_private_key(ec.SECP256R1()))
PUBLIC_PEM = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
ENCRYPTED_PEM = RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"a passphrase")).decode()
KEY_JSON = json.dumps(SA_KEY).encode()


def key_of_size(size: int) -> Upload:
    """The key, padded with an extra field to exactly `size` bytes."""
    padded = {**SA_KEY, "comment": ""}
    padded["comment"] = "x" * (size - len(json.dumps(padded).encode()))
    upload = Upload(json.dumps(padded).encode())
    assert len(upload.content) == size
    return upload


KEY_FILES = [refused("server-gmail", "key", upload, label, says, bug=bug) for label, upload, says, bug in [
    ("not-JSON", Upload(b"not json"), NOT_JSON, None),
    ("binary-garbage", Upload(bytes(range(256)) * 8, "key.bin"), NOT_JSON, None),
    ("latin-1", Upload(json.dumps({**SA_KEY, "project_id": "café"}, ensure_ascii=False).encode("latin-1")), NOT_JSON,
     None),
    ("NUL-after-the-JSON", Upload(KEY_JSON + b"\x00"), NOT_JSON, None),
    ("5000-digit-number", Upload(KEY_JSON[:-1] + b', "n": ' + b"9" * 5000 + b"}"), NOT_JSON, None),
    ("a-key-as-PEM", Upload(SA_KEY["private_key"].encode(), "key.pem"), NOT_JSON, None),
    ("JSON-array", Upload(json.dumps([SA_KEY]).encode()), NOT_A_KEY, None),
    ("JSON-string", Upload(b'"service_account"'), NOT_A_KEY, None),
    ("authorized-user", Upload(json.dumps({"type": "authorized_user", "client_id": "1", "client_secret": "s",
                                           "refresh_token": "r"}).encode()), "its type is not", None),
    ("type-upper-case", key_file(type="SERVICE_ACCOUNT"), "its type is not", None),
    ("type-missing", key_file("type"), "its type is not", None),
    ("type-a-list", key_file(type=["service_account"]), "its type is not", None),
    ("type-twice-the-last-wrong", Upload(KEY_JSON[:-1] + b', "type": "external_account"}'), "its type is not", None),
    ("private_key-missing", key_file("private_key"), "has no private_key", None),
    ("private_key-empty", key_file(private_key=""), "has no private_key", None),
    ("private_key-garbled", key_file(private_key=SA_KEY["private_key"][:200] + "!!!!" + SA_KEY["private_key"][204:]),
     NOT_READ, None),
    ("private_key-truncated", key_file(private_key=SA_KEY["private_key"][:400]), NOT_READ, None),
    ("private_key-a-public-key", key_file(private_key=PUBLIC_PEM), NOT_READ, None),
    ("private_key-encrypted", key_file(private_key=ENCRYPTED_PEM), NOT_READ, None),
    ("client_email-missing", key_file("client_email"), "has no client_email", None),
    ("token_uri-missing", key_file("token_uri"), "has no token_uri", None),
    ("token_uri-http", key_file(token_uri="http://oauth2.googleapis.com/token"), "not an https:// address", None),
    ("token_uri-javascript", key_file(token_uri="javascript:alert(1)"), "not an https:// address", None),
    ("token_uri-a-list", key_file(token_uri=["https://oauth2.googleapis.com/token"]), "token_uri is not text", None),
    ("one-byte-over-the-limit", key_of_size(MAX_KEY_BYTES + 1), "too large", None),
    ("empty-file", Upload(b""), "Enter the service-account key", None),
    ("nested-arrays", Upload(b"[" * 15_000), NOT_JSON, KEY_DEPTH_BUG),
    ("nested-objects", Upload(b'{"a":' * 3_000), NOT_JSON, KEY_DEPTH_BUG),
    ("private_key-EC", key_file(private_key=EC_PEM), "", KEY_EC_BUG),
    ("token_uri-https-only", key_file(token_uri="https://"), "", TOKEN_URI_BUG),
    ("token_uri-port-not-a-number", key_file(token_uri="https://oauth2.googleapis.com:abc/token"), "",
     TOKEN_URI_BUG),
    ("token_uri-CRLF", key_file(token_uri="https://oauth2.googleapis.com/token\r\nX-Evil: 1"), "", TOKEN_URI_BUG),
    ("client_email-a-list", key_file(client_email=[SA_KEY["client_email"]]), "", CLIENT_EMAIL_BUG),
]]

GMAIL_FIELDS = [refused("server-gmail", name, value, label, says) for name, label, value, says in [
    ("scope", "empty", "", "required"), ("scope", "spaces-only", "   ", "required"),
    ("scope", "1001-chars", "s" * 1001, "longer than 1000"),
    *[("scope", label, GMAIL_SEND + tail, ONE_LINE_ERROR) for label, tail in [
        ("NUL", "\x00x"), ("CRLF+Bcc", "\r\nBcc: x@evil.example"), ("TAB", "\tx")]],
    ("username", "empty", "", "required"), ("username", "spaces-only", "   ", "required")]] + [
    refused("server-gmail-oauth", "flow", "app", "app-only-is-not-gmail's", "Not a valid choice"),
    refused("server-gmail-oauth", "provider", "GOOGLE", "upper-case-provider", "Not a valid choice")]

CSR_PEM = x509.CertificateSigningRequestBuilder().subject_name(
    x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.com")])).sign(
    ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
EWS_FIELDS = [refused("server-ews", "ews_ca_cert", value, label, says) for label, value, says in [
    ("garbage", "not a certificate", "PEM"), ("a-private-key", KEY, "PEM"), ("a-public-key", PUBLIC_PEM, "PEM"),
    ("a-certificate-request", CSR_PEM, "PEM"), ("truncated-block", PEM[:300], "PEM"),
    ("empty-block", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----", "PEM"),
    ("openssl-trusted-label", PEM.replace("CERTIFICATE", "TRUSTED CERTIFICATE"), "PEM"),
    ("NUL-inside", PEM.replace("\n", "\n\x00", 1), "NUL characters"),
    ("second-block-truncated", PEM + "\ngarbage between\n" + PEM[:300], "cut off or damaged")]] + [
    refused("server-ews", "username", "EXAMPLE\\mailer" + tail, label, ONE_LINE_ERROR)
    for label, tail in SOME_CONTROLS] + [
    refused("server-ews", "username", value, label, says) for label, value, says in [
        ("empty", "", "required"), ("spaces-only", "   ", "required"), ("321-chars", "u" * 321, "longer than 320")]] + [
    refused("server-ews", "password", "Ews-Pass" + tail, label, PASSWORD_ERROR)
    for label, tail in [("NUL", "\x00x"), ("CR", "\rx"), ("LF", "\nx")]] + [
    refused("server-ews", "password", "p" * 1001, "1001-chars", "longer than 1000"),
    refused("server-ews", "confirm_password", "Ews-Pass-7wQ", "mismatch", "do not match")]

# Authentication: a way no protocol has is not a valid choice (another protocol's way: see AUTH_WAYS).
AUTH_CHOICES = [refused(form, "auth_type", value, label, "Not a valid choice")
                for form, own in [("server-graph", "oauth"), ("server-gmail", "service_account"),
                                  ("server-ews", "basic")]
                for label, value in [("unknown", "kerberos"), ("empty", ""), ("upper-case", own.upper()),
                                     ("NUL-after", own + "\x00"), ("a-mechanism", "ntlm")]]

# Each protocol's form, the five ways (new, new by htmx, an edit, Validate, Validate by htmx).
PROTOCOL_WAYS = [refused(f"{way}-{protocol}", name, value, label, says, bug=bug)
                 for way in ("server-htmx", "server-edit", "validate", "validate-htmx")
                 for protocol, name, value, label, says, bug in [
                     ("graph", "graph_endpoint", "javascript:alert(1)", "javascript", "Enter an https://", None),
                     ("graph", "headers-0-value", "help\r\nBcc: x@evil.example", "CRLF+Bcc", LINE_BREAKS, None),
                     ("gmail", "key", Upload(b"not json"), "not-JSON", NOT_JSON, None),
                     ("gmail", "username", "EXAMPLE\\mailer", "domain-backslash-user", "@-sign", None),
                     ("ews", "ews_url", "https://mail.example.com", "bare-host", "Enter the whole EWS address", None),
                     ("ews", "ews_ca_cert", "not a certificate", "garbage", "PEM", None),
                     # loopback: a Validate that got past the form must not look anything up
                     ("ews", "ews_url", "https://127.0.0.1:abc/EWS/Exchange.asmx", "port-not-a-number", "", URL_BUG)]
                 if label != "port-not-a-number" or way.startswith("validate")]

# -- the server form, five ways: new, edit, htmx, Validate, Validate by htmx --------------------------

FIVE_WAYS = [refused(way, name, value, label, says)
             for way in ("server", "server-edit", "server-htmx", "validate", "validate-htmx")
             for name, value, label, says in [
                 ("host", "smtp example.com", "space", "cannot contain spaces"),
                 ("port", "70000", "70000", "from 1 to 65535"),
                 ("sender_name", "Help\r\nBcc: x@evil.example", "CRLF+Bcc", ONE_LINE_ERROR),
                 ("from_address", "jane@", "no-domain", ""),
                 ("ca_cert", "not a certificate", "garbage", "PEM"),
                 ("password", "long enough\x00x", "NUL", PASSWORD_ERROR),
                 ("protocol", "x400", "unknown", "Not a valid choice"),
                 ("mechanism", "GSSAPI", "unknown", "Not a valid choice"),
                 ("timeout", "61", "61", "1 to 60"),
                 ("confirm_password", "something else", "mismatch", "do not match")]
             # new: most of these are in the lists above already
             if way != "server" or name in ("timeout", "confirm_password", "port")]

# -- egress: the portal's lists, the global lists, the probe ----------------------------------------

BAD_RULES = [("three-words", "10.0.0.0/8 25 587", "write a network or host"),
             ("port-0", "10.0.0.0/8 0", "ports go from 1 to 65535"),
             ("port-65536", "smtp.example.com 65536", "ports go from 1 to 65535"),
             ("reversed-range", "10.0.0.0/8 600-500", "ports go from 1 to 65535"),
             ("named-port", "smtp.example.com smtp", "is not a port"),
             ("url", "https://evil.example/", "not a network"),
             ("markup", SCRIPT, "not a network"),
             ("64-char-label", "a" * 64 + ".example", "not a valid host name"),
             ("NUL", "10.0.0.0/8\x00", "NUL characters")]
EGRESS = [refused(form, name, value, label, says)
          for form in ("portal-egress", "global-egress") for name in ("allow", "deny")
          for label, value, says in BAD_RULES]

PROBE = [refused("egress-probe", "host", value, label, says) for label, value, says in [
    ("300-chars", "a" * 300, "at most 253"), ("empty-label", "smtp..example.com", "not a valid server name"),
    ("space", "smtp example.com", "cannot contain spaces"), ("empty", "", "required"),
    ("port-suffix", "smtp.example.com:25", "Port field"), ("scheme", "smtp://smtp.example.com", "without smtp://"),
    ("path", "smtp.example.com/x", "without smtp://"), ("leading-hyphen", "-smtp.example.com", "not a valid"),
    ("64-char-label", "a" * 64 + ".example.com", "not a valid"), ("unbalanced-[", "[127.0.0.1", ""),
    ("unbalanced-]", "::1]", ""), ("bad-a-label", "xn--.example", "not a valid"),
    ("percent", "smtp%2eexample.com", "not a valid"), ("at", "user@smtp.example.com", "not a valid")]] + [
    refused("egress-probe", "port", value, label) for label, value in [
        ("decimal", "25.0"), ("hex", "0x19"), ("range", "25-587"), ("list", "25,587"), ("minus-zero", "-0")]]

# -- people: members, new users, user edits, password changes, sign-in --------------------------------

MEMBERS = [
    refused("member", "email", "nobody@example.com", "unknown-user", "No user has this email"),
    refused("member", "email", "agent@example.com", "already-a-member", "already a member"),
    refused("member", "email", "AGENT@EXAMPLE.COM", "already-a-member-upper-case", "already a member"),
    refused("member", "email", "", "empty", "required"),
    refused("member", "email", "   ", "spaces-only"),  # no user has the address "", whatever the message
] + [refused("member", "role", value, label, "Not a valid choice")
     for label, value in [("superadmin", "superadmin"), ("NUL-after", "admin\x00"), ("title-case", "Admin"),
                          ("number", "1"), ("two-roles", "admin,staff"), ("full-width", "ＡＤＭＩＮ"),
                          ("python-enum", "Role.ADMIN"), ("space-inside", "ad min"), ("markup", SCRIPT)]]

NEW_USERS = [
    refused("user-new", "email", "someone@example.com", "taken", "already exists"),
    refused("user-new", "email", "SomeOne@Example.COM", "taken-other-case", "already exists"),
    refused("user-new", "email", "LESER@bücher.example", "taken-international", "already exists"),
    refused("user-new", "email", "", "empty", "required"),
    refused("user-new", "email", f"{SCRIPT}@example.com", "markup", ""),
    refused("user-new", "password", "", "empty", "required"),
    refused("user-new", "password", "123456789", "9-chars", "at least 10"),
    refused("user-new", "password", "ü" * 9, "9-umlauts", "at least 10"),
]

EDIT_USERS = [  # the user edited is someone@example.com
    refused("user-edit", "email", "agent@example.com", "taken", "already exists"),
    refused("user-edit", "email", "AGENT@Example.COM", "taken-other-case", "already exists"),
    refused("user-edit", "email", "root@example.com", "taken-by-a-super-admin", "already exists"),
    refused("user-edit", "email", "", "empty", "required"),
    refused("user-edit", "email", f"{SCRIPT}@example.com", "markup", ""),
]

PASSWORD_CHANGES = [  # pw@example.com changes their own
    refused("password", "current", "not my password", "wrong", "not your current password"),
    refused("password", "current", f" {PASSWORD} ", "spaces-around", "not your current password"),
    refused("password", "current", "", "empty", "required"),
    refused("password", "new", PASSWORD, "same-as-current", "other than the current one", also={"confirm": PASSWORD}),
    refused("password", "new", "123456789", "9-chars", "at least 10", also={"confirm": "123456789"}),
    refused("password", "new", "", "empty", "required", also={"confirm": ""}),
    refused("password", "confirm", "a new password 2", "mismatch", "do not match"),
    refused("password", "confirm", "a new password 1 ", "trailing-space", "do not match"),
    refused("password", "confirm", "A NEW PASSWORD 1", "other-case", "do not match"),
    refused("password", "confirm", "", "empty", "do not match"),
]

SIGN_IN = [  # whatever comes in the email, never a 500 (the autouse no_server_errors fixture watches)
    refused("sign-in", "email", "", "empty", "required"),
    refused("sign-in", "password", "", "empty", "required"),
    refused("sign-in", "email", "someone@example.com\r\nINFO signed in: root@example.com", "CRLF-log-line",
            ONE_LINE_ERROR),
    refused("sign-in", "email", "x\nsomeone@example.com", "LF-before", ONE_LINE_ERROR),
    refused("sign-in", "email", "someone@example.com\x00", "NUL-after", ONE_LINE_ERROR),
    refused("sign-in", "email", "some\rone@example.com", "CR-inside", ONE_LINE_ERROR),
    refused("sign-in", "email", "\x1b[2Jsomeone@example.com", "ANSI-escape", ONE_LINE_ERROR),
    refused("sign-in", "email", "someone@example.com\u2028x", "U+2028-inside", ONE_LINE_ERROR),
    refused("sign-in", "email", "\x00", "NUL-only", ONE_LINE_ERROR),
]

# -- the sample mail's recipient, as a page and to htmx ------------------------------------------------

BAD_RECIPIENTS = [("empty", "", "required"),
                  ("CRLF-Bcc", "someone@example.org\r\nBcc: x@evil.example", ONE_LINE_ERROR),
                  ("RCPT-smuggling", "someone@example.org>\r\nRCPT TO:<x@evil.example", ONE_LINE_ERROR),
                  ("angle-brackets", "<someone@example.org>", ""),
                  ("semicolon-list", "someone@example.org;x@evil.example", ""),
                  ("source-route", "@evil.example:someone@example.org", ""),
                  ("ipv6-literal", "someone@[IPv6:::1]", ""), ("markup", f"{SCRIPT}@example.org", ""),
                  ("full-width-@", "someone＠example.org", ""), ("dot-before-@", "someone.@example.org", ""),
                  ("double-dot", "some..one@example.org", "")]
SAMPLE = [refused(form, "recipient", value, label, says)
          for form in ("sample", "sample-htmx") for label, value, says in BAD_RECIPIENTS] + \
         [refused("sample-htmx", "recipient", value, label) for label, value in BAD_ADDRESSES]

REFUSED = (ONE_LINE + PASSWORDS + TOO_LONG + NUMBER_CASES + CHOICES + CA_CERTS + ADDRESSES + HOSTNAMES + URLS
           + BLANKS + OAUTH_URLS + OAUTH_FIELDS + TENANTS + OAUTH_CHOICES + OAUTH_LINES + FIVE_WAYS + EGRESS + PROBE
           + MEMBERS + NEW_USERS + EDIT_USERS + PASSWORD_CHANGES + SIGN_IN + SAMPLE + ENDPOINTS + MAILBOXES
           + SETTING_CHOICES + GRAPH_HEADERS + KEY_FILES + GMAIL_FIELDS + EWS_FIELDS + AUTH_CHOICES + PROTOCOL_WAYS)


@pytest.mark.parametrize("form,name,value,says,also", REFUSED)
def test_a_hostile_value_is_refused_beside_its_field_and_nothing_is_saved(world, form, name, value, says, also):
    who, url, valid, htmx = FORMS[form]
    before = database(world)
    response = world.client(who).post(world.url(url), posted({**valid, **also, name: value}), htmx=htmx)
    assert_refused_beside(response, name, says)
    assert database(world) == before


# -- a version no form can have been opened with ---------------------------------------------------------

VERSIONS = [("missing", None), ("empty", ""), ("zero", "0"), ("negative", "-1"), ("not-yet", "2"),
            ("decimal", "1.0"), ("words", "one"), ("2**63-1", str(2**63 - 1)), ("2**63", str(2**63)),
            ("10**30", str(10**30))]


@pytest.mark.parametrize("version", [pytest.param(v, id=label) for label, v in VERSIONS])
def test_an_impossible_version_is_a_409_and_nothing_is_saved(world, version):
    posted = {**VALID, "host": "changed.example.com"}
    if version is not None:
        posted["version"] = version
    before = database(world)
    response = world.client("admin").post(world.url("/p/help/servers/{server}/edit"), posted)
    assert response.status_code == 409, response.text[:300]
    assert "changed since you opened it" in response.text
    assert database(world) == before


# -- accepted: an unusual but legitimate entry is saved, and shown escaped ------------------------------

def accepted(form, changes, label, page, shown=(), signs_in=None):
    return pytest.param(form, changes, page, shown, signs_in, id=f"{form}:{label}")


RULES = "# relays <b>here</b>\n\n  bücher.example 25,587  \n[::1]\n10.0.0.0/8 1024-65535\n*.corp.example"
ACCEPTED = [
    accepted("server", {}, "the-valid-data", "/p/help/servers/", ["Office relay"]),
    accepted("server-htmx", {}, "the-valid-data", "/p/help/servers/", ["Office relay"]),
    accepted("server-edit", {"description": SCRIPT}, "markup-description", "/p/help/servers/", [SCRIPT]),
    accepted("server-oauth", {"description": "OAuth relay"}, "the-valid-data", "/p/help/servers/",
             ["OAuth relay"]),
    accepted("server-oauth-other", {"description": "Other OAuth"}, "the-valid-data", "/p/help/servers/",
             ["Other OAuth"]),
    accepted("server-oauth", {"flow": "app", "authorize_url": "", "cloud": "gcc_high",
                              "tenant": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", "description": "App-only"},
             "app-only-gcc-high-guid-tenant", "/p/help/servers/", ["App-only"]),
    accepted("portal-new", {}, "the-valid-data", "/p/support/settings", ["Support", "https://support.example.com"]),
    accepted("portal-new", {"name": SCRIPT, "slug": "x-1", "base_url": "https://support.example.com:8443/mail-room/"},
             "markup-name-port-path", "/p/x-1/settings", [SCRIPT, "https://support.example.com:8443/mail-room/"]),
    accepted("portal-settings", {"name": "Hilfe & Support «Ü» 📮", "base_url": ""}, "symbols-no-base-url",
             "/p/help/settings", ["Hilfe & Support «Ü» 📮"]),
    accepted("portal-egress", {"allow": RULES, "deny": "169.254.0.0/16"}, "comments-idn-ports-wildcard",
             "/p/help/settings", ["# relays <b>here</b>", "bücher.example 25,587", "*.corp.example"]),
    accepted("global-egress", {"allow": f"{LOOPBACK}\n{RULES}", "deny": "*.evil.example 1-65535"},
             "comments-idn-ports-wildcard", "/settings/egress", ["# relays <b>here</b>", "*.evil.example 1-65535"]),
    accepted("member", {}, "the-valid-data", "/p/help/members", ["someone@example.com"]),
    accepted("member", {"email": "outsider@example.com", "role": " admin "}, "another-portal's-admin",
             "/p/help/members", ["outsider@example.com"]),
    accepted("member", {"email": "LESER@BÜCHER.EXAMPLE"}, "upper-case-international", "/p/help/members",
             ["leser@bücher.example"]),
    accepted("user-new", {}, "the-valid-data", "/users/", ["new@example.com"],
             signs_in=("new@example.com", "long enough 1")),
    accepted("user-new", {"email": "neu@bücher.example", "name": "Jürgen Ünal", "password": "pässwörd-ünïcode"},
             "international", "/users/", ["neu@bücher.example", "Jürgen Ünal"],
             signs_in=("neu@bücher.example", "pässwörd-ünïcode")),
    accepted("user-new", {"email": "new+tag@example.com", "name": SCRIPT}, "markup-name", "/users/",
             ["new+tag@example.com", SCRIPT], signs_in=("new+tag@example.com", "long enough 1")),
    accepted("user-new", {"name": "👩‍💻 מנהלת", "password": "🔑" * 10}, "emoji-right-to-left", "/users/",
             ["👩‍💻 מנהלת"], signs_in=("new@example.com", "🔑" * 10)),
    accepted("user-new", {"email": "O'Brien@Example.COM", "name": '"Quoted" O\'Brien & Co'}, "quotes", "/users/",
             ["o'brien@example.com", '"Quoted" O\'Brien & Co'], signs_in=("o'brien@example.com", "long enough 1")),
    accepted("user-new", {"email": "admin2@example.com", "password": "          x", "is_superadmin": "y"},
             "super-admin-spaces-in-password", "/users/", ["admin2@example.com"],
             signs_in=("admin2@example.com", "          x")),
    accepted("user-edit", {"email": "SomeOne@Example.COM", "name": SCRIPT}, "markup-name-upper-case-email",
             "/users/", ["someone@example.com", SCRIPT], signs_in=("someone@example.com", PASSWORD)),
]


@pytest.mark.parametrize("form,changes,page,shown,signs_in", ACCEPTED)
def test_an_unusual_entry_is_saved_and_shown_escaped(world, form, changes, page, shown, signs_in):
    who, url, valid, htmx = FORMS[form]
    client = world.client(who)
    before = database(world)
    response = client.post(world.url(url), posted({**valid, **changes}), htmx=htmx)
    assert response.status_code in ((204,) if htmx else (303,)), re.findall(r'class="error">([^<]*)<', response.text)
    assert database(world) != before
    html = client.get(page).text
    for text in shown:
        assert str(escape(text)) in html, text
    assert RAW_SCRIPT not in html
    if signs_in:
        Client(world.app).login(*signs_in)


NEW_PASSWORDS = [("umlauts", "pässwörd ünïcode"), ("ten-emoji", "🔑" * 10), ("spaces-around", "  padded password  "),
                 ("tab-inside", "tab\tinside the password"), ("markup", SCRIPT), ("1000-chars", "x" * 1000),
                 ("right-to-left", "كلمة المرور السرية")]


@pytest.mark.parametrize("new", [pytest.param(v, id=label) for label, v in NEW_PASSWORDS])
def test_a_new_password_is_saved_and_signs_in(world, new):
    response = world.client("pw").post("/account/password", {"current": PASSWORD, "new": new, "confirm": new})
    assert response.status_code == 303, re.findall(r'class="error">([^<]*)<', response.text)
    Client(world.app).login("pw@example.com", new)
    old = Client(world.app).post("/login", {"email": "pw@example.com", "password": PASSWORD})
    assert old.status_code == 422 and "not right" in old.text


# -- sign-in's next=: always a path of this app ---------------------------------------------------------

NEXT = [("scheme-relative", "//evil.example", "/"), ("https", "https://evil.example", "/"),
        ("https-with-app-path", "https://evil.example/p/help/servers/", "/"),
        ("backslash", "/\\evil.example", "/"), ("two-backslashes", "\\\\evil.example", "/"),
        ("javascript", "javascript:alert(1)", "/"), ("data", f"data:text/html,{SCRIPT}", "/"),
        ("CRLF-header", "/p/help/servers/\r\nSet-Cookie: x=1", "/"),
        ("LF-location", "/\nLocation: https://evil.example", "/"), ("TAB", "/\t/evil.example", "/"),
        ("three-slashes", "///evil.example", "/"), ("leading-space", " //evil.example", "/"),
        ("scheme-without-slashes", "https:evil.example", "/"), ("encoded-slashes", "/%2F%2Fevil.example", "/"),
        ("userinfo", "//user@evil.example", "/"), ("unknown-path", "/no/such/page", "/"),
        ("NUL", "/p/help/servers/\x00", "/"), ("ideographic-space", "/\u3000/evil.example", "/"),
        ("empty", "", "/"), ("app-path", "/p/help/servers/", "/p/help/servers/"),
        ("app-path-with-query", "/p/help/servers/?x=1", "/p/help/servers/")]


@pytest.mark.parametrize("target,path", [pytest.param(t, p, id=label) for label, t, p in NEXT])
def test_sign_in_only_ever_redirects_to_a_path_of_this_app(world, target, path):
    response = Client(world.app).post("/login?" + urlencode({"next": target}),
                                      {"email": "someone@example.com", "password": PASSWORD})
    assert response.status_code == 303
    location = response.headers["Location"]
    assert not any(ch.isspace() or ch == "\\" or ord(ch) < 32 or ord(ch) == 127 for ch in location), location
    resolved = urlsplit(urljoin("http://localhost/login", location))
    assert (resolved.scheme, resolved.netloc, resolved.path) == ("http", "localhost", path), location
    world.app.url_map.bind("localhost").match(resolved.path, method="GET")  # a page of this app


# -- accepted, and the mail goes out as typed -----------------------------------------------------------

def sent(name, value, label, stored=None):
    return pytest.param(name, value, stored or value, id=f"{name}:{label}")


SENT = [
    sent("description", "Relay 📮 ✉️", "emoji"), sent("description", "ממסר הדואר", "right-to-left"),
    sent("description", "Cafe\u0301 relay", "combining-mark"), sent("description", 'The "Main" relay\'s', "quotes"),
    sent("description", SCRIPT, "markup"), sent("description", "d" * 200, "200-chars"),
    sent("description", "=?utf-8?b?RXZpbA==?=", "encoded-word-look-alike"),
    sent("description", "Family 👨‍👩‍👧 relay", "zero-width-joiner"),
    sent("description", "Tom &amp; <b>Jerry</b>", "entities-and-tags"),
    sent("sender_name", "Help Desk 📮", "emoji"), sent("sender_name", "مكتب المساعدة", "right-to-left"),
    sent("sender_name", 'Help "Desk", Inc.', "quotes-comma"), sent("sender_name", SCRIPT, "markup"),
    sent("sender_name", "=?utf-8?q?Evil?=", "encoded-word-look-alike"), sent("sender_name", "s" * 200, "200-chars"),
    sent("sender_name", "=?utf-8?q?Evil=0D=0ABcc:_victim@example.org?=", "encoded-word-of-a-line-break"),
    sent("sender_name", "A" * 60 + " =?utf-8?q?Evil=0D=0ABcc:_victim@example.org?=", "long-encoded-word-look-alike"),
    sent("sender_name", "Bücher Café " * 12 + "Ende", "long-non-ascii"),
    sent("description", "R" * 60 + " =?utf-8?q?Evil=0D=0ABcc:_victim@example.org?=", "long-encoded-word-look-alike"),
    sent("sender_name", "Help (Desk) \\ Support", "parentheses-backslash"),
    sent("sender_name", "<admin@evil.example>", "an-address-as-the-name"),
    sent("sender_name", "Bücher Café", "latin-1"), sent("sender_name", "Help: Desk; Team", "colon-semicolon"),
    sent("sender_name", "𝔐𝔞𝔦𝔩𝔯𝔬𝔬𝔪", "outside-the-bmp"),
    sent("from_address", "helpdesk@bücher.example", "idn-domain"),
    sent("from_address", "help.desk+tag@example.com", "plus-tag"),
    sent("from_address", "o'brien@example.com", "apostrophe"),
    sent("from_address", "HelpDesk@Example.COM", "upper-case", stored="HelpDesk@example.com"),
    sent("from_address", "helpdesk@relay.local", "special-use-domain"),
    sent("from_address", "a" * 64 + "@example.com", "64-char-local-part"),
    sent("reply_to", "support+x@bücher.example", "idn-domain"), sent("reply_to", "o'brien@example.com", "apostrophe"),
    sent("local_hostname", "mailroom.bücher.example", "idn"), sent("local_hostname", "[127.0.0.1]", "address-literal"),
    sent("local_hostname", "mailroom", "one-label"), sent("local_hostname", "127.0.0.1", "address"),
    sent("host", "[127.0.0.1]", "address-literal"),
    sent("recipient", "someone+tag@example.org", "plus-tag"), sent("recipient", "o'brien@example.org", "apostrophe"),
    sent("recipient", "leser@bücher.example", "idn-domain"), sent("recipient", "x@relay.local", "special-use-domain"),
    sent("recipient", "Someone@EXAMPLE.ORG", "upper-case", stored="Someone@example.org"),
]


def ascii_address(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.encode('idna').decode().lower()}"


def newest_server(world) -> MailServer:
    with world.app.app_context():
        return db.session().exec(select(MailServer).order_by(MailServer.id.desc())).unique().first()


@pytest.mark.parametrize("name,value,stored", SENT)
def test_an_unusual_value_is_saved_shown_escaped_and_the_mail_goes_out_as_typed(world, smtp_peer, name, value,
                                                                                 stored):
    peer = smtp_peer("plain")
    admin = world.client("admin")
    form = {**VALID, "host": peer.host, "port": str(peer.port), "security": "none", "auth_type": "none"}
    recipient = "someone@example.org"
    if name == "recipient":
        recipient = value
    else:
        form[name] = value
    response = admin.post(NEW, form)
    assert response.status_code == 303, field_error(response.text, name)
    server = newest_server(world)
    saved = {**vars(server), **server.settings}
    if name != "recipient":
        assert saved[name] == stored

    answer = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": recipient})
    assert "Email server accepted mail for delivery" in answer.text, answer.text[-1500:]
    [mail] = peer.messages
    from_address = stored if name == "from_address" else VALID["from_address"]
    assert mail.mail_from == ascii_address(from_address)
    assert mail.rcpt_tos == [ascii_address(stored if name == "recipient" else recipient)]
    received = email.message_from_bytes(mail.data, policy=policy.compat32)
    [(author, address)] = getaddresses(received.get_all("From"))  # as mail clients read it: the address,
    author = str(make_header(decode_header(author)))                # then the name's encoded words decoded
    sender_name = stored if name == "sender_name" else VALID["sender_name"]
    assert (author, address) == (sender_name, ascii_address(from_address))
    assert sorted(k.lower() for k in received.keys()) == ["content-transfer-encoding", "content-type", "date", "from",
                                                          "message-id", "mime-version", "reply-to", "subject", "to"]
    raw = email.message_from_bytes(mail.data, policy=policy.compat32)["Subject"]
    subject = str(make_header(decode_header(raw)))  # decoded the way older mail clients do
    assert (stored if name == "description" else VALID["description"]) in subject
    reply_to = stored if name == "reply_to" else VALID["reply_to"]
    assert mail.message["Reply-To"].addresses[0].addr_spec == ascii_address(reply_to)

    edit = admin.get(f"/p/help/servers/{server.id}/edit").text
    pages = [edit, admin.get("/p/help/servers/").text, admin.get("/p/help/history").text, answer.text]
    assert str(escape(stored)) in (answer.text if name == "recipient" else edit)
    for page in pages:
        assert RAW_SCRIPT not in page


# A CA certificate pasted the ways people paste them: stored as clean PEM, and STARTTLS trusts it.
OTHER_PEM = trustme.CA().cert_pem.bytes().decode()
CA_PASTES = [
    pytest.param(lambda pem: f"Our CA, as IT sent it:\n\n{pem}\nValid until 2030, renew in time.\n", 1,
                 id="text-around"),
    pytest.param(lambda pem: OTHER_PEM + pem, 2, id="another-CA-then-the-peer's"),
    pytest.param(lambda pem: pem + "\n\n" + OTHER_PEM, 2, id="the-peer's-then-another-CA"),
    pytest.param(lambda pem: pem.replace("\n", "\r\n"), 1, id="CRLF-line-ends"),
]


@pytest.mark.parametrize("paste,count", CA_PASTES)
def test_a_pasted_ca_certificate_is_stored_as_clean_pem_and_starttls_trusts_it(world, smtp_peer, paste, count):
    peer = smtp_peer("starttls")
    admin = world.client("admin")
    response = admin.post(NEW, peer_form(peer, ca_cert=paste(peer.ca_pem)))
    assert response.status_code == 303, field_error(response.text, "ca_cert")
    server = newest_server(world)
    stored = server.settings["ca_cert"]
    assert stored.startswith("-----BEGIN CERTIFICATE-----") and stored.endswith("-----END CERTIFICATE-----")
    assert stored.count("-----BEGIN CERTIFICATE-----") == count and "\r" not in stored
    assert peer.ca_pem.strip() in stored
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed" in report, report[-1500:]


# -- accepted: a protocol's unusual but legitimate settings are saved as typed, and shown escaped ------------

def kept(form, changes, label, stored=None, shown=(), headers=None, key=None):
    """`stored`: values as saved (a setting, column or message option by name; "kind", "username",
    "provider.<name>" of the credential); `headers`: the custom headers as stored; `key`: the
    service-account key as stored (encrypted)."""
    return pytest.param(form, changes, stored or {}, shown, headers, key, id=f"{form}:{label}")


UTF8_KEY = json.dumps({**SA_KEY, "project_id": "bücher-ü"}, ensure_ascii=False)
KEPT = [
    *[kept(f"{way}-{protocol}", {}, "the-valid-data", {"protocol": protocol, "kind": kind})
      for protocol, kind in (("graph", "oauth_delegated"), ("gmail", "service_account"), ("ews", "password"))
      for way in ("server", "server-htmx", "server-edit") if way != "server-htmx" or protocol == "gmail"],
    # Microsoft Graph
    kept("server-graph", {"graph_endpoint": "https://graph.microsoft.us", "cloud": "gcc_high"}, "national-cloud",
         {"graph_endpoint": "https://graph.microsoft.us"}),
    kept("server-graph", {"graph_endpoint": "https://[::1]:8443/graph/"}, "ipv6-literal-port-path",
         {"graph_endpoint": "https://[::1]:8443/graph/"}),
    kept("server-graph", {"graph_endpoint": "https://graph.bücher.example"}, "idn-host",
         {"graph_endpoint": "https://graph.bücher.example"}),
    kept("server-graph", {"shared_mailbox": "Shared.Box@EXAMPLE.COM"}, "upper-case-domain",
         {"shared_mailbox": "Shared.Box@example.com"}),
    kept("server-graph", {"shared_mailbox": "postfach@bücher.example"}, "idn-shared-mailbox",
         {"shared_mailbox": "postfach@bücher.example"}, ["postfach@bücher.example"]),
    kept("server-graph", {"shared_mailbox": "   "}, "spaces-only-is-the-oauth-mailbox", {"shared_mailbox": ""}),
    kept("server-graph", {"importance": " high "}, "spaces-around-a-choice", {"importance": "high"}),
    kept("server-graph", {"importance": "low"}, "low", {"importance": "low"}),
    kept("server-graph", {"headers-0-value": SCRIPT}, "markup-value", shown=[SCRIPT],
         headers=[{"name": "X-Portal", "value": SCRIPT}]),
    kept("server-graph", {"headers-0-name": SCRIPT}, "markup-is-a-valid-header-name", shown=[SCRIPT],
         headers=[{"name": SCRIPT, "value": "help-desk"}]),
    kept("server-graph", {"headers-0-name": "X-Ticket", "headers-0-value": "42: urgent"}, "a-colon-in-the-value",
         headers=[{"name": "X-Ticket", "value": "42: urgent"}]),
    kept("server-graph", {"headers-0-name": "X-Tab", "headers-0-value": "a\tb"}, "a-tab-in-the-value",
         headers=[{"name": "X-Tab", "value": "a\tb"}]),
    kept("server-graph", {"headers-0-name": "Keywords", "headers-0-value": "invoice"}, "a-name-without-X-",
         headers=[{"name": "Keywords", "value": "invoice"}]),
    kept("server-graph", {"headers-0-name": "", "headers-0-value": "", **{f"headers-{i}-{part}": value
         for i, n in enumerate("ABCDE", 1) for part, value in (("name", f"X-{n}"), ("value", f" {i} "))},
         "headers-6-name": "", "headers-6-value": ""}, "five-between-blank-rows",
         headers=[{"name": f"X-{n}", "value": str(i)} for i, n in enumerate("ABCDE", 1)]),
    kept("server-graph", {"read_receipt_to": "Receipts <Receipts@Bücher.example>", "organization": SCRIPT},
         "a-named-idn-receipt-address-and-markup", {"read_receipt_to": "Receipts <Receipts@Bücher.example>",
                                                    "organization": SCRIPT}, [SCRIPT]),
    kept("server-graph", {"flow": "app", "authorize_url": "", "scope": "https://graph.microsoft.com/.default"},
         "app-only", {"kind": "oauth_app"}),
    kept("server-graph", {"description": SCRIPT, "sender_name": SCRIPT}, "markup-description-and-sender",
         {"description": SCRIPT, "sender_name": SCRIPT}, [SCRIPT]),
    # the Gmail API with a service-account key
    kept("server-gmail", {"key": Upload(json.dumps(SA_KEY).encode("utf-16"))}, "utf-16-key-file", key=SA_KEY),
    kept("server-gmail", {"key": Upload(b"\xef\xbb\xbf" + KEY_JSON)}, "utf-8-with-bom", key=SA_KEY),
    kept("server-gmail", {"key": Upload(UTF8_KEY.encode())}, "utf-8-non-ascii",
         {"provider.project_id": "bücher-ü"}, ["bücher-ü"], key=json.loads(UTF8_KEY)),
    kept("server-gmail", {"key": key_of_size(MAX_KEY_BYTES)}, "exactly-MAX_KEY_BYTES",
         key=json.loads(key_of_size(MAX_KEY_BYTES).content)),
    kept("server-gmail", {"key": key_file(private_key=SA_KEY["private_key"].replace("\n", "\r\n"))}, "CRLF-in-the-pem",
         key={**SA_KEY, "private_key": SA_KEY["private_key"].replace("\n", "\r\n")}),
    kept("server-gmail", {"key": key_file(client_email=f"{SCRIPT}@x.iam.gserviceaccount.com", private_key_id=SCRIPT,
                                          project_id='"quoted" & <b>bold</b>')}, "markup-in-the-key's-facts",
         {"provider.client_email": f"{SCRIPT}@x.iam.gserviceaccount.com", "provider.key_id": SCRIPT},
         [f"{SCRIPT}@x.iam.gserviceaccount.com", '"quoted" & <b>bold</b>']),
    kept("server-gmail", {"username": "Help.Desk@EXAMPLE.COM"}, "upper-case-domain",
         {"username": "Help.Desk@example.com"}),
    kept("server-gmail", {"username": "postfach@bücher.example"}, "idn-mailbox",
         {"username": "postfach@bücher.example"}, ["postfach@bücher.example"]),
    kept("server-gmail", {"scope": SCRIPT}, "markup-scope", {"provider.scope": SCRIPT}, [SCRIPT]),
    kept("server-gmail", {"gmail_endpoint": "https://gmail-gateway.example.com:8443/google"}, "a-gateway",
         {"gmail_endpoint": "https://gmail-gateway.example.com:8443/google"}),
    kept("server-gmail-oauth", {}, "google-consent", {"kind": "oauth_delegated", "provider.provider": "google"}),
    # Exchange Web Services
    kept("server-ews", {"username": "DOMÄNE\\müller"}, "non-ASCII-domain-user", {"username": "DOMÄNE\\müller"},
         ["DOMÄNE\\müller"]),
    kept("server-ews", {"username": f"EXAMPLE\\{SCRIPT}"}, "markup-after-the-domain",
         {"username": f"EXAMPLE\\{SCRIPT}"}, [f"EXAMPLE\\{SCRIPT}"]),
    kept("server-ews", {"username": "EXAMPLE\\mailer\r\n"}, "a-line-break-after-is-trimmed",
         {"username": "EXAMPLE\\mailer"}),
    kept("server-ews", {"ews_url": "https://outlook.office365.com/EWS/Exchange.asmx"},
         "exchange-online-is-warned-about", {"ews_url": "https://outlook.office365.com/EWS/Exchange.asmx"},
         ["Microsoft has been blocking EWS there"]),
    kept("server-ews", {"ews_url": "https://[::1]:8443/EWS/Exchange.asmx"}, "ipv6-literal-port",
         {"ews_url": "https://[::1]:8443/EWS/Exchange.asmx"}),
    kept("server-ews", {"ews_url": "https://mail.bücher.example/EWS/Exchange.asmx"}, "idn-host",
         {"ews_url": "https://mail.bücher.example/EWS/Exchange.asmx"},
         ["https://mail.bücher.example/EWS/Exchange.asmx"]),
    kept("server-ews", {"ews_version": " auto "}, "spaces-around-a-choice", {"ews_version": "auto"}),
    kept("server-ews", {"mechanism": "ntlm", "save_copy": None}, "ntlm-unchecked",
         {"mechanism": "ntlm", "save_copy": False}),
    kept("server-ews", {"mailbox": "   "}, "spaces-only-is-the-from-address", {"mailbox": ""}),
    kept("server-ews", {"ews_ca_cert": f"Our CA, as IT sent it:\n{PEM}\ngarbage between\n{OTHER_PEM}\nrenew in 2030"},
         "two-certificates-with-text-around-and-between", {"ews_ca_cert": (PEM + OTHER_PEM).strip()}),
    kept("server-ews", {"ews_ca_cert": PEM.replace("\n", "\r\n")}, "CRLF-line-ends", {"ews_ca_cert": PEM.strip()}),
    kept("server-ews", {"ews_ca_cert": f"\x1b[2J{PEM}\x7f"}, "control-characters-around", {"ews_ca_cert": PEM.strip()}),
]


def server_saved_by(world, url: str) -> int:
    return world.ids["server"] if "{server}" in url else newest_server(world).id


@pytest.mark.parametrize("form,changes,stored,shown,headers,key", KEPT)
def test_an_unusual_setting_is_saved_as_typed_and_shown_escaped(world, form, changes, stored, shown, headers, key):
    who, url, valid, htmx = FORMS[form]
    client = world.client(who)
    response = client.post(world.url(url), posted({**valid, **changes}), htmx=htmx)
    assert response.status_code == (204 if htmx else 303), re.findall(r'class="error">([^<]*)<', response.text)
    server_id = server_saved_by(world, url)
    with world.app.app_context():
        server = db.session().get(MailServer, server_id)
        columns, settings = {**vars(server)}, dict(server.settings)
    held = credential(world.app, server_id)
    protocol = valid["protocol"]
    assert columns["protocol"] == protocol
    # only this protocol's settings: nothing of a section the protocol does not show
    assert set(settings) == {f.name for f in fields_of(TRANSPORTS[protocol].settings_type)}
    saved = {**columns, **columns["options"], **settings, "kind": held.kind, "username": held.username, "mechanism": held.mechanism,
             **{f"provider.{name}": value for name, value in (held.provider or {}).items()}}
    for name, value in stored.items():
        assert saved[name] == value, name
    if headers is not None:
        assert MessageOptions.from_dict(columns["options"]).to_dict()["headers"] == headers
    if key is not None:
        assert payload(world.app, server_id)["key"] == key
    edit = client.get(f"/p/help/servers/{server_id}/edit").text
    for text in shown:
        assert str(escape(text)) in edit, text
    assert "PRIVATE KEY" not in edit
    for page in (edit, client.get("/p/help/servers/").text, client.get("/p/help/history").text):
        assert RAW_SCRIPT not in page


# Authentication another protocol has (the page offers only the protocol's own): posted with that way's
# fields, it is taken as the protocol's first way, and nothing of the other way is kept.
OTHER_WAYS = {"none": {}, "basic": {"password": "Smuggled-Pw-1", "confirm_password": "Smuggled-Pw-1"},
              "service_account": {"key": key_file(client_email="smuggled@evil.iam.gserviceaccount.com")}}
SECRETS = {"none": set(), "password": {"password"}, "oauth_delegated": {"client_secret"}, "service_account": {"key"}}
AUTH_WAYS = [pytest.param(form, auth_type, kind, id=f"{form}:{auth_type}") for form, auth_type, kind in [
    ("server-graph", "none", "oauth_delegated"), ("server-graph", "basic", "oauth_delegated"),
    ("server-graph", "service_account", "oauth_delegated"), ("server-edit-graph", "basic", "oauth_delegated"),
    ("server-gmail", "none", "service_account"), ("server-gmail", "basic", "service_account"),
    ("server-edit-gmail", "none", "service_account"),
    ("server-ews", "none", "password"), ("server-ews", "service_account", "password"),
    ("server-edit-ews", "service_account", "password"),
    ("server", "service_account", "none"),  # SMTP
]]


@pytest.mark.parametrize("form,auth_type,kind", AUTH_WAYS)
def test_a_way_to_sign_in_the_protocol_does_not_offer_is_never_saved(world, form, auth_type, kind):
    who, url, valid, htmx = FORMS[form]
    client = world.client(who)
    response = client.post(world.url(url), posted({**valid, **OTHER_WAYS[auth_type], "auth_type": auth_type}))
    assert response.status_code == 303, re.findall(r'class="error">([^<]*)<', response.text)
    server_id = server_saved_by(world, url)
    held = credential(world.app, server_id)
    assert held.kind == kind
    assert auth_type_of(held.kind) in TRANSPORTS[valid["protocol"]].auth_types
    assert set(payload(world.app, server_id) if held.secret else {}) == SECRETS[kind]
    assert "smuggled" not in json.dumps(held.provider or {})
    edit = client.get(f"/p/help/servers/{server_id}/edit").text
    assert re.search(rf'<select id="auth_type"[^>]*>.*?<option value="{auth_type_of(kind)}" selected>', edit, re.S)


# A swapped part of the page (re-rendered as the admin types, nothing validated or saved) shows what was
# posted escaped, and the EWS URL's own swap warns about Exchange Online only.
def swap(part, data, trigger, label, warns=None, shows=(), bug=None):
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(part, data, trigger, warns, shows, id=f"{part}:{label}", marks=marks)


def ews_url(value):
    return {"protocol": "ews", "ews_url": value, "_shown": ["ews"]}


SWAPS = [
    swap("ews", ews_url(f'https://mail.example.com/EWS/"><{SCRIPT}'), "ews_url", "markup", False),
    swap("ews", ews_url("javascript:alert(1)"), "ews_url", "javascript", False),
    swap("ews", ews_url("https://mail.example.com/EWS/\x00\r\nX-Evil: 1"), "ews_url", "NUL-CRLF", False),
    swap("ews", ews_url("https://outlook.office365.com/EWS/Exchange.asmx"), "ews_url", "exchange-online", True),
    swap("ews", ews_url("https://OUTLOOK.Office365.com./EWS/Exchange.asmx"), "ews_url",
         "exchange-online-upper-case-trailing-dot", True),
    swap("ews", ews_url("https://outlook.office365.com.evil.example/EWS/Exchange.asmx"), "ews_url",
         "exchange-online-look-alike", False),
    swap("ews", ews_url("https://" + "a" * 3000 + ".example/EWS"), "ews_url", "3000-char-host", False),
    swap("ews", ews_url("https://[::1/EWS/Exchange.asmx"), "ews_url", "unbalanced-bracket", False, bug=BRACKET_BUG),
    swap("ews", ews_url("https://[outlook.office365.com]/EWS/Exchange.asmx"), "ews_url", "bracketed-name", False,
         bug=BRACKET_BUG),
    swap("connection", ews_url("https://[::1/EWS/Exchange.asmx"), "protocol", "ews-unbalanced-bracket",
         bug=BRACKET_BUG),
    swap("connection", {"protocol": "graph", "graph_endpoint": f'https://x/"><{SCRIPT}', "headers": SCRIPT,
                        "shared_mailbox": SCRIPT, "_shown": ["graph"]}, "protocol", "graph-markup",
         shows=[f'https://x/"><{SCRIPT}']),
    swap("endpoints", {**GRAPH, "graph_endpoint": SCRIPT, "cloud": "china"}, "cloud",
         "a-graph-endpoint-of-markup-stays", shows=[SCRIPT]),
    swap("credentials", {**{k: v for k, v in GMAIL.items() if k != "key"}, "username": SCRIPT, "scope": SCRIPT},
         "auth_type", "gmail-service-account-markup", shows=[SCRIPT]),
]


@pytest.mark.parametrize("part,data,trigger,warns,shows", SWAPS)
def test_a_swapped_part_shows_a_hostile_value_escaped_and_saves_nothing(world, part, data, trigger, warns, shows):
    before = database(world)
    response = world.client("admin").post(f"/p/help/servers/new/section/{part}", posted(data), htmx=True,
                                          headers={"HX-Trigger-Name": trigger})
    assert response.status_code == 200, response.text[:300]
    assert RAW_SCRIPT not in response.text
    for text in shows:
        assert str(escape(text)) in response.text, text
    if warns is not None:
        assert response.text.strip().startswith('<div id="ews-online">')
        assert ("Microsoft has been blocking EWS there" in response.text) == warns
    assert database(world) == before


# A swap posted without the parts it re-renders (a hand-made request, or a page of another version):
# 400, never a 500. Each part's answer is recognised by the element it replaces.
PART_ELEMENTS = {"connection": 'id="section-connection"', "credentials": 'id="section-credentials"',
                 "tls": 'id="port-group"', "endpoints": 'id="oauth-endpoints"', "ews": 'id="ews-online"'}
AUTH_POSTED = ["none", "basic", "oauth", "service_account", "bogus", None]  # None: no auth_type at all


@pytest.mark.parametrize("auth_type", AUTH_POSTED)
@pytest.mark.parametrize("protocol", sorted(TRANSPORTS))
@pytest.mark.parametrize("part", sorted(PART_ELEMENTS))
def test_a_swap_without_the_parts_it_needs_is_a_400_not_a_500(world, part, protocol, auth_type):
    data = {"protocol": protocol, **({"auth_type": auth_type} if auth_type else {})}
    before = database(world)
    for url in ("/p/help/servers/new/section/", world.url("/p/help/servers/{server}/section/")):
        response = world.client("admin").post(url + part, data, htmx=True)
        assert response.status_code in (200, 400), response.text[:300]
        if response.status_code == 200:
            assert PART_ELEMENTS[part] in response.text
    assert database(world) == before


@pytest.mark.parametrize("part,data", [
    ("endpoints", {"protocol": "smtp", "auth_type": "basic", "tenant": "example.com"}),
    ("endpoints", {"protocol": "smtp"}),
    ("endpoints", {"protocol": "gmail", "auth_type": "service_account", "cloud": "china"}),
    ("tls", {"protocol": "graph", "security": "tls"}),
    ("ews", {"protocol": "smtp", "ews_url": "https://mail.example.com/EWS/Exchange.asmx"}),
])
def test_a_part_the_posted_choices_do_not_show_is_refused(world, part, data):
    response = world.client("admin").post(f"/p/help/servers/new/section/{part}", data, htmx=True)
    assert response.status_code == 400


# -- route parameters -------------------------------------------------------------------------------------

# Every route with an <id:...> argument: who may reach it with a good id, its methods, the row its id names.
ID_ROUTES = {
    "/p/<slug>/servers/<id:server_id>/edit": ("admin", "GET POST", "server"),
    "/p/<slug>/servers/<id:server_id>/section/<name>": ("admin", "POST", "server"),
    "/p/<slug>/servers/<id:server_id>/validate": ("admin", "POST", "server"),
    "/p/<slug>/servers/<id:server_id>/check": ("admin", "POST", "server"),
    "/p/<slug>/servers/<id:server_id>/toggle": ("admin", "POST", "server"),
    "/p/<slug>/servers/<id:server_id>/move/<any(up, down):direction>": ("admin", "POST", "server"),
    "/p/<slug>/servers/<id:server_id>/remove": ("admin", "GET POST", "server"),
    "/p/<slug>/servers/<id:server_id>/sample": ("admin", "GET POST", "server"),
    "/p/<slug>/servers/<id:server_id>/sample/arrival": ("admin", "POST", "server"),
    "/p/<slug>/servers/<id:server_id>/transcripts": ("admin", "GET", "server"),
    "/p/<slug>/servers/<id:server_id>/oauth/authorize": ("admin", "POST", "server"),
    "/p/<slug>/servers/<id:server_id>/oauth/admin-consent": ("admin", "POST", "server"),
    "/p/<slug>/servers/<id:server_id>/oauth/link": ("admin", "POST", "server"),
    "/p/<slug>/servers/<id:server_id>/oauth/discover": ("admin", "POST", "server"),
    "/p/<slug>/members/<id:membership_id>/role": ("admin", "POST", "membership"),
    "/p/<slug>/members/<id:membership_id>/remove": ("admin", "GET POST", "membership"),
    "/p/<slug>/members/<id:membership_id>/sender": ("admin", "POST", "membership"),
    "/p/<slug>/sender-ids/<id:sender_id>/remove": ("admin", "POST", "sender_id"),
    "/users/<id:user_id>": ("root", "GET POST", "user"),
    "/users/<id:user_id>/reset-password": ("root", "GET POST", "user"),
    "/users/<id:user_id>/remove": ("root", "GET POST", "user"),
    "/p/<slug>/api-keys/<id:key_id>/revoke": ("admin", "GET POST", "api_key"),
    "/p/<slug>/queue/<id:mail_id>": ("admin", "GET", "mail"),
    "/p/<slug>/queue/<id:mail_id>/<any(retry, release, requeue):action>": ("admin", "POST", "mail"),
    "/p/<slug>/queue/<id:mail_id>/delete": ("admin", "GET POST", "mail"),
    "/p/<slug>/smtp-credentials/<id:credential_id>/edit": ("admin", "GET POST", "smtp_credential"),
    "/p/<slug>/smtp-credentials/<id:credential_id>/password": ("admin", "POST", "smtp_credential"),
    "/p/<slug>/smtp-credentials/<id:credential_id>/revoke": ("admin", "GET POST", "smtp_credential"),
    "/p/<slug>/servers/<id:server_id>/smime-verify": ("admin", "POST", "server"),
    "/p/<slug>/smime-certificates/<id:certificate_id>/remove": ("admin", "POST", "smime_certificate"),
}
IDS = [("0", "0"), ("-1", "-1"), ("leading-zero", "01"), ("2**63-1", str(2**63 - 1)), ("2**63", str(2**63)),
       ("10**30", str(10**30)), ("non-numeric", "abc"), ("no-such-row", "999999")]
OTHER_PORTALS = {"server": "{other_server}", "membership": "{other_membership}", "mail": "{other_mail}",
                 "smtp_credential": "{other_credential}", "sender_id": "{other_sender}",
                 "smime_certificate": "{other_smime_certificate}"}  # a row of the portal "other"


def route(who, method, url, label, status=404, data=None):
    return pytest.param(who, method, url, status, data or {}, id=f"{method} {url}:{label}")


def url_of(rule: str, id_value: str = "{server}", **parts) -> str:
    parts = {"slug": "help", "name": "tls", "direction": "up", "action": "retry", **parts}
    url = re.sub(r"<id:\w+>", id_value, rule)
    return re.sub(r"<(?:[^<>]*:)?(\w+)>", lambda m: parts[m.group(1)], url)


SERVER_ROUTE = "/p/<slug>/servers/<id:server_id>"
ROUTES = [route(who, method, url_of(rule, value), label)
          for rule, (who, methods, row) in ID_ROUTES.items() for method in methods.split()
          for label, value in [*IDS, *([("another-portal's", OTHER_PORTALS[row])] if row in OTHER_PORTALS else [])]
          ] + [
    route("admin", "POST", url_of(f"{base}/section/<name>", name=name), label, status, VALID)
    for base in ("/p/<slug>/servers/new", SERVER_ROUTE)
    for label, name, status in [("unknown-section", "nope", 400), ("a-section-not-a-part", "smtp", 400),
                                ("a-template's-name", "_form", 400), ("upper-case", "TLS", 400),
                                ("NUL", "tls%00", 400), ("dot-dot", "..", 400), ("slash", "tls/extra", 404),
                                ("encoded-slash", "tls%2Fextra", 404), ("traversal", "..%2F..%2Fsettings", 404)]
] + [
    route("admin", "POST", url_of("/p/<slug>/servers/new/section/<name>", name=part), f"protocol-{label}", 400,
          {**VALID, "protocol": protocol})
    for part in ("connection", "tls", "credentials")
    for label, protocol in [("unknown", "x400"), ("empty", ""), ("upper-case", "SMTP")]
] + [
    route("admin", "POST", url_of(f"{SERVER_ROUTE}/move/<direction>", direction=direction), f"direction-{label}")
    for label, direction in [("sideways", "sideways"), ("upper-case", "UP"), ("number", "0"), ("NUL", "up%00"),
                             ("two", "up%2Fdown"), ("empty", "")]
] + [
    route("admin", method, url_of(rule, slug=slug), f"slug-{label}")
    for method, rule in [("GET", "/p/<slug>/servers/"), ("GET", "/p/<slug>/settings"), ("POST", "/p/<slug>/members")]
    for label, slug in [("NUL", "help%00"), ("upper-case", "HELP"), ("trailing-space", "help%20"),
                        ("leading-hyphen", "-help"), ("64-chars", "a" * 64), ("dot-dot", ".."),
                        ("emoji", "%F0%9F%93%AE"), ("CRLF", "help%0D%0A"), ("not-a-member", "other"),
                        ("unknown", "nope")]
] + [
    route("admin", "POST", url_of("/p/<slug>/members/<id:membership_id>/role", "{membership}"), f"role-{label}",
          400, data)
    for label, data in [("unknown", {"role": "owner"}), ("empty", {"role": ""}), ("upper-case", {"role": "ADMIN"}),
                        ("superadmin", {"role": "superadmin"}), ("missing", {})]
]


@pytest.mark.parametrize("who,method,url,status,data", ROUTES)
def test_a_hostile_route_parameter_is_refused(world, who, method, url, status, data):
    client = world.client(who)
    before = database(world)
    response = client.get(world.url(url)) if method == "GET" else client.post(world.url(url), data)
    assert response.status_code == status, response.text[:300]
    assert database(world) == before


def test_every_route_with_an_id_is_in_the_table(world):
    with_ids = {}
    for rule in world.app.url_map.iter_rules():
        converters = {type(c).__name__ for c in rule._converters.values()}
        assert "IntegerConverter" not in converters, f"{rule.rule}: ids go through <id:...> (IdConverter)"
        if "IdConverter" in converters and not rule.rule.startswith(SESSIONLESS_PATH):  # the API's: test_api.py
            with_ids.setdefault(rule.rule, set()).update(rule.methods - {"HEAD", "OPTIONS"})
    assert set(with_ids) == set(ID_ROUTES), "ID_ROUTES must list exactly the routes with an <id:...>"
    for rule, methods in with_ids.items():
        assert methods == set(ID_ROUTES[rule][1].split()), rule


# -- egress rules are enforced, IDN ones too --------------------------------------------------------

@pytest.mark.parametrize("rule,host", [
    pytest.param("evil.example", "EVIL.example", id="ascii-upper-case-host"),
    pytest.param("xn--bcher-kva.example", "bücher.example", id="a-label-rule"),
    pytest.param("bücher.example", "bücher.example", id="idn-rule"),
    pytest.param("*.bücher.example", "smtp.bücher.example", id="idn-wildcard-rule"),
])
def test_a_deny_rule_is_saved_and_enforced(world, rule, host):
    root = world.client("root")
    assert root.post("/settings/egress", {"allow": LOOPBACK, "deny": rule}).status_code == 303
    answer = root.post("/settings/egress/probe", {"host": host, "port": "25"})
    assert answer.status_code == 200
    assert re.search(r"Refused: the egress policy refuses [^<]*in the global deny list, line 1 refuses it",
                     answer.text), re.findall(r'role="status"[^>]*>([^<]*)<', answer.text)
