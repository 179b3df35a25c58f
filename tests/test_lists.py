"""The lists that grow (servers, users, portals, members, History): keyset pages across more data
than one page, search, a tampered bookmark, only the columns shown, one CSRF token per page, and row
actions that answer with the row (and without JavaScript come back to the same page)."""
import html
import re
from datetime import timedelta

import pytest
from sqlalchemy import event
from sqlmodel import select

from tests import list_factory
from tests.list_factory import T0
from webapp import db, history
from webapp.models import MailServer, Membership, Role

NEXT = re.compile(r'<a href="([^"]+)" hx-get="[^"]+" hx-push-url="true" rel="next">')
PREVIOUS = re.compile(r'<a href="([^"]+)" hx-get="[^"]+" hx-push-url="true" rel="prev">')


def link(pattern, page: str) -> str | None:
    found = pattern.search(page)
    return html.unescape(found.group(1)) if found else None


def walk(client, url: str, row: re.Pattern) -> tuple[list[list[str]], str]:
    """Every page from `url` on by its "Next" link: the rows of each (by `row`), and the last page."""
    pages = []
    while True:
        response = client.get(url)
        assert response.status_code == 200, url
        pages.append(row.findall(response.text))
        following = link(NEXT, response.text)
        if following is None:
            return pages, response.text
        url = following


def statements(app):
    """The SQL statements run while the block runs."""
    seen = []

    def remember(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)
    engine = app.extensions["mailroom.engine"]
    event.listen(engine, "before_cursor_execute", remember)
    return seen, lambda: event.remove(engine, "before_cursor_execute", remember)


# -- the server list --------------------------------------------------------------------------

SERVER_ROW = re.compile(r'<tbody id="server-(\d+)">')


def test_the_server_list_pages_through_every_server_once_in_order(app, staff, portal):
    ids = list_factory.servers(app, portal, 130)
    pages, last = walk(staff, "/p/help/servers/?size=50", SERVER_ROW)
    assert [len(p) for p in pages] == [50, 50, 30]
    assert [int(i) for p in pages for i in p] == ids  # in the order of preference, none twice
    assert "130 servers, 130 enabled" in last
    back = staff.get(link(PREVIOUS, last)).text
    assert [int(i) for i in SERVER_ROW.findall(back)] == ids[50:100]
    assert 'class="muted">51</td>' not in back and "<td>51</td>" in back  # the position, not the row on the page


def test_a_server_is_found_by_host_description_or_from_address(app, staff, portal):
    ids = list_factory.servers(app, portal, 80)
    for query in ("relay42.example.com", "Relay 0042", "desk42@"):
        page = staff.get(f"/p/help/servers/?q={query}").text
        assert [int(i) for i in SERVER_ROW.findall(page)] == [ids[42]], query
        assert "1 match “" in page
    assert "No server matches “nowhere”." in staff.get("/p/help/servers/?q=nowhere").text
    percent = staff.get("/p/help/servers/?q=%25").text  # a LIKE wildcard is taken literally
    assert SERVER_ROW.findall(percent) == []


@pytest.mark.parametrize("bookmark", ["garbage", ">s:abc", ">i:1", ">i:1~i:x", ">dt:2026-01-01~i:3"])
def test_a_tampered_bookmark_answers_the_first_page(app, staff, portal, bookmark):
    ids = list_factory.servers(app, portal, 60)
    page = staff.get("/p/help/servers/", query_string={"page": bookmark, "size": "25"})
    assert page.status_code == 200
    assert [int(i) for i in SERVER_ROW.findall(page.text)] == ids[:25]
    assert link(PREVIOUS, page.text) is None


