"""The search box and page size of a list that grows, and History's filter: read from the query
string (GET forms, no CSRF token)."""
from datetime import UTC

from wtforms import DateTimeLocalField, SearchField, SelectChoice, SelectField, StringField
from wtforms.validators import Length, Optional, ValidationError

from ..pagination import DEFAULT_SIZE, SIZES
from .base import PartForm

SIZE_CHOICES = [SelectChoice(str(s), str(s)) for s in SIZES]


class ListSearchForm(PartForm):
    q = SearchField("Search", validators=[Length(max=200)])
    size = SelectField("Per page", default=str(DEFAULT_SIZE), choices=SIZE_CHOICES, validate_choice=False)

    def __init__(self, formdata, label: str, description: str = ""):
        super().__init__(formdata)
        self.q.label.text, self.q.description = label, description

    def validate_size(self, field) -> None:
        if field.data not in {str(s) for s in SIZES}:
            field.data = str(DEFAULT_SIZE)  # a page size is no reason for an error

    @property
    def text(self) -> str:
        """What to search for; "" while the search has errors (a NUL, say: PostgreSQL refuses it
        in a query, so nothing that counts or lists may use it)."""
        return "" if self.q.errors else self.q.data or ""

    @property
    def page_size(self) -> int:
        return int(self.size.data) if self.size.data in {str(s) for s in SIZES} else DEFAULT_SIZE

    def query_args(self) -> dict[str, str]:
        """The search as query-string values (what the links to its other pages carry)."""
        args = {name: value for name, value in self._args().items() if value}
        if self.size.data != str(DEFAULT_SIZE):
            args["size"] = self.size.data
        return args

    def _args(self) -> dict[str, str]:
        return {"q": self.q.data}


class HistoryFilterForm(ListSearchForm):
    since = DateTimeLocalField("From (UTC)", validators=[Optional()], format=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"])
    until = DateTimeLocalField("Before (UTC)", validators=[Optional()], format=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"])
    actor = StringField("Who", validators=[Length(max=254)],
                        description="A user's email, or “command line”, as History shows who.")

    def __init__(self, formdata):
        super().__init__(formdata, "What contains", "Words in what was changed: a server, a user's email, …")

    def validate_until(self, field) -> None:
        if field.data and self.since.data and field.data <= self.since.data:
            raise ValidationError("Choose a time after “From”.")

    @property
    def who(self) -> str:
        """The actor to match: an email in lower case (as History keeps them), anything else as typed."""
        actor = self.actor.data or ""
        return actor.lower() if "@" in actor and " " not in actor else actor

    @property
    def since_utc(self):
        return self.since.data.replace(tzinfo=UTC) if self.since.data else None

    @property
    def until_utc(self):
        return self.until.data.replace(tzinfo=UTC) if self.until.data else None

    def _args(self) -> dict[str, str]:
        return {"since": self.since._value(), "until": self.until._value(), "actor": self.actor.data, "q": self.q.data}
