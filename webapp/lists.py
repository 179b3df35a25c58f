"""What every list that grows shares besides its keyset pages (pagination.py): a total that
costs at most what it counts up to, "contains" as an escaped LIKE, and the links to the pages
before and after, built once per page."""
from dataclasses import dataclass

from flask import request, url_for
from sqlalchemy import func, literal_column, select
from sqlalchemy.sql import ColumnElement, Select

from . import db
from .pagination import Page

COUNT_CAP = 1_000  # a total stops here ("more than 1,000"): a count costs what it counts


@dataclass(frozen=True)
class Total:
    number: int

    @property
    def capped(self) -> bool:
        return self.number > COUNT_CAP

    @property
    def words(self) -> str:
        return f"more than {COUNT_CAP:,}" if self.capped else f"{self.number:,}"


def total(query: Select) -> Total:
    """How many rows `query` selects, counted up to COUNT_CAP + 1 (its ORDER BY dropped)."""
    capped = query.with_only_columns(literal_column("1"), maintain_column_froms=True).order_by(None).limit(COUNT_CAP + 1).subquery()
    return Total(db.session().execute(select(func.count()).select_from(capped)).scalar_one())


def like(text: str) -> str:
    """`text` for a LIKE pattern, its wildcards and the escape character taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def contains(column: ColumnElement, text: str) -> ColumnElement:
    """`column` contains `text`, in any case."""
    return column.ilike(f"%{like(text)}%", escape="\\")


def page_links(endpoint: str, page: Page | None, args: dict[str, str], **values) -> dict[str, str | None]:
    """The URLs of the next and the previous page (the search and size kept), once per page."""
    if page is None:
        return {"next": None, "previous": None}
    return {"next": page.next and url_for(endpoint, **values, **args, page=page.next),
            "previous": page.previous and url_for(endpoint, **values, **args, page=page.previous)}


def where_we_are(form) -> dict[str, str]:
    """The list's search, page size and page from this request's query string: what a row action's
    URL carries, so that without JavaScript it comes back to the same page of the list."""
    args = form.query_args()
    if request.args.get("page"):
        args["page"] = request.args["page"]
    return args
