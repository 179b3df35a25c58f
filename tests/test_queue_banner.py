"""The delivery banner: on every page of the portal while mail goes via an alternate server or
is held, and gone after."""
import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, update

from tests.queue_factory import outbox  # noqa: F401 (a fixture)
from webapp import db
from webapp.models import MailServer, Portal, Role

SINCE = datetime(2026, 12, 6, 9, 15, tzinfo=UTC)


def portal_pages(app, world) -> list[str]:
    """Every page of the portal a GET shows (from the URL map, so a new page is covered too)."""
    from tests.test_access import by_key, url

    pages = []
    for rule in app.url_map.iter_rules():
        if "slug" in rule.arguments and "GET" in rule.methods and not by_key(rule):  # the API answers JSON
            pages.append(url(rule, world))
    return pages


def set_portal(app, portal, **values) -> None:
    with app.app_context():
        db.session().execute(update(Portal).where(Portal.id == portal.id).values(**values))
        db.session().commit()


def set_server(app, server, **values) -> None:
    with app.app_context():
        db.session().execute(update(MailServer).where(MailServer.id == server.id).values(**values))
        db.session().commit()


def banner_of(page: str) -> str | None:
    found = re.search(r'<div class="delivery-banner".*?</div>', page, re.S)
    return " ".join(found.group(0).split()) if found else None


@pytest.fixture
def two_servers(make, portal):
    return make.server(portal, description="Office relay"), make.server(portal, description="Backup relay")


def test_failover_shows_on_every_portal_page_and_goes_away_after(app, admin, portal, two_servers, outbox):
    primary, _backup = two_servers
    mail = outbox.mail()
    world = {"slug": "help", "server_id": primary.id, "mail_id": mail.id, "membership_id": 1, "name": "tls",
             "direction": "up", "action": "retry", "key_id": 1, "credential_id": 1}
    set_portal(app, portal, failover_since=SINCE, failover_reason="Office relay refused the connection")
    set_server(app, primary, failing_since=SINCE, failing_reason="refused")
    pages = [p for p in portal_pages(app, world) if admin.get(p).status_code == 200]
    assert len(pages) >= 7  # servers, edit, new, samples, queue, a message, settings, history ...
    for page_url in pages:
        banner = banner_of(admin.get(page_url).text)
        assert banner is not None, page_url
        assert ("Mail is going out via the alternate server <strong>Backup relay</strong> since 2026-12-06 09:15 UTC: "
                "Office relay refused the connection.") in banner
        assert '<a href="/p/help/queue/">View the mail queue</a>' in banner
    assert banner_of(admin.get("/").text) is None  # not a portal page

    set_portal(app, portal, failover_since=None, failover_reason="")
    set_server(app, primary, failing_since=None)
    for page_url in pages:
        assert banner_of(admin.get(page_url).text) is None, page_url


def test_failover_without_a_working_alternate_says_mail_is_not_going_out(app, admin, portal, two_servers):
    for server in two_servers:
        set_server(app, server, failing_since=SINCE)
    set_portal(app, portal, failover_since=SINCE, failover_reason="both refuse connections")
    banner = banner_of(admin.get("/p/help/queue/").text)
    assert "Mail is not going out: the primary server fails and no alternate server works either" in banner


@pytest.mark.parametrize("kind, advice", [
    ("password", "Correct the username or password in the server's settings"),
    ("oauth_delegated", "Re-authorize the server (the mailbox owner signs in again)"),
    ("oauth_app", "Check the client secret and the app's permission"),
])
def test_held_mail_says_why_and_what_to_do_with_a_link_to_the_server(app, admin, make, portal, kind, advice):
    server = make.server(portal, description="Office 365", credential={"kind": kind})
    set_server(app, server, held_since=SINCE, held_reason="535 5.7.3 Authentication unsuccessful")
    banner = banner_of(admin.get("/p/help/history").text)
    assert (f'Mail through <a href="/p/help/servers/{server.id}/edit"><strong>Office 365</strong></a> is held since '
            "2026-12-06 09:15 UTC: 535 5.7.3 Authentication unsuccessful.") in banner
    assert advice in banner and "the held mail then goes out by itself" in banner
    assert '<a href="/p/help/queue/?state=held">See the held mail</a>' in banner
    assert "alternate" not in banner  # no failover

    set_server(app, server, held_since=None, held_reason="")
    assert banner_of(admin.get("/p/help/history").text) is None


def test_staff_are_told_too_and_sent_to_the_server_list(app, staff, make, portal):
    server = make.server(portal, description="Relay", credential={"kind": "password"})
    set_server(app, server, held_since=SINCE, held_reason="wrong password")
    banner = banner_of(staff.get("/p/help/servers/").text)
    assert '<a href="/p/help/servers/"><strong>Relay</strong></a>' in banner
    assert "(an admin of this portal can)" in banner


def test_another_portals_trouble_is_not_shown(app, admin, make, portal):
    other = make.portal(slug="other", name="Other")
    server = make.server(other)
    set_server(app, server, held_since=SINCE, held_reason="revoked")
    set_portal(app, other, failover_since=SINCE)
    assert banner_of(admin.get("/p/help/servers/").text) is None


def test_the_banner_costs_one_query(app, admin, portal, two_servers):
    set_portal(app, portal, failover_since=SINCE, failover_reason="down")
    set_server(app, two_servers[0], failing_since=SINCE, held_since=SINCE, held_reason="bad password")
    seen = []
    with app.app_context():
        engine = db.engine()
    listener = lambda _c, _cur, statement, *_: seen.append(statement)  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        page = admin.get("/p/help/history").text  # History itself reads no server
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    banner = banner_of(page)
    assert "via the alternate server <strong>Backup relay</strong>" in banner and "bad password" in banner
    assert len([s for s in seen if "FROM mail_server" in s]) == 1
