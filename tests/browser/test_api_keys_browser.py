"""An admin creates an API key, sees it once (with a curl example that works), and revokes it."""
import requests
from playwright.sync_api import expect

from .pages import open_mail_servers, sign_in


def test_create_a_key_see_it_once_use_it_and_revoke_it(page, make, oauth_portal, live_url, tmp_path):
    make.server(oauth_portal, from_address="helpdesk@example.com")  # the portal at live_url: its curl works
    sign_in(page)
    open_mail_servers(page)
    page.get_by_role("navigation", name="Portal").get_by_role("link", name="API keys").click()
    expect(page.get_by_role("heading", name="API keys", exact=True)).to_be_visible()
    expect(page.get_by_text("No API keys yet.")).to_be_visible()

    page.get_by_role("button", name="Create the key").click()  # no name: the form says so
    expect(page.get_by_text("This field is required.")).to_be_visible()
    page.get_by_label("Name").fill("Ticket system")
    page.get_by_role("button", name="Create the key").click()
    expect(page.get_by_text("Copy it now: it is shown only this once.")).to_be_visible()
    key = page.get_by_label("API key").input_value()
    assert key.startswith("mr_") and len(key) > 40
    curl = page.locator("pre.curl").inner_text()
    assert f"{live_url}/api/v1/portals/help/messages" in curl and f"Bearer {key}" in curl
    page.screenshot(path=str(tmp_path / "api-key-created.png"), full_page=True)

    sent = requests.post(f"{live_url}/api/v1/portals/help/messages", timeout=10, headers={
        "Authorization": f"Bearer {key}"}, json={"to": ["someone@example.com"], "subject": "Hello", "text": "Hi"})
    assert sent.status_code == 202, sent.text

    page.goto("/p/help/api-keys")  # once only: the list shows the prefix, never the key
    row = page.get_by_role("row", name="Ticket system")
    expect(row).to_contain_text(key[:11] + "…")
    expect(row).to_contain_text("Active")
    assert key not in page.content()
    row.get_by_role("link", name="Revoke").click()
    expect(page.get_by_role("heading", name="Revoke the API key “Ticket system”?")).to_be_visible()
    page.get_by_role("button", name="Revoke the key").click()
    expect(page.get_by_text("Revoked the API key “Ticket system”")).to_be_visible()
    expect(page.get_by_role("row", name="Ticket system")).to_contain_text("Revoked")
    page.screenshot(path=str(tmp_path / "api-key-revoked.png"), full_page=True)

    refused = requests.post(f"{live_url}/api/v1/portals/help/messages", timeout=10, headers={
        "Authorization": f"Bearer {key}"}, json={"to": ["someone@example.com"], "text": "Hi"})
    assert refused.status_code == 401
    page.get_by_role("link", name="History").click()
    expect(page.get_by_text("Created the API key “Ticket system”")).to_be_visible()
    expect(page.get_by_text("Revoked the API key “Ticket system”")).to_be_visible()
