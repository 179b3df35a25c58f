"""Presets and Find settings in a real browser, under the app's CSP (fails on console errors)."""
from playwright.sync_api import Page, expect

from .pages import add_server, field, htmx_settled, open_mail_servers, sign_in

SWAP_FORM = "choosing a preset or Find settings should swap the whole form through htmx"


def test_a_preset_fills_the_form_and_keeps_what_was_typed(page: Page, app, help_desk):
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    field(page, "Description").fill("Transactional mail")
    field(page, "From address").fill("ann@example.com")
    htmx_settled(page)
    field(page, "Start from a provider preset").select_option(label="SendGrid (Twilio)")
    expect(field(page, "Server name / IP address"), SWAP_FORM).to_have_value("smtp.sendgrid.net")
    expect(field(page, "Port")).to_have_value("587")
    expect(field(page, "Username")).to_have_value("apikey")
    expect(field(page, "Description")).to_have_value("Transactional mail")
    expect(page.locator("#preset-note")).to_contain_text("the word apikey itself")
    expect(page.get_by_role("link", name="SendGrid (Twilio)'s documentation")).to_have_attribute(
        "href", "https://www.twilio.com/docs/sendgrid/for-developers/sending-email/integrating-with-the-smtp-api")
    page.screenshot(path="/tmp/discovery-preset.png", full_page=True)


def test_find_settings_fills_the_form_from_the_domains_records(page: Page, app, help_desk, dns_zone):
    dns_zone.add("example.com", "MX", "0 example-com.mail.protection.outlook.com.")
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    field(page, "From address").fill("ann@example.com")
    page.get_by_role("button", name="Find settings").click()
    expect(page.locator("#found-settings"), SWAP_FORM).to_contain_text("Found settings for example.com")
    expect(field(page, "Connection protocol")).to_have_value("graph")
    expect(field(page, "Tenant ID")).to_have_value("example.com")
    expect(page.locator("#found-settings")).to_contain_text(
        "the preset Microsoft 365, Global: Microsoft Graph (the MX of example.com is "
        "example-com.mail.protection.outlook.com, Microsoft 365's)")
    page.screenshot(path="/tmp/discovery-found.png", full_page=True)


def test_validate_shows_deliverability_with_the_record_to_add(page: Page, app, help_desk, dns_zone, smtp_peer):
    peer = smtp_peer("starttls")
    dns_zone.add("localhost", "A", "198.51.100.7")  # the relay's public address, as its DNS name would give
    dns_zone.add("example.com", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    dns_zone.add("example.com", "MX", "10 mx.example.com.")
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    field(page, "Server name / IP address").fill("localhost")
    htmx_settled(page)
    field(page, "Port").fill(str(peer.port))
    field(page, "CA certificate (PEM, optional)").fill(peer.ca_pem)
    field(page, "From address").fill("helpdesk@example.com")
    page.get_by_role("button", name="Validate").click()
    section = page.get_by_role("region", name="Deliverability")
    expect(section).to_contain_text("does not allow localhost (198.51.100.7) (fail, -all)")
    expect(section).to_contain_text('example.com TXT "v=spf1 ip4:192.0.2.1 ip4:198.51.100.7 -all"')
    page.screenshot(path="/tmp/discovery-validate.png", full_page=True)
