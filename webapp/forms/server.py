"""The server form. Sections appear by protocol, security and authentication.

Later protocols (EWS, Graph, Gmail API) and OAuth 2.0 add a choice, a section and
its fields here; the view and templates pick sections by name.
"""
from wtforms import BooleanField, SelectChoice, HiddenField, EmailField, IntegerField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.validators import EqualTo, ValidationError, InputRequired, Length, NumberRange, Optional

from ..mail.config import DEFAULT_PORTS, AuthMechanism, Security
from .base import SectionedForm
from .validators import email_address, hostname, pem_certificates

PROTOCOL_LABELS = {"smtp": "SMTP/SMTPS"}
AUTH_LABELS = {"none": "None", "basic": "Basic"}
PROTOCOLS = [SelectChoice(value, label) for value, label in PROTOCOL_LABELS.items()]
SECURITY_CHOICES = [
    SelectChoice(Security.NONE.value, "None"),
    SelectChoice(Security.STARTTLS.value, "STARTTLS (explicit)"),
    SelectChoice(Security.TLS.value, "SSL/TLS (implicit)"),
    SelectChoice(Security.AUTO.value, "Automatic (STARTTLS when offered)"),
]
MECHANISMS = [SelectChoice(m.value, "Automatic" if m is AuthMechanism.AUTO else m.value) for m in AuthMechanism]


def _security(form) -> Security:
    try:
        return Security(form.security.data)
    except (ValueError, AttributeError):
        return Security.STARTTLS


class ServerForm(SectionedForm):
    SECTIONS = {
        "smtp": (lambda f: f.protocol.data == "smtp", ["host", "security", "port", "timeout"]),
        "tls": (lambda f: f.protocol.data == "smtp" and f.security.data != Security.NONE,
                ["verify_cert", "ca_cert"]),
        "basic": (lambda f: f.protocol.data == "smtp" and f.requires_auth.data,
                  ["username", "password", "confirm_password", "auth_mechanism"]),
    }
    SECRET_FIELDS = frozenset({"password"})
    has_stored_password = False  # the view sets it when editing a server that has one

    version = HiddenField()
    description = StringField("Description", validators=[Length(max=200)],
                              description="A name for this server, e.g. \"Office relay\".")
    protocol = SelectField("Connection protocol", choices=PROTOCOLS, default="smtp")
    enabled = BooleanField("Enabled", default=True)

    host = StringField("Server name / IP address", validators=[InputRequired(), hostname])
    security = SelectField("Security", choices=SECURITY_CHOICES, default=Security.STARTTLS.value)
    port = IntegerField("Port", validators=[Optional(), NumberRange(1, 65535, "Enter a port from 1 to 65535.")],
                        description="Leave empty for the default of the chosen security.")
    timeout = IntegerField("Server timeout (seconds)", default=10,
                           validators=[InputRequired(), NumberRange(1, 60, "Enter 1 to 60 seconds.")])
    verify_cert = BooleanField("Verify the server's certificate", default=True)
    ca_cert = TextAreaField("CA certificate (PEM, optional)", validators=[Optional(), pem_certificates],
                            description="Add your own certificate authority when the server's certificate "
                                        "is not signed by a public one.")

    requires_auth = BooleanField("Server requires authentication?")
    username = StringField("Username", validators=[InputRequired(), Length(max=320)])
    password = PasswordField("Password", validators=[Length(max=1000)])
    confirm_password = PasswordField("Confirm password",
                                     validators=[EqualTo("password", "The passwords do not match.")])
    clear_password = BooleanField("Remove the stored password")
    auth_mechanism = SelectField("Authentication mechanism", choices=MECHANISMS, default=AuthMechanism.AUTO.value)

    from_address = EmailField("From address", validators=[InputRequired(), email_address, Length(max=320)])
    sender_name = StringField("Sender name", validators=[Length(max=200)],
                              description="Shown as the sender in mail clients.")
    reply_to = EmailField("Reply-to address", validators=[Optional(), email_address, Length(max=320)])
    admin_address = EmailField("Admin mail address", validators=[Optional(), email_address, Length(max=320)],
                               description="Receives notices about this server.")
    max_connections = IntegerField("Max. concurrent connections", default=5,
                                   validators=[InputRequired(), NumberRange(1, 100, "Enter 1 to 100.")])

    def default_port(self) -> int:
        return DEFAULT_PORTS[_security(self)]

    def follow_port_default(self) -> None:
        """After a security change: a port that was empty or some security's default follows along."""
        if "port" in self and (self.port.data is None or self.port.data in DEFAULT_PORTS.values()):
            self.reset_port()

    def reset_port(self) -> None:
        if "port" in self:
            self.port.data = self.default_port()
            self.port.raw_data = None  # else the field re-renders what was posted

    def validate_password(self, field) -> None:
        """A new server with authentication needs a password (a stored one may be kept)."""
        if not field.data and (not self.has_stored_password or self.clear_password.data):
            raise ValidationError("Enter the password, or turn off authentication.")

    def new_password(self) -> str | None:
        return self.password.data or None if "password" in self else None

    def clears_password(self) -> bool:
        return bool(self.clear_password.data)

    def settings(self) -> dict:
        """The values to store, hidden sections excluded (their fields are gone)."""
        values = {name: "" if field.data is None and isinstance(field, StringField) else field.data
                  for name, field in self._fields.items() if name in _STORED and name != "requires_auth"}
        values["auth_type"] = "basic" if self.requires_auth.data else "none"
        if "port" in values and values["port"] is None:
            values["port"] = self.default_port()
        return values


_STORED = {
    "description", "protocol", "enabled", "host", "security", "port", "timeout", "verify_cert", "ca_cert",
    "requires_auth", "username", "auth_mechanism", "from_address", "sender_name", "reply_to",
    "admin_address", "max_connections",
}
