"""The SMTP credentials page in a real browser: create a credential, its password shown once and
working at the listener, then revoke it and it no longer does."""
import smtplib
import ssl

import pytest
from playwright.sync_api import expect

from tests.test_submission import allow_from, relay, submit  # noqa: F401  (relay: a fixture)

from .pages import field, sign_in


def test_create_see_the_password_once_use_it_and_revoke(page, app, help_desk, relay, tmp_path):  # noqa: F811
    listener = relay()
    sign_in(page)
    page.get_by_role("link", name="Help Desk").click()
    page.get_by_role("link", name="SMTP credentials").click()
    expect(page.get_by_role("heading", name="SMTP credentials")).to_be_visible()
    expect(page.locator("code.fingerprint")).to_have_text(listener.certificate.fingerprint)
    page.get_by_role("button", name="New SMTP credential").click()

    field(page, "Name").fill("Scanner, 2nd floor")
    field(page, "Allowed From addresses").fill("scanner@example.com")
    field(page, "Allowed client networks").fill("10.0.0.0/33")
    page.get_by_role("button", name="Create the credential").click()
    expect(page.get_by_text("“10.0.0.0/33” is not a network")).to_be_visible()  # 422, beside the field
    expect(field(page, "Name")).to_have_value("Scanner, 2nd floor")  # nothing typed is lost
    field(page, "Allowed client networks").fill("127.0.0.0/8")
    page.get_by_role("button", name="Create the credential").click()

    expect(page.get_by_role("heading", name="Created the SMTP credential “Scanner, 2nd floor”")).to_be_visible()
    username = page.locator("#smtp-username").inner_text()
    password = page.locator("#smtp-password").inner_text()
    page.screenshot(path=str(tmp_path / "smtp-credential-created.png"), full_page=True)
    page.get_by_role("button", name="Done").click()
    expect(page.get_by_role("cell", name=username)).to_be_visible()
    assert password not in page.content()

    allow_from(app, help_desk, "scanner@example.com")  # the portal allows it too (a sender ID)
    context = ssl.create_default_context(cafile=str(listener.certificate.cert_file))
    with smtplib.SMTP_SSL("127.0.0.1", listener.settings.tls_port, context=context, timeout=15) as client:
        client.login(username, password)
        assert submit(client)[0] == 250

    page.get_by_role("link", name="Revoke").click()
    page.get_by_role("button", name="Revoke the credential").click()
    expect(page.get_by_text("Revoked the SMTP credential “Scanner, 2nd floor”")).to_be_visible()
    expect(page.get_by_text("revoked", exact=False).first).to_be_visible()
    page.screenshot(path=str(tmp_path / "smtp-credentials-list.png"), full_page=True)
    with smtplib.SMTP_SSL("127.0.0.1", listener.settings.tls_port, context=context, timeout=15) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login(username, password)
