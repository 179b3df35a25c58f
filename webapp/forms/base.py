"""The base form: trims text, refuses line breaks in one-line fields, knows its hidden sections."""
from flask import request
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField, TextAreaField


def _strip(value):
    return value.strip() if isinstance(value, str) else value


class BaseForm(FlaskForm):
    class Meta:
        def bind_field(self, form, unbound_field, options):
            if unbound_field.field_class is not PasswordField:
                options["filters"] = (_strip, *unbound_field.kwargs.get("filters", ()))
            return unbound_field.bind(form=form, **options)

    def validate(self, extra_validators=None) -> bool:
        valid = super().validate(extra_validators)
        for field in self:
            if _is_one_line(field) and isinstance(field.data, str) and ("\r" in field.data or "\n" in field.data):
                field.errors = [*field.errors, "Line breaks are not allowed here."]
                valid = False
        return valid


def _is_one_line(field) -> bool:
    return isinstance(field, StringField) and not isinstance(field, TextAreaField)


class SectionedForm(BaseForm):
    """A form whose sections show only under a condition (as Indico's HiddenUnless).

    SECTIONS maps a section name to (is_shown(form), field names). A hidden section's
    fields are removed before validation: they are neither validated nor saved, and
    whatever was posted for them is ignored.
    """

    SECTIONS: dict = {}
    SHOWN = "_shown"  # each rendered section posts its name here

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hidden_sections = {name for name, (shown, _) in self.SECTIONS.items() if not shown(self)}
        self._default_unseen_sections()
        self.carried = {}  # name -> value of a hidden section's field, rendered as a hidden input
        for name in self.hidden_sections:
            for field_name in self.SECTIONS[name][1]:
                if field_name in self._fields:
                    self._carry(self._fields[field_name])
                    del self[field_name]

    def _carry(self, field) -> None:
        if isinstance(field, PasswordField):
            return
        if isinstance(field, BooleanField):
            if field.data:
                self.carried[field.name] = "y"
        else:
            value = field._value() if hasattr(field, "_value") else field.data
            if value not in (None, ""):
                self.carried[field.name] = str(value)

    def _default_unseen_sections(self) -> None:
        """A section that was not on the page when it was posted starts from its defaults.

        Otherwise an absent checkbox reads as "off": "Verify the server's certificate"
        would silently turn off when the TLS section first appears.
        """
        if not self.is_submitted():
            return
        seen = set(request.form.getlist(self.SHOWN))
        for name, (_, field_names) in self.SECTIONS.items():
            if name in seen or name in self.hidden_sections:
                continue
            for field_name in field_names:
                field = self._fields.get(field_name)
                if field is not None and not field.raw_data and field.default is not None:
                    field.data = field.default

    def shows(self, section: str) -> bool:
        return section not in self.hidden_sections
