"""Keyset pagination for every list that grows (sqlakeyset underneath).

A list is ordered by a unique key (e.g. `(OutboundMail.id.desc(),)`, or `(AuditEvent.at.desc(),
AuditEvent.id.desc())`); a page is the rows after (or before) the key of a row the reader saw,
carried in an opaque bookmark. Page 1,000 costs what page 1 costs, and rows added meanwhile are
neither skipped nor shown twice. Views put `Page.next` / `Page.previous` into their links
(`?page=...`) and the size as `?size=...`.

sqlakeyset (with SQLAlchemy's asyncio extension, greenlet and dateutil, which it imports) is imported by
the first page read or bookmark written, not with the modules that import this one: the short commands
never load it. The pages import it at start (webapp/views), before gunicorn forks its workers (--preload):
they all list, and a library imported in each worker would be its own copy instead of a shared one.
"""
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.elements import UnaryExpression

from . import db

SIZES = (25, 50, 100, 200)
DEFAULT_SIZE = 50


@dataclass
class Page:
    rows: list
    next: str | None = None  # the bookmark of the page after this one; None on the last page
    previous: str | None = None  # ... before this one; None on the first
    notes: list[str] = field(default_factory=list)  # what a list wants said under its rows


@dataclass(frozen=True)
class Place:
    """Where a bookmark points: after `key` (the next page) or, `backwards`, before it."""
    key: tuple | None = None
    backwards: bool = False


def size_of(value) -> int:
    """A page size from the query string: one of SIZES, else the default."""
    try:
        size = int(value)
    except (TypeError, ValueError):
        return DEFAULT_SIZE
    return size if size in SIZES else DEFAULT_SIZE


def place_of(bookmark: str | None, order: tuple[ColumnElement, ...]) -> Place:
    """The place a bookmark names, for this order; the first page for anything unreadable (a
    bookmark from another list or order, a value of the wrong type, a hand-edited one)."""
    if not bookmark:
        return Place()
    from sqlakeyset import BadBookmark, unserialize_bookmark

    try:
        key, backwards = unserialize_bookmark(bookmark)
    except (BadBookmark, ValueError, TypeError, IndexError):
        return Place()
    types = [_python_type(column) for column in order]
    if key is None or len(key) != len(types) or not all(_fits(v, t) for v, t in zip(key, types)):
        return Place()
    return Place(tuple(key), backwards)


def bookmark(place: Place) -> str | None:
    from sqlakeyset import serialize_bookmark

    return serialize_bookmark((place.key, place.backwards)) if place.key is not None else None


def paginate(query: Select, order: tuple[ColumnElement, ...], size: int, page: str | None = None) -> Page:
    """One page of `query` in `order` (a unique key, e.g. `(Model.id.desc(),)`), from the place the
    bookmark `page` names (the first page without one)."""
    return paginate_at(query, order, size, place_of(page, order))


def paginate_at(query: Select, order: tuple[ColumnElement, ...], size: int, place: Place) -> Page:
    from sqlakeyset import InvalidPage, select_page

    marker = (place.key, place.backwards) if place.key is not None else None
    try:
        result = select_page(db.session(), query.order_by(*order), per_page=size, page=marker)
    except InvalidPage:  # checked in place_of; here only if the order changed under a bookmark
        result = select_page(db.session(), query.order_by(*order), per_page=size)
    paging = result.paging
    # At either end sqlakeyset still offers a bookmark (it cannot know there is nothing more that way).
    next_ = paging.bookmark_next if paging.has_next else None
    previous = paging.bookmark_previous if paging.has_previous else None
    return Page(list(result), next_, previous)


def _python_type(column: ColumnElement) -> type:
    element = column.element if isinstance(column, UnaryExpression) else column  # .desc(), .asc()
    return element.type.python_type


def _fits(value, expected: type) -> bool:
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is datetime:
        return isinstance(value, datetime)
    return isinstance(value, expected)
