from wtforms import IntegerField, StringField, TextAreaField
from wtforms.validators import InputRequired, NumberRange, ValidationError

from ..mail.egress import parse_rules
from .base import BaseForm
from .validators import hostname

RULES_HELP = ("One rule per line: a network (10.0.0.0/8, ::1), a host or host pattern (smtp.example.com, "
              "*.corp.example) or *, optionally followed by ports (25,465,587 or 1024-65535). # starts a comment.")


def rules(_form, field) -> None:
    try:
        parse_rules(field.data or "", field.label.text)
    except ValueError as error:
        raise ValidationError(f"Not a rule: {error}") from None


class EgressForm(BaseForm):
    allow = TextAreaField("Allow", validators=[rules], description=RULES_HELP)
    deny = TextAreaField("Deny", validators=[rules], description="Checked before the allow list. " + RULES_HELP)


class EgressProbeForm(BaseForm):
    host = StringField("Host", validators=[InputRequired(), hostname])
    port = IntegerField("Port", default=25, validators=[InputRequired(), NumberRange(1, 65535)])
