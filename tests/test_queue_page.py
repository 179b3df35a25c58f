"""The Mail Queue page: counts, the list and its filters, pages, a message's page, the chart."""
import html
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event

from tests.queue_factory import T0, Outbox, outbox  # noqa: F401 (a fixture)
from webapp import db, mailqueue
from webapp.models import MailState, Role

QUEUE = "/p/help/queue/"


def ids_in(page: str) -> list[int]:
    """The messages listed, in order (each row links to its message once with its number)."""
    return [int(i) for i in re.findall(r'<a href="/p/help/queue/(\d+)">#\d+</a>', page)]


def link(page: str, rel: str) -> str | None:
    found = re.search(rf'<a href="([^"]+)" hx-get="[^"]+" rel="{rel}">', page)
    return html.unescape(found.group(1)) if found else None


def walk(client, url: str, rel: str = "next") -> list[list[int]]:
    pages = []
    while url:
        answer = client.get(url)
        assert answer.status_code == 200, answer.text
        pages.append(ids_in(answer.text))
        url = link(answer.text, rel)
    return pages


@pytest.fixture
def statements(app):
    """The SQL the app runs while a test is in this block."""
    seen: list[str] = []

    def remember(_conn, _cursor, statement, *_):
        seen.append(statement)

    with app.app_context():
        engine = db.engine()
    event.listen(engine, "before_cursor_execute", remember)
    yield seen
    event.remove(engine, "before_cursor_execute", remember)


def test_the_queue_is_in_the_portal_nav_for_staff_and_lists_what_it_should(staff, make, portal, outbox):
    server = make.server(portal, description="Office relay")
    outbox.mail(state=MailState.QUEUED, to=("ann@example.com", "bob@example.com"), subject="Password reset",
                attempts=2, last_attempt_at=T0, next_attempt_at=T0 + timedelta(minutes=10), server_id=server.id,
                last_error="421 Try again later")
    page = staff.get("/p/help/servers/").text
    assert '<a href="/p/help/queue/">Mail queue</a>' in page
    page = staff.get(QUEUE).text
    row = re.search(r'<table class="queue">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    for shown in ("ann@example.com, bob@example.com", "Password reset", "Queued", "<td>2</td>", "2026-11-01 08:00",
                  "2026-11-01 08:10", "Office relay", "421 Try again later", "key “Help desk app”"):
        assert html.escape(shown, quote=False) in row or shown in row, shown
    assert "For every message this filter selects" not in page  # staff read, admins act


def test_counts_per_state_are_filter_links(admin, outbox):
    outbox.many(3, state=MailState.SENT)
    outbox.many(2, state=MailState.FAILED)
    outbox.mail(state=MailState.HELD)
    page = admin.get(QUEUE).text
    counts = dict(re.findall(r'<a href="/p/help/queue/\?state=(\w+)"[^>]*>\w+ <strong class="count">([\d,+]+)</strong>',
                             page))
    assert counts == {"queued": "0", "sending": "0", "held": "1", "sent": "3", "failed": "2"}
    assert len(ids_in(admin.get(QUEUE + "?state=failed").text)) == 2


def test_counts_stop_at_the_cap(admin, outbox):
    outbox.many(mailqueue.COUNT_CAP + 1, state=MailState.SENT, step=timedelta(seconds=1))
    outbox.many(mailqueue.COUNT_CAP, state=MailState.FAILED, step=timedelta(seconds=1))
    page = admin.get(QUEUE).text
    assert 'Sent <strong class="count">10,000+</strong>' in page
    assert 'Failed <strong class="count">10,000</strong>' in page


def test_every_message_once_in_order_over_all_pages_and_back(admin, outbox):
    ids = outbox.many(2345)
    pages = walk(admin, QUEUE + "?size=200")
    assert [i for page in pages for i in page] == sorted(ids, reverse=True)
    assert len(pages) == 12 and all(len(page) == 200 for page in pages[:-1])
    last = admin.get(QUEUE + "?size=200").text
    for _ in range(11):
        last = admin.get(link(last, "next")).text
    back = walk(admin, link(last, "prev"), "prev")
    assert [i for page in reversed(back) for i in page] == sorted(ids, reverse=True)[:-145]


