"""OAuth 2.0 in a real browser: an admin authorizes an SMTP server at the authorization server's
own sign-in page and sends a sample mail over XOAUTH2; the mailbox owner consents through a
link in a browser that is not signed in to Mailroom."""
import pytest
from playwright.sync_api import Page, expect


from .pages import add_server, choose_auth, field, htmx_ready, open_mail_servers, sign_in

MAILBOX = "sender@example.test"
OWNER_PASSWORD = "owner-Pass-1"
CLIENT_ID = "mailroom-app"
CLIENT_SECRET = "app-secret-VALUE-7"
TENANT = "contoso.example"


@pytest.fixture
def provider(oauth_server, live_url):
    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [f"{live_url}/oauth/callback"])
    return oauth_server


def configure_oauth_server(page: Page, provider, relay, live_url: str) -> None:
    add_server(page)
    field(page, "Description").fill("Microsoft relay")
    field(page, "Server name / IP address").fill("localhost")
    field(page, "Port").fill(str(relay.port))
    field(page, "CA certificate (PEM, optional)").fill(relay.ca_pem)
    choose_auth(page, "OAuth 2.0")
    expect(field(page, "Provider")).to_have_value("microsoft")
    expect(field(page, "Redirect URI")).to_have_value(f"{live_url}/oauth/callback")
    field(page, "Tenant ID").fill(TENANT)
    field(page, "Tenant ID").press("Tab")  # leaving the field is a change: the endpoints follow
    expect(field(page, "Token URL")).to_have_value(f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")
    expect(field(page, "Scope")).to_have_value("https://outlook.office.com/SMTP.Send offline_access")
    field(page, "Authorization URL").fill(f"{provider.issuer}/{TENANT}/oauth2/v2.0/authorize")
    field(page, "Token URL").fill(f"{provider.issuer}/{TENANT}/oauth2/v2.0/token")
    field(page, "Mailbox").fill(MAILBOX)
    field(page, "Client ID").fill(CLIENT_ID)
    field(page, "Client secret").fill(CLIENT_SECRET)
    field(page, "From address").fill(MAILBOX)
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("status").filter(has_text="Saved “Microsoft relay”.")).to_be_visible()


def sign_in_at_the_provider(page: Page) -> None:
    expect(page.get_by_role("heading", name="Sign in and approve")).to_be_visible()
    page.get_by_label("Username").fill(MAILBOX)
    page.get_by_label("Password").fill(OWNER_PASSWORD)
    page.get_by_role("button", name="Sign in and approve").click()


def test_an_admin_authorizes_and_sends_a_sample_mail_over_xoauth2(page, app, oauth_portal, provider, xoauth2_peer,
                                                                   live_url):
    relay = xoauth2_peer(provider)
    sign_in(page)
    open_mail_servers(page)
    configure_oauth_server(page, provider, relay, live_url)

    row = page.get_by_role("row").filter(has_text="Microsoft relay")
    expect(row).to_contain_text("OAuth 2.0 (delegated)")
    row.get_by_role("link", name="Edit").click()
    status = page.locator("#oauth-status")
    expect(status).to_contain_text("Not authorized yet: nobody has consented for this server.")
    status.get_by_role("button", name="Authorize").click()

    sign_in_at_the_provider(page)  # on the authorization server's own page
    expect(page.get_by_role("heading", name="Authorized")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text(f"Mailroom can now send mail as {MAILBOX}")
    page.get_by_role("link", name="Back to “Microsoft relay”").click()
    expect(page.locator("#oauth-status dd").first).to_have_text(MAILBOX)
    expect(page.locator("#oauth-status")).to_contain_text("SMTP.Send")

    page.get_by_role("link", name="Mail servers").click()
    page.get_by_role("row").filter(has_text="Microsoft relay").get_by_role("link", name="Send a sample mail").click()
    htmx_ready(page)
    page.get_by_label("Send the sample mail to").fill("jane@example.org")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status").filter(has_text="Email server accepted mail for delivery.")) \
        .to_be_visible(timeout=20_000)
    [mail] = relay.messages
    assert mail.user == MAILBOX and mail.rcpt_tos == ["jane@example.org"]
    assert CLIENT_SECRET not in page.content()


def test_the_mailbox_owner_consents_through_a_link(page, chromium, app, oauth_portal, provider, xoauth2_peer,
                                                    live_url):
    relay = xoauth2_peer(provider)
    sign_in(page)
    open_mail_servers(page)
    configure_oauth_server(page, provider, relay, live_url)
    page.get_by_role("row").filter(has_text="Microsoft relay").get_by_role("link", name="Edit").click()
    htmx_ready(page)
    page.get_by_role("button", name="Make a consent link for the mailbox owner").click()
    link = page.get_by_label("Consent link")
    expect(link).to_be_visible()
    url = link.input_value()
    assert url.startswith(f"{live_url}/oauth/consent/")

    owner = chromium.new_context(ignore_https_errors=True)  # another person, not signed in to Mailroom
    try:
        theirs = owner.new_page()
        theirs.goto(url)
        expect(theirs.get_by_role("heading", name="Authorize Mailroom to send mail")).to_be_visible()
        expect(theirs.locator("main")).to_contain_text(f"send mail as {MAILBOX}")
        theirs.get_by_role("button", name="Continue to sign in").click()
        sign_in_at_the_provider(theirs)
        expect(theirs.get_by_role("heading", name="Authorized")).to_be_visible()
        expect(theirs.locator("main")).to_contain_text("You can close this page.")
        theirs.goto(url)
        expect(theirs.locator("main")).to_contain_text("This consent link was already used.")
    finally:
        owner.close()

    page.reload()
    expect(page.locator("#oauth-status dd").first).to_have_text(MAILBOX)
