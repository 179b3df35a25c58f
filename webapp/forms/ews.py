"""The Exchange Web Services section of the server form (registered into the connection part).

The sender name and reply-to are the form's Sender part; the username, password and NTLM
(the mechanism) or the OAuth settings are its Authentication part. The Connect URL re-renders
this section when it changes (partial "ews"), so the Exchange Online warning follows it.
"""
from urllib.parse import urlsplit

from wtforms import BooleanField, EmailField, SelectChoice, SelectField, StringField, TextAreaField
from wtforms.validators import InputRequired, Length, Optional, ValidationError

from ..mail.ews_protocol import AUTO, VERSIONS, online_warning
from .server import PARTIALS, Section, register_section
from .validators import email_address, pem_certificates, tls_only_url


def ews_path(_form, field) -> None:
    """The EWS address itself: Mailroom does not use Autodiscover, so a bare host is not enough."""
    value = (field.data or "").strip()
    try:
        path = urlsplit(value).path
    except ValueError:
        return  # tls_only_url says what is wrong with it
    if value and path.strip("/") == "":
        raise ValidationError("Enter the whole EWS address, e.g. https://mail.example.com/EWS/Exchange.asmx.")


class EwsSection(Section):
    name, store = "ews", "settings"
    shown = staticmethod(lambda choices: choices.protocol == "ews")
    template = "servers/_ews.html"
    ews_url = StringField("Connect URL", validators=[InputRequired(), Length(max=2000), tls_only_url, ews_path],
                          description="The EWS address of your Exchange server, usually "
                                      "https://mail.example.com/EWS/Exchange.asmx. Mailroom does not use Autodiscover "
                                      "(its lookups would bypass the egress policy): enter the address itself.")
    ews_version = SelectField("Exchange version", default=AUTO,
                              choices=[SelectChoice(value, label) for value, label in VERSIONS.items()],
                              description="Automatic asks the server (one request more); choose the version to "
                                          "skip that.")
    mailbox = EmailField("Mailbox", validators=[Optional(), email_address, Length(max=320)],
                         description="The primary SMTP address of the mailbox mail is sent from; for app-only OAuth, "
                                     "the mailbox the app impersonates. Empty: the OAuth mailbox, else the From "
                                     "address.")
    save_copy = BooleanField("Save a copy to Sent Items", default=True)
    ews_ca_cert = TextAreaField("CA certificate (PEM, optional)", validators=[Optional(), pem_certificates],
                                description="For an Exchange server whose certificate comes from your own "
                                            "authority: trusted in addition to the public ones.")

    @property
    def online_warning(self) -> str:
        return online_warning(self.ews_url.data or "")


PARTIALS.setdefault("ews", [])  # the section alone, re-rendered when the Connect URL changes
register_section(EwsSection, "connection", "ews")
