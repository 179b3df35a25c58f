"""The Mail Queue's filter: read from the query string (a GET form, no CSRF token)."""
from datetime import UTC

from wtforms import DateTimeLocalField, SelectChoice, SelectField, StringField
from wtforms.validators import Length, Optional, ValidationError

from ..mailqueue import QueueFilter
from ..models import MailState
from ..pagination import DEFAULT_SIZE, SIZES
from .base import PartForm

STATE_LABELS = {MailState.QUEUED: "Queued", MailState.SENDING: "Sending", MailState.HELD: "Held",
                MailState.SENT: "Sent", MailState.FAILED: "Failed"}


def _recipient(_form, field) -> None:
    value = field.data or ""
    if not value:
        return
    local, at, domain = value.rpartition("@")
    if not at or not domain or "." not in domain.strip(".") or any(ch.isspace() or ch in '"<>,;' for ch in value):
        raise ValidationError("Enter an address (bob@example.com) or a domain (@example.com).")


class QueueFilterForm(PartForm):
    state = SelectField("State", default="", choices=[SelectChoice("", "Any state"), *(
        SelectChoice(state.value, label) for state, label in STATE_LABELS.items())])
    recipient = StringField("Recipient", validators=[Length(max=320), _recipient],
                            description="An address, or @domain for every address there.")
    server = SelectField("Server used", default="")
    since = DateTimeLocalField("Arrived from (UTC)", validators=[Optional()],
                               format=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"])
    until = DateTimeLocalField("Arrived before (UTC)", validators=[Optional()],
                               format=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"])
    q = StringField("Subject or receiver contains", validators=[Length(max=200)])
    size = SelectField("Per page", default=str(DEFAULT_SIZE), choices=[SelectChoice(str(s), str(s)) for s in SIZES],
                       validate_choice=False)

    def __init__(self, formdata, servers: dict[int, str]):
        super().__init__(formdata)
        self.server.choices = [SelectChoice("", "Any server"), *(
            SelectChoice(str(id_), label) for id_, label in servers.items())]

    def validate_until(self, field) -> None:
        if field.data and self.since.data and field.data <= self.since.data:
            raise ValidationError("Choose a time after “Arrived from”.")

    def validate_size(self, field) -> None:
        if field.data not in {str(s) for s in SIZES}:
            field.data = str(DEFAULT_SIZE)  # a page size is no reason for an error

    def chosen(self) -> QueueFilter:
        """The filter (call after validate())."""
        return QueueFilter(
            state=self.state.data or "", recipient=(self.recipient.data or "").lower(),
            server_id=int(self.server.data) if self.server.data else None,
            since=self.since.data.replace(tzinfo=UTC) if self.since.data else None,
            until=self.until.data.replace(tzinfo=UTC) if self.until.data else None,
            text=self.q.data or "")

    def query_args(self) -> dict[str, str]:
        """The filter as query-string values (what links to other pages of it carry)."""
        args = {"state": self.state.data, "recipient": self.recipient.data, "server": self.server.data,
                "since": self.since._value(), "until": self.until._value(), "q": self.q.data}
        args = {name: value for name, value in args.items() if value}
        if self.size.data != str(DEFAULT_SIZE):
            args["size"] = self.size.data
        return args
