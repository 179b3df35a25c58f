"""The mail server pages in a real browser: htmx sections, Validate, sample mail, form errors.

Each test runs against the app served on 127.0.0.1 (see conftest.py) and fails on any
console error, uncaught exception or Content-Security-Policy violation in its pages.
"""
import base64
import re

import pytest
from playwright.sync_api import Page, expect

from .pages import (SWAP_AUTH, SWAP_TLS, add_server, choose_auth, field, htmx_ready, htmx_settled, open_mail_servers,
                    sign_in, stored_password, stored_servers)

def credential_encodings(username: str, password: str) -> list[str]:
    """How a password travels in AUTH PLAIN / LOGIN: base64, alone or with the username."""
    return [base64.b64encode(raw.encode()).decode() for raw in (password, f"\0{username}\0{password}")]


def fill_peer_server(page: Page, peer, description: str, timeout: int | None = None) -> None:
    """The settings for an SMTP peer with STARTTLS, its CA and its credentials."""
    field(page, "Description").fill(description)
    field(page, "Server name / IP address").fill(peer.host)
    htmx_settled(page)
    field(page, "Security").select_option(label="STARTTLS (explicit)")
    expect(field(page, "Port"), SWAP_TLS).to_have_value("587")  # swapped in: type into the new section
    field(page, "Port").fill(str(peer.port))
    field(page, "CA certificate (PEM, optional)").fill(peer.ca_pem)
    if timeout is not None:
        field(page, "Server timeout (seconds)").fill(str(timeout))
    choose_auth(page, "Basic")
    expect(field(page, "Username"), SWAP_AUTH).to_be_visible()
    field(page, "Username").fill(peer.username)
    field(page, "Password").fill(peer.password)
    field(page, "Confirm password").fill(peer.password)
    field(page, "From address").fill("helpdesk@example.com")


def test_sections_follow_security_and_authentication_and_keep_typed_values(page, app, help_desk):
    sign_in(page)
    open_mail_servers(page)
    expect(page.get_by_text("No mail server yet")).to_be_visible()
    add_server(page)

    port = field(page, "Port")
    expect(port).to_have_attribute("placeholder", "587")  # empty: the default of STARTTLS
    expect(field(page, "Username")).to_have_count(0)  # no authentication yet

    field(page, "Description").fill("Office relay")
    field(page, "Server name / IP address").fill("smtp.example.com")
    htmx_settled(page)
    field(page, "Security").select_option(label="STARTTLS (explicit)")
    choose_auth(page, "Basic")
    expect(field(page, "Username"), SWAP_AUTH).to_be_visible()
    field(page, "Username").fill("relay-user")
    field(page, "Password").fill("first-secret")
    field(page, "Confirm password").fill("first-secret")
    field(page, "From address").fill("helpdesk@example.com")
    field(page, "Sender name").fill("Example Help Desk")
    field(page, "Reply-to address").fill("support@example.com")

    # Security decides the port: the TLS section is swapped in place and the port follows.
    htmx_settled(page)
    field(page, "Security").select_option(label="SSL/TLS (implicit)")
    expect(port, SWAP_TLS).to_have_value("465")
    expect(page.get_by_role("button", name="Default (465)")).to_be_visible()
    htmx_settled(page)
    field(page, "Security").select_option(label="STARTTLS (explicit)")
    expect(port).to_have_value("587")
    expect(page.get_by_role("button", name="Default (587)")).to_be_visible()
    expect(field(page, "Verify the server's certificate")).to_be_checked()

    # Authentication off: its fields go; on again: they come back with what was typed, the
    # password included (kept in the page's memory, never sent back by the server).
    choose_auth(page, "None")
    expect(field(page, "Username")).to_have_count(0)
    expect(field(page, "Password")).to_have_count(0)
    expect(field(page, "Confirm password")).to_have_count(0)
    choose_auth(page, "Basic")
    expect(field(page, "Username")).to_have_value("relay-user")
    expect(field(page, "Password")).to_have_value("first-secret")
    expect(field(page, "Confirm password")).to_have_value("first-secret")

    for label, value in [("Description", "Office relay"), ("Server name / IP address", "smtp.example.com"),
                         ("From address", "helpdesk@example.com"), ("Sender name", "Example Help Desk"),
                         ("Reply-to address", "support@example.com")]:
        expect(field(page, label)).to_have_value(value)
    expect(port).to_have_value("587")
    expect(field(page, "Security")).to_have_value("starttls")
    assert "first-secret" not in page.content()  # kept by the page script, never written into the HTML

    field(page, "Password").fill("second-secret")
    field(page, "Confirm password").fill("second-secret")
    page.get_by_role("button", name="Save", exact=True).click()

    expect(page.get_by_role("heading", name="Mail servers")).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="Saved “Office relay”.")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="Office relay")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("smtp.example.com:587")
    expect(row).to_contain_text("STARTTLS")
    expect(row).to_contain_text("Basic")
    expect(row).to_contain_text("Not checked")

    [server] = stored_servers(app)
    settings = server.settings
    assert (settings["host"], settings["port"], settings["security"]) == ("smtp.example.com", 587, "starttls")
    assert (server.credential.kind, server.credential.username) == ("password", "relay-user")
    assert (server.from_address, server.sender_name, server.reply_to) == \
        ("helpdesk@example.com", "Example Help Desk", "support@example.com")
    assert settings["verify_cert"] is True
    assert stored_password(app, server) == "second-secret"


