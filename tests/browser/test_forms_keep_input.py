"""What a person sees when a form comes back: typed passwords kept (never written into the
HTML), the first bad field focused, the report saying why nothing ran; removals ask first."""
from playwright.sync_api import expect
from sqlmodel import select

from webapp import db
from webapp.models import Membership, Role

from .pages import (add_server, choose_auth, field, htmx_ready, open_mail_servers, sign_in,
                                   stored_password, stored_servers)

SECRET = "typed-but-never-sent-back-7"


def fill_with_a_bad_host(page):
    field(page, "Description").fill("Office relay")
    field(page, "Server name / IP address").fill("smtp example.com")
    choose_auth(page, "Basic")
    expect(field(page, "Username")).to_be_visible()
    field(page, "Username").fill("relay-user")
    field(page, "Password").fill(SECRET)
    field(page, "Confirm password").fill(SECRET)
    field(page, "From address").fill("helpdesk@example.com")


def test_validate_with_a_bad_field_says_so_focuses_it_and_keeps_the_password(page, app, help_desk):
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    fill_with_a_bad_host(page)

    page.get_by_role("button", name="Validate").click()
    report = page.locator("#report")
    expect(report).to_contain_text("Nothing was checked: some fields need attention.")
    expect(report.get_by_role("link", name="Server name / IP address")).to_be_visible()
    host = field(page, "Server name / IP address")
    expect(host).to_be_focused()
    expect(host).to_have_accessible_description("A server name cannot contain spaces.")
    expect(field(page, "Password")).to_have_value(SECRET)
    expect(field(page, "Confirm password")).to_have_value(SECRET)
    assert SECRET not in page.content()
    assert stored_servers(app) == []

    host.fill("smtp.example.com")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("status").filter(has_text="Saved “Office relay”.")).to_be_visible()
    [server] = stored_servers(app)
    assert stored_password(app, server) == SECRET


def test_save_with_errors_keeps_the_password_and_focuses_the_first_bad_field(page, app, help_desk):
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    fill_with_a_bad_host(page)
    field(page, "From address").fill("not an address")

    page.get_by_role("button", name="Save", exact=True).click()
    host = field(page, "Server name / IP address")
    expect(host).to_have_attribute("aria-invalid", "true")
    expect(host).to_be_focused()
    expect(field(page, "From address")).to_have_attribute("aria-invalid", "true")
    expect(field(page, "Password")).to_have_value(SECRET)
    expect(page.locator("small.retype")).to_have_count(0)  # put back: no need to type it again
    assert SECRET not in page.content()

    host.fill("smtp.example.com")
    field(page, "From address").fill("helpdesk@example.com")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("heading", name="Mail servers")).to_be_visible()
    [server] = stored_servers(app)
    assert stored_password(app, server) == SECRET


def test_removing_a_member_asks_first(page, app, make, help_desk):
    make.member(help_desk, "agent@example.com", Role.STAFF)
    sign_in(page)
    page.get_by_role("link", name="Help Desk").click()
    page.get_by_role("link", name="Members").click()
    row = page.get_by_role("row").filter(has_text="agent@example.com")
    row.get_by_role("link", name="Remove").click()
    expect(page.get_by_role("heading", name="Remove agent@example.com from Help Desk?")).to_be_visible()
    page.get_by_role("button", name="Cancel").click()  # a link styled as a button
    expect(page.get_by_role("row").filter(has_text="agent@example.com")).to_have_count(1)

    page.get_by_role("row").filter(has_text="agent@example.com").get_by_role("link", name="Remove").click()
    htmx_ready(page)
    page.get_by_role("button", name="Remove the member").click()
    expect(page.get_by_role("status").filter(has_text="Removed the member.")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="agent@example.com")).to_have_count(0)
    with app.app_context():
        assert [m.role for m in db.session().exec(select(Membership))] == [Role.ADMIN]