def test_the_list_loads_only_the_columns_it_shows(admin, outbox, statements):
    outbox.mail()
    assert admin.get(QUEUE).status_code == 200
    listing = [s for s in statements if "FROM outbound_mail" in s and "outbound_mail.subject" in s]
    assert listing and not any("outbound_mail.raw" in s for s in listing)
    assert not any("outbound_mail.recipients" in s for s in listing)


def test_row_urls_and_the_csrf_token_are_not_per_row(app, admin, outbox, monkeypatch):
    """url_for once per page, not per row; the page's one CSRF token is the body's."""
    import webapp.views.queue as view

    outbox.many(200)
    calls = []
    real = view.url_for
    monkeypatch.setattr(view, "url_for", lambda *a, **k: calls.append(a) or real(*a, **k))
    page = admin.get(QUEUE + "?size=200").text
    assert len(ids_in(page)) == 200 and len(calls) <= 8
    assert 'name="csrf_token"' not in re.search(r'<div id="queue".*</div>', page, re.S).group(0)


def test_filter_by_state_server_and_arrival(admin, make, portal, outbox):
    relay, backup = make.server(portal, description="Relay"), make.server(portal, description="Backup")
    sent_relay = outbox.many(30, state=MailState.SENT, server_id=relay.id)
    failed_backup = outbox.many(20, state=MailState.FAILED, server_id=backup.id, start=T0 + timedelta(hours=1))
    queued = outbox.many(10, state=MailState.QUEUED, start=T0 + timedelta(hours=2))
    newest_first = lambda ids: sorted(ids, reverse=True)  # noqa: E731

    assert ids_in(admin.get(QUEUE + "?state=failed").text) == newest_first(failed_backup)
    assert ids_in(admin.get(QUEUE + f"?server={backup.id}").text) == newest_first(failed_backup)
    assert ids_in(admin.get(QUEUE + f"?server={relay.id}&state=failed").text) == []
    # T0 + i minutes: from 08:10 to before 08:20 are the relay's 10..19; with the backup's from 09:00 on
    assert ids_in(admin.get(QUEUE + "?since=2026-11-01T08:10&until=2026-11-01T08:20").text) == \
        newest_first(sent_relay[10:20])
    assert ids_in(admin.get(QUEUE + "?since=2026-11-01T09:05").text) == newest_first(failed_backup[5:] + queued)
    assert ids_in(admin.get(QUEUE + "?until=2026-11-01T08:03").text) == newest_first(sent_relay[:3])
    assert ids_in(admin.get(QUEUE + "?since=2026-12-01T00:00").text) == []
    assert ids_in(admin.get(QUEUE + "?state=queued&since=2026-11-01T10:05").text) == newest_first(queued[5:])


def test_servers_called_alike_are_told_apart_by_their_place_in_the_list(app, admin, make, portal, outbox):
    first, second = make.server(portal, description="Relay"), make.server(portal, description="Relay")
    other = make.server(portal, description="Backup")
    with app.app_context():
        labels = mailqueue.server_labels(db.session().merge(portal))
    assert labels == {first.id: f"#{first.position} Relay", second.id: f"#{second.position} Relay",
                      other.id: "Backup"}
    outbox.mail(state=MailState.SENT, server_id=second.id)
    page = admin.get(QUEUE).text
    assert f'<option value="{second.id}">#{second.position} Relay</option>' in page


def test_filter_by_recipient_address_or_domain(admin, outbox):
    ann = outbox.mail(to=("ann_x@example.com",))
    outbox.mail(to=("annax@example.com",))  # "_" is not a wildcard
    both = outbox.mail(to=("bob@example.org",), cc=("Ann_X@Example.com",), bcc=("carol@sub.example.com",))
    assert ids_in(admin.get(QUEUE + "?recipient=ann_x@example.com").text) == [both.id, ann.id]
    assert ids_in(admin.get(QUEUE + "?recipient=%40example.org").text) == [both.id]
    assert ids_in(admin.get(QUEUE + "?recipient=%40sub.example.com").text) == [both.id]  # a Bcc recipient too
    assert ids_in(admin.get(QUEUE + "?recipient=%40xample.com").text) == []  # a domain is matched whole


