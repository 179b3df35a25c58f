"""The History page's reads: a portal's events newest first, a page at a time, back to the first
one; filtered by time range and who (on the (portal_id, at, id) and (portal_id, actor, at, id)
indexes) and by words in what was changed. The words have no index: a page looks through at most
SEARCH_WINDOW events below its bookmark, then offers to search older ones (as the Mail Queue does)."""
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_
from sqlmodel import select

from . import db, lists, pagination
from .models import AuditEvent, Portal

ORDER = (AuditEvent.at.desc(), AuditEvent.id.desc())
COLUMNS = (AuditEvent.id, AuditEvent.at, AuditEvent.actor, AuditEvent.action, AuditEvent.subject, AuditEvent.changes)
SEARCH_WINDOW = 10_000  # events the words look through for one page


@dataclass(frozen=True)
class HistoryFilter:
    since: datetime | None = None  # at or after (UTC)
    until: datetime | None = None  # before (UTC)
    actor: str = ""  # exactly as History shows who
    text: str = ""  # in the subject (a server, a user's email, ...)


def _indexed(portal: Portal, chosen: HistoryFilter) -> list:
    where = [AuditEvent.portal_id == portal.id]
    if chosen.actor:
        where.append(AuditEvent.actor == chosen.actor)
    if chosen.since is not None:
        where.append(AuditEvent.at >= chosen.since)
    if chosen.until is not None:
        where.append(AuditEvent.at < chosen.until)
    return where


def page_of(portal: Portal, chosen: HistoryFilter, size: int, bookmark: str | None) -> pagination.Page:
    """One page of the portal's events that the filter selects, newest first."""
    query = select(*COLUMNS).where(*_indexed(portal, chosen))
    if not chosen.text:
        return pagination.paginate(query, ORDER, size, bookmark)
    place = pagination.place_of(bookmark, ORDER)
    edge = _window_edge(portal, chosen, place)
    if edge is not None:
        query = query.where(_not_past(edge, place.backwards))
    page = pagination.paginate_at(query.where(lists.contains(AuditEvent.subject, chosen.text)), ORDER, size, place)
    if edge is not None:
        onwards = pagination.bookmark(pagination.Place(edge, place.backwards))
        if place.backwards and page.previous is None:
            page.previous = onwards
        elif not place.backwards and page.next is None:
            page.next = onwards
            page.notes.append(f"Searched {SEARCH_WINDOW:,} events, back to {edge[0]:%Y-%m-%d %H:%M} UTC. "
                              "Older ones are searched on the next page.")
    return page


def _window_edge(portal: Portal, chosen: HistoryFilter, place: pagination.Place) -> tuple | None:
    """The key (at, id) of the last event in the window this page's search looks through (None: the
    window reaches the end)."""
    keys = select(AuditEvent.at, AuditEvent.id).where(*_indexed(portal, chosen))
    if place.key is not None:
        keys = keys.where(_beyond(place.key, newer=place.backwards))
    keys = keys.order_by(*((AuditEvent.at, AuditEvent.id) if place.backwards else ORDER))
    found = db.session().execute(keys.offset(SEARCH_WINDOW - 1).limit(1)).first()
    return (found.at, found.id) if found is not None else None


def _beyond(key: tuple, newer: bool):
    """Events strictly newer (or older) than the event with this (at, id)."""
    at, id_ = key
    if newer:
        return or_(AuditEvent.at > at, and_(AuditEvent.at == at, AuditEvent.id > id_))
    return or_(AuditEvent.at < at, and_(AuditEvent.at == at, AuditEvent.id < id_))


def _not_past(edge: tuple, backwards: bool):
    """Events up to the window's edge, the edge included."""
    return ~_beyond(edge, newer=backwards)


def total(portal: Portal, chosen: HistoryFilter = HistoryFilter()) -> lists.Total:
    """How many events the filter's indexed part selects (capped)."""
    return lists.total(select(AuditEvent.id).where(*_indexed(portal, chosen)))
