"""SMTP's extra sections of the server form (Privileged Identity's "SSL client certificate
authentication" and "SMTP logging"): the client certificate, shown with TLS, and the transcripts."""
from wtforms import BooleanField, FileField, PasswordField
from wtforms.validators import Length, ValidationError

from ..credentials import SidePassword
from ..mail.client_cert import ClientCertificate, Unreadable, read_upload
from ..mail.smtp import Security
from ..models import SecretPurpose
from .server import SIDE_SOURCES, Section, register_section


def _with_tls(choices) -> bool:
    return choices.protocol == "smtp" and choices.security != Security.NONE


class ClientCertSection(Section):
    name, store, nested = "client_cert", "client_cert", True
    shown = staticmethod(_with_tls)
    template = "servers/_client_cert.html"
    secret = frozenset({"client_cert_file", "client_cert_password"})
    client_cert_enabled = BooleanField(
        "Use SSL client certificate authentication", default=False,
        description="Mailroom presents this certificate in the TLS handshake (SSL/TLS, or after STARTTLS) when "
                    "the server asks for one. Validate says whether it asked and whether it accepted it.")
    client_cert_file = FileField(
        "Certificate file (PEM with its key, or PKCS#12)",
        description="A .pem file with the certificate (and its chain) and the private key, or a .p12 / .pfx file. "
                    "Kept encrypted, used only for the server name and port it was saved for; after saving only its "
                    "subject and expiry are shown.")
    client_cert_password = PasswordField(
        "Certificate password", validators=[Length(max=1000)],
        description="If the file or its key is protected by one. It opens the file once, when you save or "
                    "validate; the key is then kept encrypted by Mailroom, so the password is not stored.")

    def validate_client_cert_file(self, field) -> None:
        upload = field.data
        if not upload or isinstance(upload, ClientCertificate):
            return
        raw = upload.read(200_001) if hasattr(upload, "read") else b""
        if not raw:
            field.data = None
            return
        try:
            field.data = read_upload(raw, self.client_cert_password.data or "")
        except Unreadable as problem:
            field.data = None
            raise ValidationError(str(problem)) from None

    def validate_client_cert_enabled(self, field) -> None:
        if not field.data and isinstance(self.client_cert_file.data, ClientCertificate):
            raise ValidationError("Tick this to use the certificate file you chose.")


class TranscriptSection(Section):
    name, store = "transcripts", "server"
    shown = staticmethod(lambda choices: choices.protocol == "smtp")
    template = "servers/_transcripts_option.html"
    transcripts = BooleanField(
        "Keep SMTP transcripts", default=False,
        description="Every SMTP conversation of this server (Validate, sample mails, delivery) is written to "
                    "instance/logs/ (a few files of 256 KB each, the oldest dropped), without passwords, tokens or "
                    "the message itself (only its size). Admins read the last ones from this page.")


def client_cert_secret(form) -> list[SidePassword]:
    """The certificate bundle beside the credential: wanted when ticked, bound to the server's host and port."""
    wanted = "client_cert_enabled" in form and bool(form["client_cert_enabled"].data)
    if not wanted:
        return [SidePassword(SecretPurpose.CLIENT_CERT, False)]
    chosen = form["client_cert_file"].data
    return [SidePassword(SecretPurpose.CLIENT_CERT, True, client_cert_destination(form),
                         chosen.bundle() if isinstance(chosen, ClientCertificate) else None)]


def client_cert_destination(form) -> dict:
    host = (form["host"].data or "").strip().lower() if "host" in form else ""
    port = form["port"].data if "port" in form and form["port"].data else form.default_port()
    return {"protocol": "smtp", "host": host, "port": int(port)}


register_section(ClientCertSection, "connection", "tls")
register_section(TranscriptSection, "connection")
SIDE_SOURCES.append(client_cert_secret)
