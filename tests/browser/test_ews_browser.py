"""Exchange Web Services in a real browser: an admin configures an EWS server with Basic
authentication (the Exchange Online warning follows the Connect URL), validates it, saves it and
sends a sample mail through the EWS peer on loopback."""
import re

import pytest
from playwright.sync_api import Page, expect

from .pages import add_server, field, htmx_ready, open_mail_servers, sign_in, stored_servers

SENDER = "sender@example.test"
USERNAME = "EXAMPLE\\mailer"
PASSWORD = "Ews-Browser-Pass-3"


@pytest.fixture
def peer(ews_peer):
    return ews_peer(users={USERNAME: PASSWORD})


def configure_ews_server(page: Page, peer) -> None:
    add_server(page)
    field(page, "Description").fill("Exchange on premises")
    field(page, "Connection protocol").select_option(label="Exchange Web Services (EWS)")
    expect(field(page, "Connect URL")).to_be_visible()  # the whole form followed the protocol
    htmx_ready(page)
    expect(field(page, "Authentication")).to_have_value("basic")
    expect(field(page, "Authentication mechanism")).to_have_value("auto")

    url = field(page, "Connect URL")
    url.fill("https://outlook.office365.com/EWS/Exchange.asmx")
    url.press("Tab")  # a change: the warning follows the URL
    warning = page.locator("#ews-online")
    expect(warning).to_contain_text("Microsoft has been blocking EWS there since October 2026")
    url.fill(peer.url)
    url.press("Tab")
    expect(warning.locator("p.warning")).to_have_count(0)

    field(page, "Mailbox").fill(SENDER)
    field(page, "Username").fill(USERNAME)
    field(page, "Password").fill(PASSWORD)
    field(page, "Confirm password").fill(PASSWORD)
    field(page, "From address").fill(SENDER)
    field(page, "Sender name").fill("Help Desk")
    field(page, "Reply-to address").fill("support@example.test")


def test_an_admin_configures_validates_and_sends_through_ews(page, app, help_desk, peer):
    sign_in(page)
    open_mail_servers(page)
    configure_ews_server(page, peer)

    page.get_by_role("button", name="Validate").click()
    report = page.locator("#report")
    expect(report).to_contain_text("All checks passed.", timeout=20_000)
    expect(report).to_contain_text("Exchange knows the mailbox sender@example.test (Sender)")
    for step in ("Connect", "Sign in", "Mailbox"):
        expect(report.locator("li.step.passed").filter(has_text=re.compile(rf"✔ {step}\b"))).not_to_have_count(0)
    requests = report.locator("details").filter(has=page.locator("summary", has_text="EWS requests"))
    requests.locator("summary").click()
    expect(requests.locator("pre.transcript")).to_contain_text(f"C: POST {peer.url} (ResolveNames)")
    assert PASSWORD not in page.content()
    assert peer.sent == [] and stored_servers(app) == []  # Validate sends nothing, saves nothing
    expect(field(page, "Mailbox")).to_have_value(SENDER)  # typed after the URL's swap: still there

    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("status").filter(has_text="Saved “Exchange on premises”.")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="Exchange on premises")
    expect(row).to_contain_text(peer.url)
    expect(row).to_contain_text("Exchange Web Services (EWS)")

    row.get_by_role("link", name="Send a sample mail").click()
    expect(page.get_by_role("heading", name="Send a sample mail")).to_be_visible()
    htmx_ready(page)
    page.get_by_label("Send the sample mail to").fill("jane@example.org")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status").filter(has_text="Email server accepted mail for delivery.")) \
        .to_be_visible(timeout=20_000)
    expect(page.locator("#sample")).to_contain_text("EWS accepted the message (CreateItem SendAndSaveCopy)")
    assert PASSWORD not in page.content()

    [mail] = peer.sent
    assert mail.recipients == ["jane@example.org"] and mail.disposition == "SendAndSaveCopy"
    assert mail.mime["From"].addresses[0].display_name == "Help Desk"
    assert mail.mime["Reply-To"] == "support@example.test"
    [server] = stored_servers(app)
    assert server.settings["ews_url"] == peer.url and server.credential.username == USERNAME
