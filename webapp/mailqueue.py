"""The Mail Queue as admins see it: a portal's messages by filter, a page at a time, newest first;
the counts per state; the attempts of the last day per hour; one message with its headers and
attempts; and the delivery banner of every portal page. Reads only (queue_actions.py changes).

Every filter but the text ones uses an index: the state `(portal_id, state, id)`, the server
`(portal_id, server_id, id)`, the time range `(portal_id, created_at, id)` (turned into a range
of ids, so the list keeps its one order). The text filters (a recipient, words in the subject or
the receivers) cannot use one: they look through at most SEARCH_WINDOW messages per page and
then offer to search older ones, so no page costs more than that.
"""
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import policy
from email.parser import BytesHeaderParser

from sqlalchemy import Boolean, Text, and_, bindparam, cast, false, func, literal_column, or_
from sqlmodel import select

from . import db, pagination
from .models import Credential, DeliveryAttempt, MailServer, MailState, OutboundMail, Portal, server_label

ORDER = (OutboundMail.id.desc(),)
# The columns the list shows (never `raw`, the message itself).
LIST_COLUMNS = (OutboundMail.id, OutboundMail.state, OutboundMail.to_summary, OutboundMail.subject,
                OutboundMail.attempts, OutboundMail.created_at, OutboundMail.last_attempt_at,
                OutboundMail.next_attempt_at, OutboundMail.server_id, OutboundMail.last_error,
                OutboundMail.submitted_by)
COUNT_CAP = 10_000  # counts stop here ("10,000+"): a count costs what it counts
SEARCH_WINDOW = 10_000  # messages a text filter looks through for one page
CHARTED = ("sent", "deferred", "failed")  # DeliveryAttempt outcomes in the chart
HEADER_LIMIT = 64 * 1024  # of a stored message's header block, shown on its page
ATTEMPT_LIMIT = 500  # attempts shown on a message's page


@dataclass(frozen=True)
class QueueFilter:
    state: str = ""
    recipient: str = ""  # an envelope recipient: an address, or "@domain" for every address there
    server_id: int | None = None  # the server last used
    since: datetime | None = None  # arrived at or after (UTC)
    until: datetime | None = None  # arrived before (UTC)
    text: str = ""  # in the subject or the receivers shown

    @property
    def searches(self) -> bool:
        return bool(self.recipient or self.text)

    def describe(self, server_labels: dict[int, str]) -> str:
        """The filter in words, for History and the confirmations: "state failed, recipient …"."""
        parts = []
        if self.state:
            parts.append(f"state {self.state}")
        if self.recipient:
            parts.append(f"recipient {self.recipient}")
        if self.server_id is not None:
            parts.append(f"server “{server_labels.get(self.server_id, f'server {self.server_id}')}”")
        if self.since:
            parts.append(f"from {self.since:%Y-%m-%d %H:%M} UTC")
        if self.until:
            parts.append(f"before {self.until:%Y-%m-%d %H:%M} UTC")
        if self.text:
            parts.append(f"subject or receiver contains “{self.text}”")
        return ", ".join(parts) or "every message"


def conditions(portal: Portal, chosen: QueueFilter) -> list:
    """The filter as SQL conditions (the text ones included): what bulk actions select."""
    return _indexed(portal, chosen) + _text(chosen)


def _indexed(portal: Portal, chosen: QueueFilter) -> list:
    where = [OutboundMail.portal_id == portal.id]
    if chosen.state:
        where.append(OutboundMail.state == chosen.state)
    if chosen.server_id is not None:
        where.append(OutboundMail.server_id == chosen.server_id)
    if chosen.since or chosen.until:
        where += _arrival_range(portal, chosen.since, chosen.until)
    return where


def _arrival_range(portal: Portal, since: datetime | None, until: datetime | None) -> list:
    """The messages that arrived in [since, until) as a range of ids (ids are given in order of
    arrival), found on the (portal_id, created_at, id) index: then every other filter keeps its own
    index and the list its one order."""
    session, where = db.session(), []
    if since is not None:
        first = session.exec(select(OutboundMail.id).where(
            OutboundMail.portal_id == portal.id, OutboundMail.created_at >= since)
            .order_by(OutboundMail.created_at, OutboundMail.id).limit(1)).first()
        where.append(OutboundMail.id >= first if first is not None else false())
    if until is not None:
        last = session.exec(select(OutboundMail.id).where(
            OutboundMail.portal_id == portal.id, OutboundMail.created_at < until)
            .order_by(OutboundMail.created_at.desc(), OutboundMail.id.desc()).limit(1)).first()
        where.append(OutboundMail.id <= last if last is not None else false())
    return where


