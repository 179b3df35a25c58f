"""The base forms: text is trimmed, one-line fields refuse control characters and line
separators, and a password refuses what no protocol can carry (NUL, CR, LF)."""
import re

from flask_wtf import FlaskForm
from wtforms import FieldList, Form, FormField, PasswordField, StringField, TextAreaField

from .render import focus_first_error

ONE_LINE_ERROR = "Control characters and line breaks are not allowed here."
PASSWORD_ERROR = "A password cannot contain line breaks or NUL characters."
# The characters of the categories Cc (controls: NUL, CR, LF, VT, FF, NEL, ...), Zl (U+2028) and Zp
# (U+2029); Unicode never changes which characters these categories hold.
_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _strip(value):
    return value.strip() if isinstance(value, str) else value


def breaks_a_line(text: str) -> bool:
    return _BREAKING.search(text) is not None


def check_lines(form) -> bool:
    """Add the errors for characters a field may not hold; False if there were any."""
    valid = True
    for field in form:
        data = field.data if isinstance(field.data, str) else ""
        if isinstance(field, PasswordField):
            if any(ch in data for ch in "\0\r\n"):
                field.errors = [*field.errors, PASSWORD_ERROR]
                valid = False
        elif isinstance(field, StringField) and not isinstance(field, TextAreaField) and breaks_a_line(data):
            field.errors = [*field.errors, ONE_LINE_ERROR]
            valid = False
        elif isinstance(field, TextAreaField) and "\0" in data:
            field.errors = [*field.errors, "NUL characters are not allowed here."]
            valid = False
    return valid


def check_blank(form) -> bool:
    """InputRequired looks at the raw value, so "   " passes it; after trimming it is empty."""
    valid = True
    for field in form:
        if field.flags.required and field.data == "" and not field.errors:
            field.errors = [*field.errors, field.gettext("This field is required.")]
            valid = False
    return valid


class _Meta:
    def bind_field(self, form, unbound_field, options):
        if unbound_field.field_class not in (PasswordField, FieldList, FormField):  # these two take no filters
            options["filters"] = (_strip, *unbound_field.kwargs.get("filters", ()))
        return unbound_field.bind(form=form, **options)


class BaseForm(FlaskForm):
    """A whole page's form (sign-in, portal, members...): CSRF token included."""

    class Meta(_Meta):
        pass

    def validate(self, extra_validators=None) -> bool:
        valid = super().validate(extra_validators)  # resets every field's errors: check_lines after it
        valid = check_lines(self) and valid
        valid = check_blank(self) and valid
        focus_first_error(self)
        return valid


class PartForm(Form):
    """A part of a bigger form (a section of the server form): no CSRF field of its own,
    the page's token covers it."""

    class Meta(_Meta):
        pass

    def validate(self, extra_validators=None) -> bool:
        valid = super().validate(extra_validators)
        valid = check_lines(self) and valid
        return check_blank(self) and valid