def test_search_in_subject_and_receivers(admin, outbox):
    refund = outbox.mail(subject="Refund 100% approved", to=("dave@example.com",))
    outbox.mail(subject="Refund 1000 pending")
    dave = outbox.mail(subject="Hello", to=("dave@example.com",))
    assert ids_in(admin.get(QUEUE + "?q=100%25").text) == [refund.id]
    assert ids_in(admin.get(QUEUE + "?q=DAVE").text) == [dave.id, refund.id]


def test_a_search_looks_through_a_bounded_window_and_goes_on_from_there(admin, outbox, monkeypatch):
    monkeypatch.setattr(mailqueue, "SEARCH_WINDOW", 40)
    ids = outbox.many(300)
    matching = [i for n, i in enumerate(ids) if n % 7 == 0]  # "Message 0", "Message 7", ... below
    for n, mail_id in enumerate(ids):
        if n % 7 == 0:
            with admin.http.application.app_context():
                row = db.session().get(mailqueue.OutboundMail, mail_id)
                row.subject = f"Needle {n}"
                db.session().commit()
    first = admin.get(QUEUE + "?q=needle&size=25").text
    assert "Searched 40 messages" in first and "Search older →" in first
    pages = walk(admin, QUEUE + "?q=needle&size=25")
    assert [i for page in pages for i in page] == sorted(matching, reverse=True)


def test_a_filter_with_errors_comes_back_with_them_beside_the_fields(admin, outbox):
    outbox.mail()
    answer = admin.get(QUEUE + "?recipient=not+an+address&since=yesterday&until=2026-01-01T00:00&state=lost")
    assert answer.status_code == 422
    page = answer.text
    assert 'id="recipient-help" class="error">Enter an address (bob@example.com) or a domain' in page
    assert 'id="since-help" class="error">' in page and 'id="state-help" class="error">' in page
    assert ids_in(page) == [] and "Correct the filter above" in page
    assert 'value="not an address"' in page  # what was typed stays


def test_an_unknown_bookmark_or_size_shows_the_first_page(admin, outbox):
    ids = outbox.many(60)
    page = admin.get(QUEUE + "?page=%3Es%3Aevil&size=7").text
    assert ids_in(page) == sorted(ids, reverse=True)[:50]


def test_htmx_gets_the_filter_and_the_list_only(admin, outbox):
    outbox.many(5, state=MailState.FAILED)
    answer = admin.get(QUEUE + "?state=failed", headers={"HX-Request": "true"})
    assert answer.status_code == 200 and "<html" not in answer.text and answer.text.lstrip().startswith('<div id="queue"')
    assert len(ids_in(answer.text)) == 5 and "Attempts in the last 24 hours" not in answer.text
    assert "HX-Request" in answer.headers["Vary"]


# -- a message's page ---------------------------------------------------------------------------

def test_a_messages_page_has_headers_envelope_recipients_and_every_attempt(admin, make, portal, outbox):
    server = make.server(portal, description="Office relay")
    mail = outbox.mail(to=("ann@example.com",), cc=("bob@example.com",), subject="<script>alert(1)</script> Ünïcode",
                       state=MailState.SENT, attempts=2, server_id=server.id)
    with admin.http.application.app_context():
        row = db.session().get(mailqueue.OutboundMail, mail.id)
        row.recipients = [{"address": "ann@example.com", "state": "sent", "code": 250, "reply": "2.0.0 Ok"},
                          {"address": "bob@example.com", "state": "failed", "code": 550, "reply": "5.1.1 No such user"}]
        db.session().commit()
    outbox.attempt(mail.id, "deferred", T0, server, 421, "4.7.0 Try again later")
    outbox.attempt(mail.id, "sent", T0 + timedelta(minutes=5), server, 250, "2.0.0 Ok: queued as 1234")
    page = admin.get(f"{QUEUE}{mail.id}").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Ünïcode" in page  # the Subject header decoded, escaped
    headers = dict(re.findall(r'<tr><th scope="row">([^<]+)</th><td>([^<]*)</td></tr>', page))
    assert headers["To"] == "ann@example.com" and headers["Cc"] == "bob@example.com"
    assert headers["From"] == "Help Desk &lt;helpdesk@example.com&gt;" and "Message-ID" in headers
    assert "5.1.1 No such user" in page and "<td>550</td>" in page
    attempts = re.search(r'<table class="attempts">.*?</table>', page, re.S).group(0)
    assert attempts.index("4.7.0 Try again later") < attempts.index("2.0.0 Ok: queued as 1234")
    assert "2026-11-01 08:05:00" in attempts and "Office relay" in attempts
    assert "key “Help desk app”" in page and "192.0.2.7" in page and "helpdesk@example.com" in page


