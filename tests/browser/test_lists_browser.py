"""The lists that grow in a real browser, under the app's real CSP: paging through a long server
list and back, finding a server by search, a row action that swaps only its row; the users index
found by search; a member made admin from their row; the same row action with JavaScript
off (the page's one form and token); the system-mail server chosen from a search."""
import re

from playwright.sync_api import Page, expect
from sqlmodel import select

from tests import list_factory
from tests.conftest import PASSWORD
from webapp import db
from webapp.models import MailServer, Membership, Role

from .pages import htmx_ready, htmx_settled, open_mail_servers, sign_in


def rows(page: Page):
    return page.locator("table.servers > tbody")


def test_page_through_a_long_server_list_and_find_one_by_search(page, app, help_desk):
    ids = list_factory.servers(app, help_desk, 130)
    sign_in(page)
    open_mail_servers(page)
    htmx_ready(page)
    expect(rows(page)).to_have_count(50)
    expect(page.locator("#server-counts")).to_have_text("130 servers, 130 enabled")
    expect(rows(page).first).to_contain_text("Relay 0000")

    page.get_by_role("link", name="Next →").click()
    expect(rows(page).first).to_contain_text("Relay 0050")
    expect(page).to_have_url(re.compile(r"page="))
    htmx_settled(page)
    page.get_by_role("link", name="Next →").click()
    expect(rows(page)).to_have_count(30)
    expect(rows(page).last).to_contain_text("Relay 0129")
    expect(page.get_by_role("link", name="Next →")).to_have_count(0)
    htmx_settled(page)
    page.get_by_role("link", name="← Previous").click()
    expect(rows(page).first).to_contain_text("Relay 0050")
    expect(rows(page)).to_have_count(50)

    htmx_settled(page)
    page.get_by_label("Description, host or From address").fill("relay77.example.com")
    page.get_by_role("button", name="Search").click()
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("Relay 0077")
    expect(page).to_have_url(re.compile(r"q=relay77\.example\.com"))
    expect(page.locator("#server-counts")).to_contain_text("1 match “relay77.example.com”")

    htmx_settled(page)
    row = page.locator(f"#server-{ids[77]}")
    row.get_by_role("button", name="Disable").click()
    expect(row.get_by_role("button", name="Enable")).to_be_visible()
    expect(row).to_contain_text("Disabled")
    expect(page.locator("#server-counts")).to_contain_text("130 servers, 129 enabled")  # out of band
    expect(page.get_by_label("Description, host or From address")).to_have_value("relay77.example.com")  # untouched
    with app.app_context():
        assert db.session().get(MailServer, ids[77]).enabled is False


def test_find_a_user_in_a_long_users_index(page, app, make):
    make.user("root@example.com", superadmin=True)
    list_factory.users(app, 260, name="Person {i}")
    sign_in(page, "root@example.com")
    page.get_by_role("link", name="Users").click()
    htmx_ready(page)
    users = page.locator("table.users tbody tr")
    expect(users).to_have_count(50)
    page.get_by_label("Email or name").fill("Person 213")
    page.get_by_role("button", name="Search").click()
    expect(users).to_have_count(1)
    expect(users.first).to_contain_text("user00213@example.com")
    users.first.get_by_role("link").click()
    expect(page.get_by_label("Email")).to_have_value("user00213@example.com")


def test_a_row_action_without_javascript_comes_back_to_the_same_page(app, make, chromium, live_url):
    portal = make.portal(slug="help", name="Help Desk")
    make.member(portal, "admin@example.com", Role.ADMIN)
    ids = list_factory.servers(app, portal, 60)
    context = chromium.new_context(base_url=live_url, java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto("/login")
        page.get_by_label("Email").fill("admin@example.com")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.goto("/p/help/servers/?size=25")
        page.get_by_role("link", name="Next →").click()
        second = page.url
        page.locator(f"#server-{ids[30]}").get_by_role("button", name="Disable").click()
        expect(page.get_by_text("Disabled “Relay 0030”.")).to_be_visible()
        assert page.url == second  # the same page of the list
        expect(page.locator(f"#server-{ids[30]}").get_by_role("button", name="Enable")).to_be_visible()
    finally:
        context.close()
    with app.app_context():
        assert db.session().get(MailServer, ids[30]).enabled is False


def test_make_a_member_admin_from_a_long_members_list(page, app, help_desk):
    users = list_factory.users(app, 80, email="member{i:03d}@example.com")
    list_factory.members(app, help_desk, users)
    sign_in(page)
    open_mail_servers(page)
    page.get_by_role("link", name="Members").click()
    htmx_ready(page)
    expect(page.locator("table.members tbody tr")).to_have_count(50)
    expect(page.locator("#member-counts")).to_have_text("81 members, 1 admin")
    page.get_by_label("Email").first.fill("member064@")
    page.get_by_role("button", name="Search").click()
    row = page.locator("table.members tbody tr")
    expect(row).to_have_count(1)
    htmx_settled(page)
    row.get_by_role("button", name="Make member064@example.com admin").click()
    expect(row.get_by_role("button", name="Make member064@example.com staff")).to_be_visible()
    expect(row).to_contain_text("Admin")
    expect(page.locator("#member-counts")).to_contain_text("81 members, 2 admins")
    expect(page.get_by_role("status").filter(has_text="Changed the role.")).to_be_visible()
    with app.app_context():
        role = db.session().exec(select(Membership.role).where(Membership.user_id == users[64])).one()
    assert role == Role.ADMIN


def test_choose_the_system_mail_server_from_a_search_of_every_portals_servers(page, app, make, help_desk):
    list_factory.servers(app, help_desk, 130)
    operations = make.portal(slug="ops", name="Operations")
    make.server(operations, from_address="mailroom@example.com", description="System relay")
    make.user("root@example.com", superadmin=True)
    sign_in(page, "root@example.com")
    page.goto("/settings/system-mail")
    htmx_ready(page)
    choices = page.locator("table.system-mail-choices tbody tr")
    expect(choices).to_have_count(50)
    expect(page.locator("#system-mail-current")).to_contain_text("No server is chosen")

    page.get_by_label("Portal or server").fill("operations")
    page.get_by_role("button", name="Search").click()
    expect(choices).to_have_count(1)
    expect(page).to_have_url(re.compile(r"q=operations"))
    htmx_settled(page)
    choices.first.get_by_role("button", name="Use Operations — #1 System relay (mailroom@example.com)").click()
    expect(page.get_by_role("status").filter(has_text="Saved the system-mail server.")).to_be_visible()
    expect(page.locator("#system-mail-current")).to_contain_text("Operations — #1 System relay (mailroom@example.com)")
    expect(choices).to_have_count(50)  # the whole list again, the choice shown above it
