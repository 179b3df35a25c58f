"""With JavaScript off the server form still works, by plain submits."""
from playwright.sync_api import expect
from sqlmodel import select

from tests.conftest import PASSWORD
from webapp import db
from webapp.models import MailServer, Role


def test_the_server_form_works_by_plain_submits(app, make, chromium, live_url):
    make.member(make.portal(slug="help", name="Help Desk"), "admin@example.com", Role.ADMIN)
    context = chromium.new_context(base_url=live_url, java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto("/login")
        page.get_by_label("Email").fill("admin@example.com")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.goto("/p/help/servers/new")
        page.get_by_label("Description", exact=True).fill("No-script relay")
        page.get_by_label("Server name / IP address").fill("smtp.example.com")
        page.get_by_label("Security").select_option("tls")
        page.get_by_label("Authentication", exact=True).select_option("basic")
        page.get_by_role("button", name="Update the form for these choices").click()
        expect(page.locator("#port")).to_have_value("465")
        expect(page.get_by_label("Username")).to_be_visible()
        expect(page.get_by_label("Description", exact=True)).to_have_value("No-script relay")
        page.get_by_label("Username").fill("mailer@example.com")
        page.get_by_label("Password", exact=True).fill("Secret-Pass-1")
        page.get_by_label("Confirm password").fill("Secret-Pass-1")
        page.get_by_label("From address").fill("helpdesk@example.com")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_text("Saved “No-script relay”.")).to_be_visible()
    finally:
        context.close()
    with app.app_context():
        server = db.session().exec(select(MailServer)).unique().one()
    assert (server.settings["port"], server.settings["security"]) == (465, "tls")
    assert (server.credential.kind, server.credential.username) == ("password", "mailer@example.com")
