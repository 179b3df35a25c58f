"""S/MIME in the browser, under the app's real CSP: a recipient's certificate uploaded on the S/MIME
certificates page, then the server form's Verify button (htmx, CSRF header) with a PKCS#12 file and
its password chosen, unsaved; a wrong password said in words; nothing sent, nothing saved."""
from playwright.sync_api import Page, expect

from tests.smime_certs import TestCA

from .pages import add_server, field, open_mail_servers, sign_in, stored_servers

SENDER = "helpdesk@example.com"
PASSWORD = "p12-Export-Secret"


def test_verify_signs_and_encrypts_a_test_message_and_says_each_step(page: Page, app, help_desk, page_problems):
    ca = TestCA()
    signer, jane = ca.issue(SENDER), ca.issue("jane@example.org")
    sign_in(page)
    open_mail_servers(page)
    page.get_by_role("link", name="S/MIME certificates").click()
    expect(page.get_by_role("heading", name="S/MIME certificates")).to_be_visible()
    field(page, "Certificate (PEM or DER)").set_input_files(
        {"name": "jane.pem", "mimeType": "application/x-pem-file", "buffer": jane.pem})
    page.get_by_role("button", name="Add certificate").click()
    row = page.get_by_role("row").filter(has_text="jane@example.org")
    expect(row).to_contain_text("CN=jane@example.org")
    expect(row).to_contain_text(f"{jane.certificate.not_valid_after_utc:%Y-%m-%d}")

    page.get_by_role("link", name="Mail servers").click()
    add_server(page)
    field(page, "From address").fill(SENDER)
    field(page, "Sign email").check()
    field(page, "Signing certificate file").set_input_files(
        {"name": "signer.p12", "mimeType": "application/x-pkcs12", "buffer": signer.pkcs12(PASSWORD)})
    field(page, "Signing cert password").fill("not the password")
    field(page, "Hash algorithm").select_option(label="SHA-512")
    field(page, "Encrypt email").check()
    verify = page.get_by_role("button", name="Verify")
    verify.click()
    report = page.locator("#smime-report")
    expect(report).to_contain_text("S/MIME verification failed at “Signing certificate”")
    expect(report).to_contain_text("The password does not open this PKCS#12 file")

    field(page, "Signing cert password").fill(PASSWORD)
    verify.click()
    expect(report).to_contain_text("S/MIME works:")
    expect(report).to_contain_text("Nothing was sent.")
    expect(report.locator("li.step.passed")).to_have_count(4)
    expect(report).to_contain_text("a test message was signed with SHA-512")
    expect(report).to_contain_text("encrypted with AES-256-CBC to the signing certificate and decrypted again")
    expect(report).to_contain_text("certificates for 1 address(es) are stored")
    expect(field(page, "Signing cert password")).to_have_value(PASSWORD)  # the form was left as it was
    assert stored_servers(app) == [] and page_problems == []
