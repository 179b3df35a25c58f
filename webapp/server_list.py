"""The server list's reads: a page of a portal's servers in their order, found by description,
host or From address, with only the columns the list shows (never the credential's secret or the
whole settings: each protocol's settings type names the keys its `address` needs, `LISTED`)."""
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace

from sqlalchemy import func, or_
from sqlmodel import select

from . import consent, db, lists, pagination
from .credentials import KIND_LABELS
from .mail.transport import TRANSPORTS
from .models import Credential, MailServer, Portal, server_label

ORDER = (MailServer.position, MailServer.id)  # the order of preference (position is unique per portal)
COLUMNS = (MailServer.id, MailServer.position, MailServer.enabled, MailServer.description, MailServer.protocol,
           MailServer.from_address, MailServer.last_check_at, MailServer.last_check_ok, MailServer.last_check_summary,
           MailServer.failing_since, MailServer.failing_reason, MailServer.held_since, MailServer.held_reason,
           Credential.kind, Credential.needs_reauthorization, Credential.consented_at,
           Credential.provider["provider"].label("oauth_provider"))


@dataclass(frozen=True)
class ServerRow:
    """What one row of the list shows."""
    id: int
    position: int
    enabled: bool
    description: str
    protocol: str
    from_address: str
    host: str | None
    address: str
    security: str | None
    last_check_at: datetime | None
    last_check_ok: bool | None
    last_check_summary: str
    credential_label: str
    oauth_step: str  # consent.next_step: "authorize", "reauthorize", "admin_consent" or ""
    failing_since: datetime | None = None  # the worker found it failing (alternates take its mail)
    failing_reason: str = ""
    held_since: datetime | None = None  # it refuses its credentials: its mail is held
    held_reason: str = ""

    @property
    def label(self) -> str:
        return server_label(self.id, self.description, self.host)


def _settings_keys() -> tuple[tuple[str, ...], bool]:
    """The settings keys the registered protocols' addresses need; True when some protocol does
    not name them (then the whole settings are read)."""
    keys, whole = {"host", "security"}, False
    for transport in TRANSPORTS.values():
        listed = getattr(transport.settings_type, "LISTED", None)
        if listed is None:
            whole = True
        else:
            keys.update(listed)
    return tuple(sorted(keys)), whole


def _query(portal: Portal, text: str):
    keys, whole = _settings_keys()
    columns = [*COLUMNS, *(MailServer.settings[key].label(f"s_{key}") for key in keys)]
    if whole:
        columns.append(MailServer.settings.label("s__whole"))
    query = (select(*columns).outerjoin(Credential, Credential.server_id == MailServer.id)
             .where(MailServer.portal_id == portal.id))
    if text:
        query = query.where(_matches(text))
    return query, keys


def _matches(text: str):
    return or_(lists.contains(MailServer.description, text),
               lists.contains(MailServer.settings["host"].as_string(), text),
               lists.contains(MailServer.from_address, text))


def page_of(portal: Portal, text: str, size: int, bookmark: str | None) -> pagination.Page:
    """One page of the portal's servers (those whose description, host or From address contain
    `text`), in their order."""
    query, keys = _query(portal, text)
    page = pagination.paginate(query, ORDER, size, bookmark)
    page.rows = [_row(row, keys) for row in page.rows]
    return page


def row_of(portal: Portal, server_id: int) -> ServerRow | None:
    """One server as its row shows it (after a row action)."""
    query, keys = _query(portal, "")
    found = db.session().execute(query.where(MailServer.id == server_id)).first()
    return _row(found, keys) if found is not None else None


def total(portal: Portal, text: str = "", enabled: bool | None = None) -> lists.Total:
    """How many servers the portal has (that match `text`; that are enabled), capped."""
    query = select(MailServer.id).where(MailServer.portal_id == portal.id)
    if text:
        query = query.where(_matches(text))
    if enabled is not None:
        query = query.where(MailServer.enabled == enabled)
    return lists.total(query)


def last_position(portal: Portal) -> int:
    """The last server's position (its row has no "Move down"), on the (portal_id, position) index."""
    return db.session().execute(select(func.max(MailServer.position)).where(
        MailServer.portal_id == portal.id)).scalar_one() or 0


def _row(row, keys: tuple[str, ...]) -> ServerRow:
    mapping = row._mapping
    settings = {key: mapping[f"s_{key}"] for key in keys if mapping[f"s_{key}"] is not None}
    if "s__whole" in mapping:
        settings = mapping["s__whole"] or {}
    kind = row.kind
    credential = None if kind is None else SimpleNamespace(
        kind=kind, needs_reauthorization=row.needs_reauthorization, consented_at=row.consented_at,
        provider={"provider": row.oauth_provider})
    step = consent.next_step(SimpleNamespace(credential=credential, last_check_ok=row.last_check_ok))
    return ServerRow(
        id=row.id, position=row.position, enabled=row.enabled, description=row.description, protocol=row.protocol,
        from_address=row.from_address, host=settings.get("host"), address=_address(row.protocol, settings),
        security=settings.get("security"), last_check_at=row.last_check_at, last_check_ok=row.last_check_ok,
        last_check_summary=row.last_check_summary,
        credential_label=KIND_LABELS.get(kind, kind) if kind is not None else "None", oauth_step=step,
        failing_since=row.failing_since, failing_reason=row.failing_reason, held_since=row.held_since,
        held_reason=row.held_reason)


def _address(protocol: str, settings: dict) -> str:
    """The protocol's own words for where it sends (host:port, a URL); "" for an unknown protocol."""
    transport = TRANSPORTS.get(protocol)
    try:
        return transport.settings_type.from_dict(settings).address if transport else ""
    except (TypeError, ValueError):
        return ""