def test_validate_then_send_a_sample_through_a_starttls_peer(page, app, help_desk, smtp_peer):
    peer = smtp_peer("starttls")
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    fill_peer_server(page, peer, "Peer relay")
    field(page, "Sender name").fill("Example Help Desk")
    field(page, "Reply-to address").fill("support@example.com")

    page.get_by_role("button", name="Validate").click()
    report = page.locator("#report")
    expect(report).to_contain_text("All checks passed.", timeout=20_000)
    expect(report).to_contain_text("the credentials")
    expect(report.locator("li.step.failed")).to_have_count(0)
    for step in ("Connect", "STARTTLS", "TLS", "Authenticate", "MAIL FROM"):
        expect(report.locator("li.step.passed").filter(has_text=re.compile(rf"✔ {step}\b"))).not_to_have_count(0)
    expect(report).to_contain_text("TLS version")
    expect(report).to_contain_text("verified: trusted issuer, name matches")
    expect(report).to_contain_text(f"signed in as {peer.username}")
    expect(page.get_by_role("heading", name="Add mail server")).to_be_visible()  # read in place

    conversation = report.locator("details").filter(has=page.locator("summary", has_text="SMTP conversation"))
    transcript = conversation.locator("pre.transcript")
    expect(transcript).not_to_be_visible()
    conversation.locator("summary").click()
    expect(transcript).to_be_visible()
    expect(transcript).to_contain_text("STARTTLS")
    lines = transcript.inner_text().splitlines()
    auth = next(n for n, line in enumerate(lines) if line.startswith("C: AUTH "))
    # "C: AUTH PLAIN ********" or "C: AUTH LOGIN", then every answer to a 334 challenge hidden
    assert re.fullmatch(r"C: AUTH [A-Z0-9-]+( \*+)?", lines[auth]), lines[auth]
    answers = [line for line in lines[auth + 1:] if line.startswith("C: ")]
    challenges = [line for line in lines[auth + 1:] if line.startswith("S: 334")]
    assert answers[:len(challenges)] == ["C: " + "*" * 8] * len(challenges), lines
    html = page.content()
    assert peer.password not in html
    for secret in credential_encodings(peer.username, peer.password):
        assert secret not in html
    assert peer.messages == []  # Validate sends nothing
    assert stored_servers(app) == []  # nor saves

    # The typed password is still in its field (Validate swapped only the report).
    expect(field(page, "Password")).to_have_value(peer.password)
    page.get_by_role("button", name="Save", exact=True).click()
    row = page.get_by_role("row").filter(has_text="Peer relay")
    expect(row).to_contain_text(f"{peer.host}:{peer.port}")

    row.get_by_role("link", name="Send a sample mail").click()
    expect(page.get_by_role("heading", name="Send a sample mail")).to_be_visible()
    htmx_ready(page)
    page.get_by_label("Send the sample mail to").fill("jane@example.org")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status").filter(has_text="Email server accepted mail for delivery.")) \
        .to_be_visible(timeout=20_000)
    expect(page.locator("#sample")).to_contain_text("Server reply: 250")
    html = page.content()
    assert peer.password not in html
    for secret in credential_encodings(peer.username, peer.password):
        assert secret not in html

    [mail] = peer.messages
    assert mail.mail_from == "helpdesk@example.com"
    assert mail.rcpt_tos == ["jane@example.org"]
    message = mail.message
    assert message["From"].addresses[0].display_name == "Example Help Desk"
    assert message["From"].addresses[0].addr_spec == "helpdesk@example.com"
    assert str(message["Reply-To"]) == "support@example.com"
    assert str(message["To"]) == "jane@example.org"
    assert "Help Desk" in message["Subject"] and "Peer relay" in message["Subject"]
    assert "Help Desk" in message.get_content()

    page.get_by_role("link", name="Back to the mail servers").click()
    expect(page.get_by_role("row").filter(has_text="Peer relay")).to_contain_text("OK")


@pytest.mark.parametrize("kind, words", [
    ("reject", ["Validation failed at “Authenticate”:", "535", "rejected the username or password"]),
    ("silent", ["Validation failed at “Greeting”:", "no answer within 2"]),
])
def test_validate_explains_a_failure_in_plain_words(page, app, help_desk, smtp_peer, kind, words):
    peer = smtp_peer(kind)
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    fill_peer_server(page, peer, f"{kind} peer", timeout=2)

    page.get_by_role("button", name="Validate").click()
    report = page.locator("#report")
    expect(report.locator("article.report.failed")).to_be_visible(timeout=20_000)
    for text in words:
        expect(report).to_contain_text(text)
    expect(report.locator("li.step.failed")).to_have_count(1)
    expect(report.locator("li.step.failed .hint")).to_contain_text("What to try:")
    assert peer.password not in page.content()
    assert stored_servers(app) == []


def test_a_host_with_a_space_is_refused_beside_the_field(page, app, help_desk):
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    field(page, "Description").fill("Broken relay")
    field(page, "Server name / IP address").fill("smtp example.com")
    field(page, "From address").fill("helpdesk@example.com")
    page.get_by_role("button", name="Save", exact=True).click()

    host = field(page, "Server name / IP address")
    expect(host).to_have_attribute("aria-invalid", "true")
    expect(host).to_have_accessible_description("A server name cannot contain spaces.")
    expect(page.locator("#host-help.error")).to_have_text("A server name cannot contain spaces.")
    expect(host).to_have_value("smtp example.com")
    expect(field(page, "Description")).to_have_value("Broken relay")
    assert stored_servers(app) == []

    page.get_by_role("link", name="Cancel").click()
    expect(page.get_by_text("No mail server yet")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="Broken relay")).to_have_count(0)