def test_the_server_list_reads_only_what_it_shows(app, staff, portal, make):
    make.server(portal, credential={"kind": "password", "username": "desk", "secret": "sealed-secret"},
                settings={"ca_cert": "-----BEGIN CERTIFICATE-----"})
    seen, stop = statements(app)
    try:
        page = staff.get("/p/help/servers/").text
    finally:
        stop()
    listing = [s for s in seen if "ORDER BY mail_server.position" in s]
    assert listing, seen
    for statement in listing:
        assert "credential.secret" not in statement and "bound_to" not in statement
        keys_only = re.sub(r"JSON_EXTRACT\(mail_server\.settings,|mail_server\.settings\s*->", "", statement)
        assert "mail_server.settings" not in keys_only  # the keys the row shows, never the whole settings
        assert "ca_cert" not in statement and "mail_server.proxy" not in statement
    assert "Basic (username and password)" in page and "127.0.0.1:25" in page


def test_one_csrf_token_per_page_however_many_rows(app, admin, portal, make):
    make.server(portal)
    one = admin.get("/p/help/servers/").text
    list_factory.servers(app, portal, 99)
    hundred = admin.get("/p/help/servers/?size=100").text
    assert len(SERVER_ROW.findall(hundred)) == 100
    assert one.count('name="csrf_token"') == hundred.count('name="csrf_token"') == 2  # sign-out, the rows' form
    assert hundred.count('form="server-actions"') == 4 * 100 - 2  # Validate, Disable, ↑, ↓ (not first ↑, last ↓)


def test_enable_disable_answers_with_the_row_and_the_counts(app, admin, portal):
    ids = list_factory.servers(app, portal, 70)
    response = admin.post(f"/p/help/servers/{ids[60]}/toggle?size=25", htmx=True)
    assert response.status_code == 200
    assert response.text.strip().startswith(f'<tbody id="server-{ids[60]}">')
    assert SERVER_ROW.findall(response.text) == [str(ids[60])]  # the one row, not the list
    assert "Enable</button>" in response.text and "Disabled" in response.text
    assert '<p id="server-counts" class="muted" hx-swap-oob="true">70 servers, 69 enabled' in response.text
    assert '<div id="delivery-banner" hx-swap-oob="true">' in response.text
    with app.app_context():
        assert db.session().get(MailServer, ids[60]).enabled is False


def test_without_javascript_a_row_action_comes_back_to_the_same_page(app, admin, portal):
    ids = list_factory.servers(app, portal, 70)
    second = link(NEXT, admin.get("/p/help/servers/?size=25&q=Relay").text)
    page = admin.get(second).text
    action = html.unescape(re.search(rf'formaction="([^"]+/{ids[30]}/toggle[^"]*)"', page).group(1))
    token = re.search(r'<form id="server-actions" method="post" action="[^"]+" hidden>'
                      r'<input type="hidden" name="csrf_token" value="([^"]+)">', page).group(1)
    response = admin.http.post(action, data={"csrf_token": token})  # the page's one form, as a browser posts it
    assert response.status_code == 303
    assert html.unescape(response.headers["Location"]) == second
    back = admin.get(response.headers["Location"]).text
    assert "Disabled “Relay 0030”." in back and [int(i) for i in SERVER_ROW.findall(back)] == ids[25:50]


# -- users, portals, members ---------------------------------------------------------------------

USER_ROW = re.compile(r'<td><a href="/users/(\d+)">')


@pytest.fixture
def root(make, client):
    make.user("root@example.com", superadmin=True)
    return client.login("root@example.com")


SYSTEM_CHOICE = re.compile(r'name="server" value="(\d+)"')  # a "Use this server" button


