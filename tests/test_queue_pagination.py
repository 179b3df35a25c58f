"""The keyset pagination every list uses (webapp/pagination.py), on the outbox table."""
from datetime import timedelta

import pytest
from sqlmodel import select

from tests.queue_factory import T0, Outbox, outbox  # noqa: F401 (a fixture)
from webapp import pagination
from webapp.models import OutboundMail

BY_ID = (OutboundMail.id.desc(),)
BY_TIME = (OutboundMail.created_at.desc(), OutboundMail.id.desc())


def _query(portal):
    return select(OutboundMail.id, OutboundMail.subject, OutboundMail.created_at).where(
        OutboundMail.portal_id == portal.id)


def _walk(query, order, size, direction="next", start=None):
    """Every page from `start` on, following `direction`; the ids of each."""
    pages, page = [], pagination.paginate(query, order, size, start)
    while True:
        pages.append([row.id for row in page.rows])
        following = getattr(page, direction)
        if following is None:
            return pages, page
        page = pagination.paginate(query, order, size, following)


def test_every_row_exactly_once_in_order_forwards_and_back(app, portal, outbox):
    ids = outbox.many(2345)
    with app.app_context():
        pages, last = _walk(_query(portal), BY_ID, 100)
        seen = [i for page in pages for i in page]
        assert seen == sorted(ids, reverse=True)  # newest first, none twice, none missing
        assert len(pages) == 24 and all(len(p) == 100 for p in pages[:-1]) and len(pages[-1]) == 45
        assert pagination.paginate(_query(portal), BY_ID, 100).previous is None  # the first page has none

        back, first = _walk(_query(portal), BY_ID, 100, "previous", start=last.previous)
        assert [i for page in reversed(back) for i in page] == seen[:-45]
        assert first.previous is None and [r.id for r in first.rows] == pages[0]


def test_a_two_column_key_pages_the_same_way(app, portal, outbox):
    """(created_at, id), as History and other lists ordered by time use it."""
    ids = outbox.many(500, step=timedelta(seconds=0))  # every row at the same time: the id decides
    ids += outbox.many(300, start=T0 + timedelta(days=1))
    with app.app_context():
        pages, _ = _walk(_query(portal), BY_TIME, 64)
        assert [i for page in pages for i in page] == sorted(ids, reverse=True)


def test_rows_added_while_reading_are_neither_skipped_nor_repeated(app, portal, outbox):
    ids = outbox.many(120)
    with app.app_context():
        first = pagination.paginate(_query(portal), BY_ID, 50)
    newer = outbox.many(30, start=T0 + timedelta(days=2))
    with app.app_context():
        rest, _ = _walk(_query(portal), BY_ID, 50, start=first.next)
    assert [r.id for r in first.rows] + [i for page in rest for i in page] == sorted(ids, reverse=True)
    assert not set(newer) & {i for page in rest for i in page}


@pytest.mark.parametrize("bookmark", ["garbage", ">", "<s:abc", ">i:1~i:2", ">dt:2026-01-01", ">i:99999999999999999999x",
                                      ">b:true"])
def test_an_unreadable_bookmark_is_the_first_page(app, portal, outbox, bookmark):
    ids = outbox.many(30)
    with app.app_context():
        page = pagination.paginate(_query(portal), BY_ID, 25, bookmark)
    assert [r.id for r in page.rows] == sorted(ids, reverse=True)[:25]


def test_a_bookmark_of_another_order_is_the_first_page(app, portal, outbox):
    outbox.many(30)
    with app.app_context():
        by_time = pagination.paginate(_query(portal), BY_TIME, 10)
        page = pagination.paginate(_query(portal), BY_ID, 10, by_time.next)
    assert page.previous is None and len(page.rows) == 10


@pytest.mark.parametrize("raw, size", [(None, 50), ("25", 25), ("200", 200), ("201", 50), ("-1", 50), ("x", 50),
                                       ("1e9", 50)])
def test_page_sizes_are_a_short_list(raw, size):
    assert pagination.size_of(raw) == size
