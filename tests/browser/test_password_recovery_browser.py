"""Forgot your password? in a real browser under the app's CSP: ask for the link, the worker answers the
request and delivers the link
to a real SMTP peer, open the link from the mail, choose a new password, sign in with it; the link is
dead afterwards."""
import re

from playwright.sync_api import expect

from tests.conftest import PASSWORD
from tests.delivery_fixtures import outbox, smtp_settings  # noqa: F401  (outbox: fixture)
from webapp import systemmail
from webapp.audit import Actor


def test_forgot_password_mail_link_new_password(page, page_problems, app, make, live_url, outbox, smtp_peer,  # noqa: F811
                                                 tmp_path):
    peer = smtp_peer("plain")
    operations = make.portal(slug="ops", name="Operations")
    server = make.server(operations, settings=smtp_settings(peer), from_address="mailroom@example.com")
    app.config["PUBLIC_URL"] = live_url
    with app.app_context():
        systemmail.designate(Actor("tests"), server.id)
    make.user("ann@example.com")

    page.goto("/login")
    page.get_by_role("link", name="Forgot your password?").click()
    expect(page.get_by_role("heading", name="Forgot your password?")).to_be_visible()
    page.get_by_label("Email").fill("ann@example.com")
    page.get_by_role("button", name="Send the link").click()
    expect(page.locator("#recovery-sent")).to_contain_text("If an account has this address")
    page.screenshot(path=str(tmp_path / "recovery-sent.png"), full_page=True)

    outbox.run_jobs("recover")  # the job that answers the request
    [mail] = outbox.all(operations)
    outbox.run(mail.id)
    [received] = peer.messages
    text = received.message.get_body(("plain",)).get_content()
    link = re.search(re.escape(live_url) + r"/password/reset/\S+", text).group(0)

    page.goto(link)
    expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    page.get_by_label("New password", exact=True).fill("short")
    page.get_by_label("Confirm the new password").fill("short")
    page.get_by_role("button", name="Set the password").click()
    expect(page.get_by_text("Use at least 10 characters.")).to_be_visible()  # 422, beside the field
    page.get_by_label("New password", exact=True).fill("a brand new password")
    page.get_by_label("Confirm the new password").fill("a brand new password")
    page.get_by_role("button", name="Set the password").click()
    expect(page.get_by_text("Your new password is set")).to_be_visible()

    page.get_by_label("Email").fill("ann@example.com")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("The email or password is not right.")).to_be_visible()
    page.get_by_label("Password", exact=True).fill("a brand new password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Portals")).to_be_visible()

    page.goto(link)
    expect(page.get_by_text("This link does not work")).to_be_visible()
    dead = [p for p in page_problems if "status of 404" in p and "/password/reset/" in p]
    assert len(dead) == 1  # the used link answers 404 on purpose; Chromium logs that
    page_problems.remove(dead[0])