def _text(chosen: QueueFilter) -> list:
    where = []
    if chosen.recipient:
        # The recipients are JSON: {"address": "bob@example.com", ...}. An address is matched whole
        # (with its quotes), a domain at the address's end.
        quoted = json.dumps(chosen.recipient.lower())[1:-1]  # escaped as the column stores it
        pattern = f'%{_like(quoted)}"%' if quoted.startswith("@") else f'%"{_like(quoted)}"%'
        where.append(func.lower(cast(OutboundMail.recipients, Text)).like(pattern, escape="\\"))
    if chosen.text:
        words = f"%{_like(chosen.text)}%"
        where.append(or_(OutboundMail.subject.ilike(words, escape="\\"),
                         OutboundMail.to_summary.ilike(words, escape="\\")))
    return where


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- the list ---------------------------------------------------------------------------------

def page_of(portal: Portal, chosen: QueueFilter, size: int, bookmark: str | None) -> pagination.Page:
    """One page of the portal's messages that the filter selects, newest first."""
    query = select(*LIST_COLUMNS).where(*_indexed(portal, chosen))
    if not chosen.searches:
        return pagination.paginate(query, ORDER, size, bookmark)
    place = pagination.place_of(bookmark, ORDER)
    edge = _window_edge(portal, chosen, place)
    if edge is not None:
        query = query.where(OutboundMail.id <= edge if place.backwards else OutboundMail.id >= edge)
    page = pagination.paginate_at(query.where(*_text(chosen)), ORDER, size, place)
    if edge is not None:
        onwards = pagination.bookmark(pagination.Place((edge,), place.backwards))
        if place.backwards and page.previous is None:
            page.previous = onwards
        elif not place.backwards and page.next is None:
            page.next = onwards
            page.notes.append(f"Searched {SEARCH_WINDOW:,} messages, down to #{edge}. Older ones are searched "
                              f"on the next page.")
    return page


def _window_edge(portal: Portal, chosen: QueueFilter, place: pagination.Place) -> int | None:
    """The id of the last message in the window this page's search looks through (None: the
    window reaches the end)."""
    ids = select(OutboundMail.id).where(*_indexed(portal, chosen))
    if place.key is not None:
        ids = ids.where(OutboundMail.id > place.key[0] if place.backwards else OutboundMail.id < place.key[0])
    ids = ids.order_by(OutboundMail.id if place.backwards else OutboundMail.id.desc())
    return db.session().exec(ids.offset(SEARCH_WINDOW - 1).limit(1)).first()


def server_labels(portal: Portal) -> dict[int, str]:
    """{id: label} of the portal's servers, in their order (for the filter and the rows)."""
    rows = db.session().exec(_SERVER_LABELS, params={"portal_id": portal.id}).all()
    labels = {id_: server_label(id_, description, host) for id_, _, description, host in rows}
    named = Counter(labels.values())
    # two servers called alike are told apart by their place in the list (the "#" column of the servers page)
    return {id_: f"#{position} {labels[id_]}" if named[labels[id_]] > 1 else labels[id_]
            for id_, position, _, _ in rows}


_SERVER_LABELS = (select(MailServer.id, MailServer.position, MailServer.description,
                         MailServer.settings["host"].as_string())
                  .where(MailServer.portal_id == bindparam("portal_id")).order_by(MailServer.position))


# -- counts per state ---------------------------------------------------------------------------

def _capped_count(state: str):
    capped = (select(OutboundMail.id).where(OutboundMail.portal_id == bindparam("portal_id"),
                                           OutboundMail.state == state).limit(COUNT_CAP + 1).subquery())
    return select(func.count()).select_from(capped).scalar_subquery().label(state)


_COUNTS = select(*[_capped_count(state) for state in MailState])


@dataclass(frozen=True)
class Count:
    state: str
    number: int

    @property
    def words(self) -> str:
        return f"{COUNT_CAP:,}+" if self.number > COUNT_CAP else f"{self.number:,}"


def counts(portal: Portal) -> list[Count]:
    row = db.session().exec(_COUNTS, params={"portal_id": portal.id}).one()
    return [Count(state, number) for state, number in zip(MailState, row)]


# -- the chart ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hour:
    start: datetime
    sent: int = 0
    deferred: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Chart:
    hours: list[Hour]

    @property
    def peak(self) -> int:
        return max([1, *(max(h.sent, h.deferred, h.failed) for h in self.hours)])

    @property
    def totals(self) -> dict[str, int]:
        return {outcome: sum(getattr(h, outcome) for h in self.hours) for outcome in CHARTED}


