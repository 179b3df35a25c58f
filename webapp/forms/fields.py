"""What each field is called, and how its values read, as the forms say it: for History.

Fields are declared once, in their form classes; this reads labels and choices from there.
"""
from functools import cache

from wtforms import SelectField
from wtforms.fields.core import UnboundField

from ..mail.auth import AUTH_LABELS
from ..mail.oauth import FLOW_LABELS
from ..mail.transport import TRANSPORTS
from .portal import MemberForm, PortalForm, PortalSettingsForm, UserEditForm
from .smtp_credential import NewSmtpCredentialForm
from .server import SECTIONS, Choices

NOT_IN_FORMS = {"password": "Password", "order": "Order", "position": "Position in the list", "recipient": "Recipient", "superadmin": "Super-admin",
                "active": "Active", "role": "Role", "auth_type": "Authentication",
                "egress_allow": "Egress allow list", "egress_deny": "Egress deny list", "reason": "Reason",
                "consented_by": "Consented by", "tenant": "Tenant", "client_secret": "Client secret",
                "filter": "Filter", "count": "Messages", "mail_sender": "Mail sender"}


# Fields of events about something other than a mail server, named like a server form's field
# ("key", the Gmail service-account key): what they are called there, by the event's kind.
EVENT_FIELD_LABELS = {"api_key": {"key": "API key"}, "sender_id": {"address": "Sender ID"}}


def field_labels(protocol: str | None = None, auth_type: str | None = None, action: str = "") -> dict[str, str]:
    """Two sections may both have a field of one name ("mailbox" of two protocols, "username" of
    Basic and OAuth): it is called what the change's protocol and authentication call it, when
    the change says which."""
    labels = _field_labels(tuple(SECTIONS), protocol if protocol in TRANSPORTS else None, auth_type or "")
    own = EVENT_FIELD_LABELS.get(action.partition(".")[0])
    return {**labels, **own} if own else labels


def new_value_of(changes: dict, name: str) -> str | None:
    change = changes.get(name)
    return str(change[-1]) if isinstance(change, list) and change and change[-1] is not None else None


@cache
def _field_labels(_sections: tuple[str, ...], protocol: str | None, auth_type: str) -> dict[str, str]:
    labels = dict(NOT_IN_FORMS)
    sections = list(SECTIONS.values())
    if protocol or auth_type:
        choices = Choices(protocol or "", "", auth_type)
        sections.sort(key=lambda section: not section.shown(choices))
    for form in (*sections, PortalForm, PortalSettingsForm, MemberForm, UserEditForm, NewSmtpCredentialForm):
        for name, unbound in _declared(form):
            labels.setdefault(name, unbound.kwargs.get("label") or next(
                (arg for arg in unbound.args if isinstance(arg, str)), name))  # a FieldList's first is its field
    return labels


def _choice_labels() -> dict[str, dict[str, str]]:
    return _choice_labels_for(tuple(SECTIONS), tuple(TRANSPORTS))


@cache
def _choice_labels_for(_sections: tuple[str, ...], _transports: tuple[str, ...]) -> dict[str, dict[str, str]]:
    labels = {"auth_type": {str(k): v for k, v in AUTH_LABELS.items()},
              "flow": {str(k): v for k, v in FLOW_LABELS.items()},  # the form sets these choices per protocol
              "mechanism": {str(k): v for t in TRANSPORTS.values() for k, v in getattr(t, "mechanisms", {}).items()}}
    for form in (*SECTIONS.values(), MemberForm, PortalSettingsForm, NewSmtpCredentialForm):
        for name, unbound in _declared(form):
            choices = unbound.kwargs.get("choices")
            if unbound.field_class is SelectField and choices:
                labels.setdefault(name, {str(c.value): c.label for c in choices})
    return labels


def describe(field: str, value, protocol: str | None = None) -> str:
    """A stored value as the form shows it: "SSL/TLS (implicit)", not "tls"."""
    if value is None or value == "":
        return "—"
    if value is True or value is False:
        return "yes" if value else "no"
    if field == "protocol":
        transport = TRANSPORTS.get(str(value))
        return transport.label if transport else str(value)
    if field == "mechanism" and protocol in TRANSPORTS:  # "auto" is worded per protocol
        own = getattr(TRANSPORTS[protocol], "mechanisms", {})
        if str(value) in own:
            return own[str(value)]
    return _choice_labels().get(field, {}).get(str(value), str(value))


def _declared(form):
    return [(name, getattr(form, name)) for name in dir(form) if isinstance(getattr(form, name), UnboundField)]