def test_the_system_mail_page_searches_every_portals_servers_a_page_at_a_time(app, root, make, portal):
    ids = list_factory.servers(app, portal, 120)
    operations = make.portal(slug="ops", name="Operations", base_url="")
    relay = make.server(operations, from_address="mailroom@example.com", description="System relay")
    pages, last = walk(root, "/settings/system-mail?size=50", SYSTEM_CHOICE)
    assert [len(p) for p in pages] == [50, 50, 21]
    assert [int(i) for p in pages for i in p] == [*ids, relay.id]  # by portal, in each portal's order, none twice

    htmx = {"HX-Request": "true"}
    by_portal = root.get("/settings/system-mail?q=operat", headers=htmx)
    assert by_portal.status_code == 200 and "<html" not in by_portal.text
    assert SYSTEM_CHOICE.findall(by_portal.text) == [str(relay.id)]
    assert "1 server match" in by_portal.text and "Operations — #1 System relay (mailroom@example.com)" in by_portal.text
    assert SYSTEM_CHOICE.findall(root.get("/settings/system-mail?q=Relay 0042").text) == [str(ids[42])]
    assert SYSTEM_CHOICE.findall(root.get("/settings/system-mail?q=relay7.example").text) == [str(ids[7])]

    assert root.post("/settings/system-mail", {"server": str(relay.id)}).status_code == 303
    elsewhere = root.get("/settings/system-mail?q=Relay 0001").text  # the choice is shown beside any search
    assert re.search(r'id="system-mail-current">System mail goes through <strong>Operations — #1 System relay '
                     r'\(mailroom@example.com\)</strong>', elsewhere)
    assert SYSTEM_CHOICE.findall(elsewhere) == [str(ids[1])]
    chosen = root.get("/settings/system-mail?q=operations").text
    assert SYSTEM_CHOICE.findall(chosen) == [] and "Chosen" in chosen
    assert root.post("/settings/system-mail", {"server": ""}).status_code == 303
    assert "No server is\nchosen" in root.get("/settings/system-mail").text
    refused = root.post("/settings/system-mail", {"server": "the first"})
    assert refused.status_code == 422 and "Choose a server from the list." in refused.text


def test_the_users_index_pages_and_finds_a_user_by_email_or_name(app, root):
    ids = list_factory.users(app, 140, name="Person {i}")
    pages, last = walk(root, "/users/?size=50", USER_ROW)
    seen = [int(i) for p in pages for i in p]
    assert [len(p) for p in pages] == [50, 50, 41] and sorted(seen) == sorted([*ids, _id_of(app, "root")])
    assert "141 users" in last
    assert [int(i) for i in USER_ROW.findall(root.get("/users/?q=user00077@").text)] == [ids[77]]
    assert [int(i) for i in USER_ROW.findall(root.get("/users/?q=person 77").text)] == [ids[77]]
    tampered = root.get("/users/?size=25&page=>s:zzz~i:1").text
    assert len(USER_ROW.findall(tampered)) == 25 and link(PREVIOUS, tampered) is None


def test_the_users_index_reads_no_password_hash(app, root):
    list_factory.users(app, 30)
    seen, stop = statements(app)
    try:
        root.get("/users/")
    finally:
        stop()
    listing = [s for s in seen if 'ORDER BY "user".email' in s or "ORDER BY user.email" in s]
    assert listing and not any("password_hash" in s for s in listing)


def _id_of(app, local: str) -> int:
    from webapp.models import User
    with app.app_context():
        return db.session().exec(select(User.id).where(User.email == f"{local}@example.com")).one()


PORTAL_ROW = re.compile(r'<tr><td><a href="/p/([a-z0-9-]+)/servers/">')


def test_the_portals_index_pages_and_finds_a_portal(app, root, make):
    list_factory.portals(app, 120)
    pages, last = walk(root, "/?size=50", PORTAL_ROW)
    assert [len(p) for p in pages] == [50, 50, 20]
    assert [s for p in pages for s in p] == [f"portal-{i:05d}" for i in range(120)]  # by name
    assert PORTAL_ROW.findall(root.get("/?q=portal-00099").text) == ["portal-00099"]
    assert PORTAL_ROW.findall(root.get("/?q=Portal 00042").text) == ["portal-00042"]


def test_a_member_sees_only_their_portals_in_the_index(app, make, client):
    list_factory.portals(app, 60)
    mine = make.portal(slug="mine", name="Mine")
    make.member(mine, "ann@example.com", Role.STAFF)
    client.login("ann@example.com")
    page = client.get("/").text
    assert PORTAL_ROW.findall(page) == ["mine"] and "1 portal" in page
    assert PORTAL_ROW.findall(client.get("/?q=portal-").text) == []


MEMBER_ROW = re.compile(r'<tr id="member-(\d+)">')


