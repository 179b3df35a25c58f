"""The one way to render a field: label, control, help text, errors.

Written in Python and called from templates as `render_field(field, ...)`: WTForms'
widgets build every attribute through Markup.format, and nested Jinja macros cost as
much again; plain string building with escape() is a fraction of both. Values are
escaped here; attribute names come from templates only.
"""
from flask_wtf.csrf import generate_csrf
from markupsafe import Markup, escape
from wtforms import SelectChoice

RETYPE = "Type it again: Mailroom never sends a password back to the browser."
RECHOOSE = "Choose the file again: Mailroom never sends a key back to the browser."


def attributes(attrs: dict) -> str:
    parts = []
    for name, value in attrs.items():
        if value is None or value is False:
            continue
        parts.append(f" {name}" if value is True else f' {name}="{escape(value)}"')
    return "".join(parts)


def control(field, attrs: dict) -> str:
    kind, ident, name = field.type, escape(field.id), escape(field.name)
    extra = attributes(attrs)
    if kind == "BooleanField":
        checked = " checked" if field.data else ""
        return f'<input type="checkbox" id="{ident}" name="{name}" value="y"{checked}{extra}>'
    if kind == "SelectField":
        options = "".join(f'<option value="{escape(value)}"{" selected" if selected else ""}>{escape(label)}</option>'
                          for value, label, selected in _options(field))
        return f'<select id="{ident}" name="{name}"{extra}>{options}</select>'
    if kind == "TextAreaField":
        return f'<textarea id="{ident}" name="{name}"{extra}>\n{escape(field._value())}</textarea>'
    if kind in ("PasswordField", "FileField"):  # never a value: a secret, or a file chosen again
        input_type = "password" if kind == "PasswordField" else "file"
        return f'<input type="{input_type}" id="{ident}" name="{name}"{extra}>'
    return (f'<input type="{field.widget.input_type}" id="{ident}" name="{name}" '
            f'value="{escape(field._value())}"{extra}>')


def _options(field):
    """(value, label, selected): read from the SelectChoice list itself where the form gives one
    (WTForms' iter_choices builds a new object per option, a tenth of the page's rendering)."""
    choices, data, coerce = field.choices, field.data, field.coerce
    if isinstance(choices, list) and all(isinstance(c, SelectChoice) for c in choices):
        return [(c.value, c.label, coerce(c.value) == data) for c in choices]
    return [(c.value, c.label, c.selected) for c in field.iter_choices()]


def help_text(field, hint: str | None = None, retype: bool = False) -> Markup:
    ident = escape(field.id)
    if field.errors:
        return Markup(f'<small id="{ident}-help" class="error">{escape(" ".join(field.errors))}</small>')
    if retype:
        again = RECHOOSE if field.type == "FileField" else RETYPE
        return Markup(f'<small id="{ident}-help" class="retype">{again}</small>')
    if hint or field.description:
        return Markup(f'<small id="{ident}-help">{escape(hint or field.description)}</small>')
    return Markup("")


def render_field(field, hint: str | None = None, retype: bool = False, **kwargs) -> Markup:
    """Label, control and help; keyword arguments become attributes (hx_post -> hx-post)."""
    attrs = {name.replace("_", "-"): value for name, value in kwargs.items()}
    if field.render_kw:
        attrs.update(field.render_kw)
    if field.flags.required:
        attrs["aria-required"] = "true"
    if field.errors:
        attrs["aria-invalid"] = "true"
    if field.errors or field.description or hint or retype:
        attrs["aria-describedby"] = f"{field.id}-help"
    label = escape(field.label.text)
    if field.type == "BooleanField":
        html = f"<label>{control(field, attrs)} {label}</label>"
    else:
        html = f'<label for="{escape(field.id)}">{label}</label>\n{control(field, attrs)}'
    return Markup(f"{html}\n{help_text(field, hint, retype)}")


def focus_first_error(fields) -> None:
    """The first field with an error gets autofocus (htmx honours it after a swap too)."""
    for field in fields:
        if field.errors:
            field.render_kw = {**(field.render_kw or {}), "autofocus": True}
            return


def seen(section: str) -> Markup:
    """Marks a section as on the page, so a re-render keeps its values instead of its defaults."""
    return Markup(f'<input type="hidden" name="_shown" value="{escape(section)}">')


def carry(form, section: str) -> Markup:
    """A hidden section's values ride along, so showing it again restores them."""
    return Markup("".join(f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
                          for name, value in form.carried.get(section, {}).items()))


def csrf() -> Markup:
    return Markup(f'<input type="hidden" name="csrf_token" value="{escape(generate_csrf())}">')


def form_errors(form) -> Markup:
    if not form.form_errors:
        return Markup("")
    return Markup('<div class="form-errors" role="alert">'
                  + "".join(f"<p>{escape(error)}</p>" for error in form.form_errors) + "</div>")


def init_app(app) -> None:
    """Called as functions, not Jinja macros: a macro imported into every partial costs a
    module instantiation per include."""
    app.jinja_env.globals.update(render_field=render_field, field_help=help_text, seen=seen, carry=carry, csrf=csrf,
                                 form_errors=form_errors)