def hourly(portal: Portal, now: datetime) -> Chart:
    """Sent, deferred and failed attempts per hour over the last 24 hours (this hour included),
    from the attempts through the portal's servers (on the (server_id, at) index)."""
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    hour = _hour_of(DeliveryAttempt.at)
    rows = db.session().exec(
        select(hour, DeliveryAttempt.outcome, func.count())
        .join(MailServer, MailServer.id == DeliveryAttempt.server_id)
        .where(MailServer.portal_id == portal.id, DeliveryAttempt.at >= first,
               DeliveryAttempt.outcome.in_(CHARTED))
        .group_by(hour, DeliveryAttempt.outcome))
    found: dict[str, dict[str, int]] = {}
    for key, outcome, number in rows:
        found.setdefault(key, {})[outcome] = number
    starts = [first + timedelta(hours=i) for i in range(24)]
    return Chart([Hour(start, **found.get(f"{start:%Y-%m-%d %H}", {})) for start in starts])


def _hour_of(column):
    """'YYYY-MM-DD HH' of a UTC timestamp, in SQL. Its constants are literals, not parameters: the
    GROUP BY must repeat the very expression of the SELECT (PostgreSQL compares them as written)."""
    if db.session().get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone(literal_column("'UTC'"), column), literal_column("'YYYY-MM-DD HH24'"))
    return func.substr(column, literal_column("1"), literal_column("13"))  # SQLite: "YYYY-MM-DD HH:MM:SS.ffffff", UTC


# -- one message ---------------------------------------------------------------------------------

def get_mail(portal: Portal, mail_id: int) -> OutboundMail | None:
    return db.session().exec(select(OutboundMail).where(OutboundMail.id == mail_id,
                                                        OutboundMail.portal_id == portal.id)).first()


def attempts_of(mail: OutboundMail) -> list[DeliveryAttempt]:
    return list(db.session().exec(select(DeliveryAttempt).where(DeliveryAttempt.mail_id == mail.id)
                                  .order_by(DeliveryAttempt.at, DeliveryAttempt.id).limit(ATTEMPT_LIMIT)))


def headers_of(raw: bytes) -> list[tuple[str, str]]:
    """The message's header fields as (name, decoded value), in order; from its first HEADER_LIMIT
    bytes. A field the parser cannot decode is shown as it was written."""
    head = raw.split(b"\r\n\r\n", 1)[0][:HEADER_LIMIT]
    parsed = BytesHeaderParser(policy=policy.default).parsebytes(head)
    fields = []
    for name, value in parsed.raw_items():
        try:
            fields.append((name, str(policy.default.header_fetch_parse(name, value))))
        except Exception:  # noqa: BLE001 (stored bytes from a client: any header may be malformed)
            fields.append((name, " ".join(str(value).split())))
    return fields


# -- the banner on every portal page ------------------------------------------------------------

@dataclass(frozen=True)
class HeldServer:
    id: int
    label: str
    since: datetime
    reason: str
    credential_kind: str


@dataclass
class Banner:
    failover_since: datetime | None = None
    failover_reason: str = ""
    alternate: str | None = None  # the server mail goes through meanwhile, if one works
    held: list[HeldServer] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.failover_since is not None or bool(self.held)


_BANNER_SERVERS = (
    select(MailServer.id, MailServer.description, MailServer.settings["host"].as_string(), MailServer.held_since,
           MailServer.held_reason, Credential.kind)
    .outerjoin(Credential, Credential.server_id == MailServer.id)
    .where(MailServer.portal_id == bindparam("portal_id"),
           or_(MailServer.held_since.is_not(None),
               and_(bindparam("failover", type_=Boolean), MailServer.enabled, MailServer.failing_since.is_(None))))
    .order_by(MailServer.position).limit(50))


def banner(portal: Portal) -> Banner:
    """What every page of the portal says about delivery: mail going via an alternate server, and
    servers whose mail is held. One query: the held servers, and (in failover) the working ones."""
    failover = portal.failover_since is not None
    rows = db.session().exec(_BANNER_SERVERS, params={"portal_id": portal.id, "failover": failover}).all()
    said = Banner(portal.failover_since, portal.failover_reason)
    for id_, description, host, held_since, held_reason, kind in rows:
        label = server_label(id_, description, host)
        if held_since is not None:
            said.held.append(HeldServer(id_, label, held_since, held_reason, kind or ""))
        elif said.alternate is None:
            said.alternate = label
    if not failover:
        said.alternate = None
    return said