def _memberships(app, portal) -> dict[int, int]:
    with app.app_context():
        return dict(db.session().execute(select(Membership.user_id, Membership.id)
                                         .where(Membership.portal_id == portal.id)).all())


def test_the_members_list_pages_and_finds_a_member(app, admin, portal):
    users = list_factory.users(app, 90, email="member{i:03d}@example.com")
    list_factory.members(app, portal, users)
    by_user = _memberships(app, portal)
    pages, last = walk(admin, "/p/help/members?size=25", MEMBER_ROW)
    assert [len(p) for p in pages] == [25, 25, 25, 16]
    assert "91 members, 1 admin" in last
    found = admin.get("/p/help/members?q=member042@").text
    assert [int(i) for i in MEMBER_ROW.findall(found)] == [by_user[users[42]]]


def test_make_admin_answers_with_the_row_and_a_portal_keeps_an_admin(app, admin, portal):
    users = list_factory.users(app, 30, email="member{i:03d}@example.com")
    list_factory.members(app, portal, users)
    by_user = _memberships(app, portal)
    target = by_user[users[3]]
    response = admin.post(f"/p/help/members/{target}/role", {"role": "admin"}, htmx=True)
    assert response.status_code == 200
    assert MEMBER_ROW.findall(response.text) == [str(target)]
    assert "Make staff</button>" in response.text and "<td>Admin</td>" in response.text
    assert '<p id="member-counts" class="muted" hx-swap-oob="true">31 members, 2 admins' in response.text
    assert "Changed the role." in response.text

    admin.post(f"/p/help/members/{target}/role", {"role": "staff"}, htmx=True)
    own = by_user[_id_of(app, "admin")]
    refused = admin.post(f"/p/help/members/{own}/role", {"role": "staff"}, htmx=True)
    assert refused.status_code == 409 and "A portal needs at least one admin" in refused.text
    assert "<td>Admin</td>" in refused.text


def test_make_admin_without_javascript_comes_back_to_the_same_page(app, admin, portal):
    users = list_factory.users(app, 60, email="member{i:03d}@example.com")
    list_factory.members(app, portal, users)
    second = link(NEXT, admin.get("/p/help/members?size=25").text)
    page = admin.get(second).text
    [(action, role)] = re.findall(r'formaction="([^"]+)" name="role" value="(\w+)"', page)[:1]
    response = admin.post(html.unescape(action), {"role": role})
    assert response.status_code == 303 and html.unescape(response.headers["Location"]) == second
    assert "Changed the role." in admin.get(second).text


# -- History ------------------------------------------------------------------------------------

EVENT = re.compile(r"Changed the server “Relay (\d+)”")


def test_history_reaches_back_to_its_first_event(app, staff, portal):
    list_factory.events(app, portal, 620)
    pages, last = walk(staff, "/p/help/history?size=200", EVENT)
    assert [len(p) for p in pages] == [200, 200, 200, 20]
    assert [int(i) for p in pages for i in p] == list(range(619, -1, -1))  # newest first, down to the first
    assert "More than 1,000 events" not in last and "620 events in all" in last


def test_history_by_time_range_actor_and_words(app, staff, portal):
    list_factory.events(app, portal, 300)
    list_factory.events(app, portal, 5, start=T0 + timedelta(hours=1, seconds=30), actor="command line",
                        subject="“Backup relay {i}”")
    hours = staff.get("/p/help/history", query_string={"since": "2026-10-01T09:00", "until": "2026-10-01T09:10"}).text
    assert [int(i) for i in EVENT.findall(hours)] == list(range(69, 59, -1))
    by_actor = staff.get("/p/help/history?actor=command line").text
    assert by_actor.count("Backup relay") == 5 and not EVENT.findall(by_actor)
    assert len(EVENT.findall(staff.get("/p/help/history?actor=Admin@Example.com&size=25").text)) == 25
    words = staff.get("/p/help/history?q=Relay 123”").text
    assert [int(i) for i in EVENT.findall(words)] == [123]
    wrong = staff.get("/p/help/history", query_string={"since": "2026-10-02T00:00", "until": "2026-10-01T00:00"})
    assert wrong.status_code == 422 and "Choose a time after" in wrong.text


