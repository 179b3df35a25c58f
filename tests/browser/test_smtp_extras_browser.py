"""The SMTP client certificate and the transcripts in a real browser: the certificate section comes and goes
with the security through htmx, a chosen PEM file goes up with Validate and Save (multipart through htmx),
the saved server shows only the certificate's subject and expiry, and its transcripts page shows the
conversation, under the app's real Content-Security-Policy."""
import os

from playwright.sync_api import Page, expect

from tests.peers.smtp_extras import client_ca, client_cert_peer  # noqa: F401
from tests.test_smtp_client_cert import leaf_pem

from .pages import add_server, field, htmx_settled, open_mail_servers, sign_in


def test_a_server_with_a_client_certificate_and_transcripts(page: Page, app, help_desk, client_cert_peer, client_ca):
    peer = client_cert_peer("required")
    pem = leaf_pem(client_ca)
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    field(page, "Description").fill("Relay with a client certificate")
    field(page, "Server name / IP address").fill("localhost")
    htmx_settled(page)
    field(page, "Security").select_option(label="None")
    expect(field(page, "Certificate file (PEM with its key, or PKCS#12)"),
           "no client certificate without TLS").to_have_count(0)
    htmx_settled(page)
    field(page, "Security").select_option(label="SSL/TLS (implicit)")
    expect(field(page, "Certificate file (PEM with its key, or PKCS#12)"),
           "the TLS options (with the certificate) come back through htmx").to_be_visible()
    field(page, "Port").fill(str(peer.port))
    field(page, "Use SSL client certificate authentication").check()
    field(page, "Certificate file (PEM with its key, or PKCS#12)").set_input_files(
        {"name": "mailer.pem", "mimeType": "application/x-pem-file", "buffer": pem})
    field(page, "Keep SMTP transcripts").check()
    field(page, "From address").fill("helpdesk@example.com")

    page.get_by_role("button", name="Validate").click()
    report = page.locator("#report")
    expect(report).to_contain_text("All checks passed", timeout=20_000)
    expect(report).to_contain_text("the server asked for a client certificate and accepted CN=portal-mailer")

    field(page, "Certificate file (PEM with its key, or PKCS#12)").set_input_files(
        {"name": "mailer.pem", "mimeType": "application/x-pem-file", "buffer": pem})
    page.get_by_role("button", name="Save").click()
    expect(page.locator("body")).to_contain_text("Saved “Relay with a client certificate”.")
    page.get_by_role("link", name="Edit").first.click()
    stored = page.locator("#stored-client-cert")
    expect(stored).to_contain_text("CN=portal-mailer")
    expect(stored).to_contain_text("expires")
    assert "PRIVATE KEY" not in page.content()
    if os.environ.get("MAILROOM_SCREENSHOTS"):
        stored.scroll_into_view_if_needed()
        page.screenshot(path=os.path.join(os.environ["MAILROOM_SCREENSHOTS"], "client-cert.png"))

    page.get_by_role("button", name="Validate").click()  # the stored certificate, no file chosen
    expect(page.locator("#report")).to_contain_text("All checks passed", timeout=20_000)
    page.get_by_role("link", name="SMTP transcripts of this server").click()
    expect(page.locator("h1")).to_contain_text("SMTP transcripts of “Relay with a client certificate”")
    expect(page.locator("article.transcript").first).to_contain_text("C: ehlo")
    if os.environ.get("MAILROOM_SCREENSHOTS"):
        page.screenshot(path=os.path.join(os.environ["MAILROOM_SCREENSHOTS"], "smtp-transcripts.png"), full_page=True)
