"""The Message options section of the server form (Privileged Identity's Organization, receipts,
priority, sensitivity, importance and custom MIME headers), stored in mail_server.options.

Custom headers are name/value rows: "Add a header" and a row's "Remove" post the form to the
section's part ("options") with `_action` add_header or remove_header-N, which comes back with
one row more or less (edit_rows()); nothing is saved until Save.
"""
from wtforms import FieldList, Form, FormField, SelectChoice, SelectField, StringField
from wtforms.validators import Length, ValidationError

from ..mail.options import (IMPORTANCE_LABELS, MAX_HEADERS, PRIORITY_LABELS, SENSITIVITY_LABELS, MessageOptions,
                            address_problem, header_name_problem, header_value_problem)
from .server import COLUMN_STORES, Section, register_section

ADD_ROW = "add_header"
REMOVE_ROW = "remove_header-"  # followed by the row's index


def _address(_form, field) -> None:
    problem = address_problem(field.data or "") if field.data else None
    if problem:
        raise ValidationError(problem[0].upper() + problem[1:] + ".")


class HeaderRow(Form):
    name = StringField("Header name", filters=[lambda v: v.strip() if isinstance(v, str) else v])
    value = StringField("Header value", filters=[lambda v: v.strip() if isinstance(v, str) else v])

    def validate_name(self, field) -> None:
        if not field.data and self.value.data:
            raise ValidationError("Enter the header's name, or remove the row.")
        problem = header_name_problem(field.data) if field.data else None
        if problem:
            raise ValidationError(problem[0].upper() + problem[1:] + ".")

    def validate_value(self, field) -> None:
        problem = header_value_problem(field.data or "")
        if problem:
            raise ValidationError(problem[0].upper() + problem[1:] + ".")


def _choices(labels: dict) -> list[SelectChoice]:
    return [SelectChoice(value.value, label) for value, label in labels.items()]


class OptionsSection(Section):
    name, store = "options", "options"
    template = "servers/_options.html"
    organization = StringField("Organization", validators=[Length(max=200)],
                               description="Written into every mail as its Organization header.")
    read_receipt_to = StringField(
        "Read receipts email", validators=[Length(max=320), _address],
        description="Optional. Asks the recipient's mail program for a read receipt to this address "
                    "(Disposition-Notification-To); the recipient may decline.")
    return_receipt_to = StringField(
        "Return receipt to email", validators=[Length(max=320), _address],
        description="Optional. Asks for a delivery receipt to this address (Return-Receipt-To).")
    priority = SelectField("Priority", default="", choices=_choices(PRIORITY_LABELS),
                           description="X-Priority (1, 3, 5) and Priority (urgent, normal, non-urgent).")
    sensitivity = SelectField("Sensitivity", default="", choices=_choices(SENSITIVITY_LABELS),
                              description="The Sensitivity header (RFC 2156); Normal is written as none.")
    importance = SelectField("Importance", default="", choices=_choices(IMPORTANCE_LABELS),
                             description="The Importance header (RFC 2156).")
    headers = FieldList(FormField(HeaderRow), label="Custom MIME headers", max_entries=MAX_HEADERS)

    def validate_headers(self, field) -> None:
        seen = set()
        for row in field:
            name = (row.form.name.data or "").lower()
            if name and name in seen:
                row.form.name.errors = [*row.form.name.errors, "This header is in the list already."]
                raise ValidationError("A header may be listed once.")
            seen.add(name)


def edit_rows(form, action: str) -> bool:
    """Add an empty header row, or remove one; False when `action` is neither."""
    if "headers" not in form or not action or not (action == ADD_ROW or action.startswith(REMOVE_ROW)):
        return False
    rows = form["headers"]
    kept = [{"name": row.form.name.data or "", "value": row.form.value.data or ""} for row in rows]
    if action == ADD_ROW:
        if len(kept) < MAX_HEADERS:
            kept.append({"name": "", "value": ""})
    else:
        index = action.removeprefix(REMOVE_ROW)
        if index.isdigit() and int(index) < len(kept):
            del kept[int(index)]
    rows.entries, rows.last_index = [], -1
    for row in kept:
        rows.append_entry(row)
    return True


register_section(OptionsSection, "options")
COLUMN_STORES["options"] = lambda values: MessageOptions.from_dict(values).to_dict()