def test_a_search_in_history_looks_through_a_window_then_offers_older(app, staff, portal, monkeypatch):
    monkeypatch.setattr(history, "SEARCH_WINDOW", 100)
    list_factory.events(app, portal, 250, subject="“Relay {i}”")
    page = staff.get("/p/help/history?q=Relay 1”").text  # only the oldest matches ("Relay 1”")
    assert EVENT.findall(page) == [] and "Search older →" in page and "Searched 100 events" in page
    pages, last = walk(staff, link(NEXT, page), EVENT)
    assert [i for p in pages for i in p] == ["1"]


def test_history_bookmark_tampering_answers_the_first_page(app, staff, portal):
    list_factory.events(app, portal, 60)
    for bookmark in ("garbage", ">i:5", ">dt:2026-10-01T08:00:00~i:x", ">s:a~i:1"):
        page = staff.get("/p/help/history", query_string={"page": bookmark, "size": "25"}).text
        assert [int(i) for i in EVENT.findall(page)] == list(range(59, 34, -1)), bookmark


def test_history_pages_back_to_newer_events(app, staff, portal):
    list_factory.events(app, portal, 130)
    first = staff.get("/p/help/history?size=50").text
    second = staff.get(link(NEXT, first)).text
    third = staff.get(link(NEXT, second)).text
    assert [int(i) for i in EVENT.findall(third)] == list(range(29, -1, -1))
    back = staff.get(link(PREVIOUS, third)).text
    assert [int(i) for i in EVENT.findall(back)] == list(range(79, 29, -1))
    assert link(PREVIOUS, staff.get(link(PREVIOUS, back)).text) is None  # the newest page has no "Newer"


@pytest.mark.parametrize("query", ["q=a%00b", "q=" + "x" * 201, "q=line%0Abreak"])
def test_a_search_that_cannot_be_read_says_so_and_lists_nothing(app, staff, portal, query):
    list_factory.servers(app, portal, 3)
    response = staff.get(f"/p/help/servers/?{query}")
    assert response.status_code == 422 and "Correct the search above to see the servers." in response.text
    assert SERVER_ROW.findall(response.text) == []


def test_an_unknown_page_size_is_the_default(app, staff, portal):
    list_factory.servers(app, portal, 60)
    assert len(SERVER_ROW.findall(staff.get("/p/help/servers/?size=7").text)) == 50


def test_a_move_changes_two_rows_and_history_says_which_places(app, admin, portal):
    ids = list_factory.servers(app, portal, 300)
    listed = admin.post(f"/p/help/servers/{ids[150]}/move/up?size=200", htmx=True)
    assert listed.text.strip().startswith('<div id="server-list"')  # this page of the list again
    assert [int(i) for i in SERVER_ROW.findall(listed.text)] == [*ids[:149], ids[150], ids[149], *ids[151:200]]
    with app.app_context():
        positions = dict(db.session().execute(select(MailServer.id, MailServer.position)
                                              .where(MailServer.portal_id == portal.id)).all())
    assert (positions[ids[150]], positions[ids[149]]) == (150, 151)
    assert sorted(positions.values()) == list(range(1, 301))
    history = admin.get("/p/help/history").text
    assert "Moved the server “Relay 0150”" in history
    assert '<span class="muted">Position in the list:</span>' in history and "151 → 150" in history


@pytest.mark.parametrize("url", ["/users/?q=a%00b", "/?q=a%00b", "/p/help/members?q=a%00b",
                                 "/p/help/history?q=a%00b", "/p/help/history?actor=a%00b",
                                 "/settings/system-mail?q=a%00b"])
def test_a_nul_in_any_search_is_refused_before_the_database_sees_it(app, root, make, portal, url):
    """PostgreSQL refuses NUL in a text parameter: neither the page nor its counts may send it one."""
    make.member(portal, "root-member@example.com")
    response = root.get(url)
    assert response.status_code == 422, response.status_code