def test_a_purged_message_says_so(admin, outbox):
    mail = outbox.mail(state=MailState.SENT, raw=None, purged_at=T0)
    page = admin.get(f"{QUEUE}{mail.id}").text
    assert "Purged on" in page and "no longer stored" in page


def test_a_header_the_parser_cannot_read_is_shown_as_written(app):
    raw = b"Subject: =?utf-8?q?bro=ken?=\r\nTo: <<<@>>>\r\nX-Empty:\r\n\r\nbody"
    fields = dict(mailqueue.headers_of(raw))
    assert set(fields) == {"Subject", "To", "X-Empty"} and fields["X-Empty"] == ""


def test_another_portals_message_is_not_found(admin, make, app):
    other = make.portal(slug="other", name="Other")
    foreign = Outbox(app, other).mail()
    assert admin.get(f"{QUEUE}{foreign.id}").status_code == 404
    assert admin.get(f"{QUEUE}999999").status_code == 404


# -- the chart -----------------------------------------------------------------------------------

def test_the_chart_counts_the_portals_attempts_per_hour_over_the_last_day(admin, make, app, portal, outbox):
    server = make.server(portal)
    other_portal = make.portal(slug="other", name="Other")
    foreign_server = make.server(other_portal)
    mail = outbox.mail()
    now = datetime.now(UTC)
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    for minutes, outcome in [(1, "sent"), (2, "sent"), (3, "failed"), (4, "deferred"), (5, "held")]:
        outbox.attempt(mail.id, outcome, this_hour + timedelta(minutes=minutes % max(1, now.minute + 1)), server)
    outbox.attempt(mail.id, "sent", this_hour - timedelta(hours=5) + timedelta(minutes=30), server)
    outbox.attempt(mail.id, "deferred", this_hour - timedelta(hours=23), server)
    outbox.attempt(mail.id, "sent", this_hour - timedelta(hours=24, seconds=1), server)  # before the chart
    foreign = Outbox(app, other_portal).mail()
    outbox.attempt(foreign.id, "sent", this_hour, foreign_server)  # another portal's

    page = admin.get(QUEUE).text
    rows = dict((hour, tuple(map(int, counts))) for hour, *counts in re.findall(
        r"<tr><td>([\d-]+ \d\d):00</td><td>(\d+)</td><td>(\d+)</td><td>(\d+)</td></tr>", page))
    assert len(rows) == 24
    assert rows[f"{this_hour:%Y-%m-%d %H}"] == (2, 1, 1)
    assert rows[f"{this_hour - timedelta(hours=5):%Y-%m-%d %H}"] == (1, 0, 0)
    assert rows[f"{this_hour - timedelta(hours=23):%Y-%m-%d %H}"] == (0, 1, 0)
    assert sum(sum(v) for v in rows.values()) == 6
    assert "Sent 3" in page and "Deferred 2" in page and "Failed 1" in page
    svg = re.search(r'<svg viewBox.*?</svg>', page, re.S).group(0)
    assert f"{this_hour:%H}:00–{(this_hour + timedelta(hours=1)):%H}:00 UTC: 2 sent" in svg
    assert 'style=' not in svg  # the CSP forbids inline styles
