"""The SMTP credential form: what an admin sets for a device that submits mail over SMTP."""
import re

from flask import current_app
from wtforms import IntegerField, SelectChoice, SelectField, StringField, TextAreaField
from wtforms.validators import InputRequired, Length, NumberRange, Optional, ValidationError

from ..addresses import is_host_name, normalize_address
from ..models import FromPolicy
from ..submission.credentials import MIB, CredentialValues, parse_networks
from .base import BaseForm

USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")
FROM_POLICIES = [SelectChoice(FromPolicy.LISTED.value, "Only the From addresses listed below"),
                 SelectChoice(FromPolicy.REWRITE.value, "Rewrite From to the portal's From")]


def _networks(_form, field) -> None:
    try:
        networks = parse_networks(field.data or "")
    except ValueError as error:
        raise ValidationError(f"{str(error)[0].upper()}{str(error)[1:]}.") from None
    field.data = "\n".join(str(network) for network in networks)


def _from_addresses(form, field) -> None:
    lines, cleaned = [line.strip() for line in (field.data or "").splitlines() if line.strip()], []
    for line in lines:
        if line.startswith("@"):
            if not is_host_name(line[1:]):
                raise ValidationError(f"“{line}” is not a domain: write @example.com for every address of it.")
            cleaned.append(line.lower().rstrip("."))
            continue
        try:
            cleaned.append(normalize_address(line))
        except ValueError as error:
            raise ValidationError(f"“{line}” is not an address: {error}") from None
    if not cleaned and form.from_policy.data == FromPolicy.LISTED:
        raise ValidationError("List at least one From address the device may use, or choose to rewrite From.")
    field.data = "\n".join(dict.fromkeys(cleaned))


def _username(_form, field) -> None:
    if field.data and not USERNAME.fullmatch(field.data):
        raise ValidationError("Use letters, digits and . _ @ + - (up to 100 characters), starting with a letter "
                              "or a digit.")


class SmtpCredentialForm(BaseForm):
    name = StringField("Name", validators=[InputRequired(), Length(max=100)],
                       description="What it is for, e.g. “Scanner, 2nd floor”.")
    from_policy = SelectField("From address", choices=FROM_POLICIES, default=FromPolicy.LISTED.value)
    from_addresses = TextAreaField(
        "Allowed From addresses", validators=[_from_addresses],
        description="One per line: an address, or @example.com for every address of a domain. The device's "
                    "MAIL FROM and its message's From must be one of them.")
    client_networks = TextAreaField(
        "Allowed client networks", validators=[_networks],
        description="Networks the device connects from, one per line (10.1.0.0/16, 192.0.2.7). Empty: any address.")
    plain_networks = TextAreaField(
        "Sign-in without TLS from", validators=[_networks],
        description="Only for devices that cannot do TLS: their networks, one per line. The password then "
                    "crosses those networks readable. Empty: TLS is always required.")
    max_message_mb = IntegerField("Message size limit (MB)", validators=[InputRequired(), NumberRange(min=1)],
                                  default=10)
    per_minute = IntegerField("Messages per minute", validators=[Optional(), NumberRange(min=1, max=1_000_000)],
                              description="Empty: no limit.")
    per_day = IntegerField("Messages per day", validators=[Optional(), NumberRange(min=1, max=100_000_000)],
                           description="A calendar day in UTC. Empty: no limit.")

    def validate_max_message_mb(self, field) -> None:
        largest = current_app.config["SUBMISSION_MAX_MESSAGE_BYTES"] // MIB
        if field.data is not None and field.data > largest:
            raise ValidationError(f"At most {largest} MB (the listener's limit, SUBMISSION_MAX_MESSAGE_BYTES).")

    def values(self) -> CredentialValues:
        return CredentialValues(
            name=self.name.data, from_policy=FromPolicy(self.from_policy.data), from_addresses=self.from_addresses.data,
            client_networks=self.client_networks.data, plain_networks=self.plain_networks.data,
            max_message_bytes=self.max_message_mb.data * MIB, per_minute=self.per_minute.data,
            per_day=self.per_day.data)

    @classmethod
    def of(cls, values: CredentialValues) -> "SmtpCredentialForm":
        return cls(formdata=None, data={
            "name": values.name, "from_policy": str(values.from_policy), "from_addresses": values.from_addresses,
            "client_networks": values.client_networks, "plain_networks": values.plain_networks,
            "max_message_mb": max(1, values.max_message_bytes // MIB), "per_minute": values.per_minute,
            "per_day": values.per_day})


class NewSmtpCredentialForm(SmtpCredentialForm):
    username = StringField("Username", validators=[Length(max=100), _username],
                           description="Empty: Mailroom makes one. Unique across all portals; it cannot be changed "
                                       "later. The password is always made by Mailroom and shown once.")
