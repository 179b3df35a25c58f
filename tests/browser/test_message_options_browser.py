"""Message options in a real browser, under the app's real Content-Security-Policy: custom header rows
are added and removed through htmx (no inline script), a header Mailroom sets itself is refused beside
its row, and the saved options reach the SMTP peer in the sample mail."""
from playwright.sync_api import Page, expect

from .pages import add_server, field, htmx_settled, open_mail_servers, sign_in, stored_servers

SWAP_OPTIONS = "Add a header / Remove should re-render #section-options through htmx (hx-post on the button)"


def test_header_rows_are_added_removed_refused_and_sent(page: Page, app, help_desk, smtp_peer):
    smtp = smtp_peer("plain")
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    field(page, "Description").fill("Relay with options")
    field(page, "Server name / IP address").fill("127.0.0.1")
    htmx_settled(page)
    field(page, "Security").select_option(label="None")
    htmx_settled(page)
    field(page, "Port").fill(str(smtp.port))
    field(page, "From address").fill("helpdesk@example.com")
    field(page, "Organization").fill("Example Ltd")
    field(page, "Importance").select_option(label="High")
    field(page, "Sensitivity").select_option(label="Private")

    rows = page.locator("#section-options .header-row")
    expect(rows).to_have_count(0)
    page.get_by_role("button", name="Add a header").click()
    expect(rows, SWAP_OPTIONS).to_have_count(1)
    page.locator("#headers-0-name").fill("X-First")
    page.locator("#headers-0-value").fill("one")
    htmx_settled(page)
    page.get_by_role("button", name="Add a header").click()
    expect(rows, SWAP_OPTIONS).to_have_count(2)
    expect(page.locator("#headers-0-value"), "a typed row stays when another is added").to_have_value("one")
    expect(field(page, "Organization"), "the options above stay as typed").to_have_value("Example Ltd")
    page.locator("#headers-1-name").fill("Subject")
    page.locator("#headers-1-value").fill("two")
    htmx_settled(page)
    page.get_by_role("button", name="Remove header 1").click()
    expect(rows, SWAP_OPTIONS).to_have_count(1)
    expect(page.locator("#headers-0-name")).to_have_value("Subject")

    page.get_by_role("button", name="Save").click()
    expect(page.locator("#headers-0-name-help")).to_have_text("Subject is a header Mailroom sets itself for every "
                                                              "message.")
    assert stored_servers(app) == []
    page.locator("#headers-0-name").fill("X-Ticket-Queue")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name="Mail servers")).to_be_visible()
    [server] = stored_servers(app)
    assert server.options["headers"] == [{"name": "X-Ticket-Queue", "value": "two"}]
    assert (server.options["importance"], server.options["sensitivity"]) == ("high", "private")

    page.goto(f"/p/help/servers/{server.id}/sample")
    field(page, "Send the sample mail to").fill("jane@example.org")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#sample")).to_contain_text("Email server accepted mail for delivery.", timeout=20_000)
    [received] = smtp.messages
    assert received.message["X-Ticket-Queue"] == "two" and received.message["Organization"] == "Example Ltd"
    assert received.message["Importance"] == "High" and received.message["Sensitivity"] == "Private"
