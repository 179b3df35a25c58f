"""OAuth 2.0 in a real browser, with the app's real Content-Security-Policy: an admin authorizes an
SMTP server at the authorization server's own sign-in page and sends a sample mail over XOAUTH2;
the mailbox owner consents through a link in a browser that is not signed in to Mailroom; with
provider Other, a local authorization server over plain http://, and one whose sign-in sends the
browser on to another origin."""
import re

import pytest
from playwright.sync_api import Page, expect

from .pages import add_server, choose_auth, field, htmx_ready, htmx_settled, open_mail_servers, sign_in

MAILBOX = "sender@example.test"
OWNER_PASSWORD = "owner-Pass-1"
CLIENT_ID = "mailroom-app"
CLIENT_SECRET = "app-secret-VALUE-7"
TENANT = "contoso.example"
SERVER_PAGE = re.compile(r"/p/help/servers/\d+/edit#oauth-status$")  # no code, no state


@pytest.fixture
def provider(oauth_server, live_url):
    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [f"{live_url}/oauth/callback"])
    return oauth_server


def save_and_land_on_the_server_page(page: Page, description: str) -> None:
    """Saving an OAuth server that waits for a consent leads to its page, where Authorize is."""
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("status").filter(has_text=f"Saved “{description}”. Next: authorize Mailroom")) \
        .to_be_visible()
    expect(page).to_have_url(SERVER_PAGE)
    expect(page.locator("#oauth-status")).to_contain_text("Not authorized yet: nobody has consented for this server.")
    htmx_ready(page)


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
    save_and_land_on_the_server_page(page, "Microsoft relay")


def sign_in_at_the_provider(page: Page) -> None:
    expect(page.get_by_role("heading", name="Sign in and approve")).to_be_visible()
    page.get_by_label("Username").fill(MAILBOX)
    page.get_by_label("Password").fill(OWNER_PASSWORD)
    page.get_by_role("button", name="Sign in and approve").click()


def back_on_the_server_page_authorized(page: Page) -> None:
    expect(page).to_have_url(SERVER_PAGE)
    outcome = page.locator("#oauth-outcome")
    expect(outcome.get_by_role("status")).to_contain_text(f"Authorized. Mailroom can now send mail as {MAILBOX}")
    expect(page.locator("#oauth-status dd").first).to_have_text(MAILBOX)
    htmx_ready(page)


def test_an_admin_authorizes_and_sends_a_sample_mail_over_xoauth2(page, app, oauth_portal, provider, xoauth2_peer,
                                                                   live_url):
    relay = xoauth2_peer(provider)
    sign_in(page)
    open_mail_servers(page)
    configure_oauth_server(page, provider, relay, live_url)

    page.get_by_role("link", name="Mail servers").click()
    row = page.get_by_role("row").filter(has_text="Microsoft relay")
    expect(row).to_contain_text("OAuth 2.0 (delegated)")
    expect(row).to_contain_text("Authorization needed")  # not only "Not checked"
    htmx_ready(page)
    row.get_by_role("button", name="Authorize").click()  # from the list, straight to the provider

    sign_in_at_the_provider(page)  # on the authorization server's own page
    back_on_the_server_page_authorized(page)
    expect(page.locator("#oauth-status")).to_contain_text("SMTP.Send")
    page.reload()
    expect(page.locator("#oauth-outcome")).to_have_count(0)  # said once

    page.get_by_role("link", name="Mail servers").click()
    row = page.get_by_role("row").filter(has_text="Microsoft relay")
    expect(row).not_to_contain_text("Authorization needed")
    row.get_by_role("link", name="Send a sample mail").click()
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
    page.get_by_role("button", name="Make a consent link for the mailbox owner").click()
    link = page.get_by_label("Consent link")
    expect(link).to_be_visible()
    url = link.input_value()
    assert url.startswith(f"{live_url}/oauth/consent")

    owner = chromium.new_context(ignore_https_errors=True)  # another person, not signed in to Mailroom
    try:
        theirs = owner.new_page()
        theirs.goto(url)
        expect(theirs.get_by_role("heading", name="Authorize Mailroom to send mail")).to_be_visible()
        expect(theirs.locator("main")).to_contain_text(f"send mail as {MAILBOX}")
        htmx_ready(theirs)
        theirs.get_by_role("button", name="Continue to sign in").click()
        sign_in_at_the_provider(theirs)
        expect(theirs.get_by_role("heading", name="Authorized")).to_be_visible()
        expect(theirs).to_have_url(f"{live_url}/oauth/result")
        expect(theirs.locator("main")).to_contain_text("You can close this page.")
        theirs.goto(url)
        expect(theirs.locator("main")).to_contain_text("This consent link was already used.")
    finally:
        owner.close()

    page.reload()
    expect(page.locator("#oauth-status dd").first).to_have_text(MAILBOX)


def test_a_refusal_to_start_is_said_in_the_page(page, page_problems, app, oauth_portal, provider, xoauth2_peer,
                                                live_url):
    """The egress policy refuses the token URL: Authorize stays on the page and says why (a 403 that
    htmx shows, not the generic words for an error)."""
    from webapp import db, network
    from webapp.audit import COMMAND_LINE
    from webapp.models import Portal

    relay = xoauth2_peer(provider)
    sign_in(page)
    open_mail_servers(page)
    configure_oauth_server(page, provider, relay, live_url)
    with app.app_context():
        portal = db.session().get(Portal, oauth_portal.id)
        network.set_portal_rules(COMMAND_LINE, portal, "", f"127.0.0.1 {provider.port}")
    page.locator("#oauth-status").get_by_role("button", name="Authorize").click()
    alert = page.locator("#messages").get_by_role("alert")
    expect(alert).to_contain_text("The consent cannot go on: the token URL cannot be used: the egress policy "
                                  f"refuses 127.0.0.1 port {provider.port}")
    expect(alert).to_contain_text("What to try: if it is right, a super-admin can allow it")
    expect(page).to_have_url(SERVER_PAGE)
    # Chromium logs the 403 it was answered; that one is meant (it is shown above), nothing else may be there
    [meant] = [p for p in page_problems if "status of 403" in p and "/oauth/authorize" in p]
    page_problems.remove(meant)


# -- provider Other: a local authorization server over plain http:// -------------------------------

SMTP_SCOPE_OF_OTHER = "smtp"  # what the local XOAUTH2 relay wants in a token


@pytest.fixture
def local_provider(http_oauth_server, live_url):
    http_oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    http_oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [f"{live_url}/oauth/callback"])
    return http_oauth_server


def configure_other_server(page: Page, provider, relay, authorize_url: str | None = None) -> None:
    """Provider Other: the issuer's metadata fills in the endpoints; nothing else is Microsoft's or Google's."""
    add_server(page)
    field(page, "Description").fill("Local relay")
    field(page, "Server name / IP address").fill("localhost")
    field(page, "Port").fill(str(relay.port))
    field(page, "CA certificate (PEM, optional)").fill(relay.ca_pem)
    choose_auth(page, "OAuth 2.0")
    expect(field(page, "Provider")).to_be_visible()
    htmx_settled(page)
    field(page, "Provider").select_option("other")
    expect(field(page, "Issuer URL")).to_be_visible()
    expect(field(page, "Scope")).to_have_value("openid offline_access")  # Other's default, not empty
    htmx_settled(page)
    field(page, "Issuer URL").fill(provider.issuer)
    page.get_by_role("button", name="Discover").click()
    expect(field(page, "Token URL")).to_have_value(provider.token_url)
    expect(field(page, "Authorization URL")).to_have_value(provider.authorize_url)
    expect(page.locator("#issuer-found")).to_contain_text(
        f"Found the metadata of {provider.issuer}: filled in the authorization URL ({provider.authorize_url}) "
        f"and the token URL ({provider.token_url}).")
    htmx_settled(page)
    if authorize_url:
        field(page, "Authorization URL").fill(authorize_url)
    field(page, "Scope").fill(f"{SMTP_SCOPE_OF_OTHER} openid offline_access")
    field(page, "Mailbox").fill(MAILBOX)
    field(page, "Client ID").fill(CLIENT_ID)
    field(page, "Client secret").fill(CLIENT_SECRET)
    field(page, "From address").fill(MAILBOX)
    save_and_land_on_the_server_page(page, "Local relay")


def validate_on_the_page(page: Page):
    htmx_ready(page)
    page.get_by_role("button", name="Validate").click()
    report = page.locator("#report article.report")
    expect(report).to_be_visible(timeout=20_000)
    return report


def test_an_admin_authorizes_at_a_local_http_authorization_server(page, app, oauth_portal, local_provider,
                                                                 xoauth2_peer, live_url):
    relay = xoauth2_peer(local_provider, required_scope=SMTP_SCOPE_OF_OTHER)
    sign_in(page)
    open_mail_servers(page)
    configure_other_server(page, local_provider, relay)
    page.locator("#oauth-status").get_by_role("button", name="Authorize").click()

    expect(page).to_have_url(re.compile(rf"^{re.escape(local_provider.authorize_url)}\?"))  # left, not blocked
    sign_in_at_the_provider(page)
    back_on_the_server_page_authorized(page)
    report = validate_on_the_page(page)
    expect(report).to_contain_text("All checks passed.")
    assert [a["accepted"] for a in relay.auth_attempts] == [True]


def test_the_mailbox_owner_consents_at_a_local_http_authorization_server(page, chromium, app, oauth_portal,
                                                                        local_provider, xoauth2_peer, live_url):
    relay = xoauth2_peer(local_provider, required_scope=SMTP_SCOPE_OF_OTHER)
    sign_in(page)
    open_mail_servers(page)
    configure_other_server(page, local_provider, relay)
    page.get_by_role("button", name="Make a consent link for the mailbox owner").click()
    url = page.get_by_label("Consent link").input_value()

    owner = chromium.new_context()  # not signed in to Mailroom; the provider is plain http: nothing to ignore
    try:
        theirs = owner.new_page()
        problems = []
        theirs.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        theirs.goto(url)
        htmx_ready(theirs)
        theirs.get_by_role("button", name="Continue to sign in").click()
        expect(theirs).to_have_url(re.compile(rf"^{re.escape(local_provider.authorize_url)}\?"))
        sign_in_at_the_provider(theirs)
        expect(theirs.get_by_role("heading", name="Authorized")).to_be_visible()
        assert not [p for p in problems if "Content Security Policy" in p], problems
    finally:
        owner.close()
    page.reload()
    expect(page.locator("#oauth-status dd").first).to_have_text(MAILBOX)


@pytest.fixture
def front_door(local_provider):
    """A federated sign-in's first host: its authorization endpoint sends the browser on to another
    origin (as Entra ID does to a federated tenant's AD FS, or Okta to an external identity provider)
    with the request's query; the second origin is the authorization server itself."""
    from flask import Flask, redirect, request

    from tests.peers.https import HttpsPeer

    door = Flask("front-door")

    @door.get("/authorize")
    def forward():
        return redirect(f"{local_provider.authorize_url}?{request.query_string.decode()}", 302)

    peer = HttpsPeer(door, None)
    yield f"http://localhost:{peer.port}/authorize"
    peer.stop()


def test_an_authorization_endpoint_that_sends_the_browser_on_to_another_origin(page, app, oauth_portal,
                                                                             local_provider, front_door,
                                                                             xoauth2_peer):
    relay = xoauth2_peer(local_provider, required_scope=SMTP_SCOPE_OF_OTHER)
    sign_in(page)
    open_mail_servers(page)
    configure_other_server(page, local_provider, relay, authorize_url=front_door)
    page.locator("#oauth-status").get_by_role("button", name="Authorize").click()
    expect(page).to_have_url(re.compile(rf"^{re.escape(local_provider.authorize_url)}\?"))  # through the door
    sign_in_at_the_provider(page)
    back_on_the_server_page_authorized(page)


def test_without_javascript_authorize_leaves_by_a_link(chromium, app, oauth_portal, local_provider, xoauth2_peer,
                                                       live_url, make):
    """No script: the POST answers a page of Mailroom's own with a plain link to the provider."""
    from tests.conftest import PASSWORD

    from .pages import stored_servers

    relay = xoauth2_peer(local_provider, required_scope=SMTP_SCOPE_OF_OTHER)
    make.server(oauth_portal, description="Local relay", from_address=MAILBOX,
                settings={"host": "localhost", "port": relay.port, "security": "starttls", "ca_cert": relay.ca_pem})
    [server] = stored_servers(app)
    context = chromium.new_context(base_url=live_url, java_script_enabled=False)
    violations = []
    try:
        page = context.new_page()
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto("/login")
        page.get_by_label("Email").fill("admin@example.com")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.goto(f"/p/help/servers/{server.id}/edit")
        configure_oauth_without_javascript(page, local_provider)
        page.locator("#oauth-status").get_by_role("button", name="Authorize").click()
        host = local_provider.issuer.removeprefix("http://")
        expect(page.get_by_role("heading", name="Continue to the sign-in page")).to_be_visible()
        page.get_by_role("button", name=f"Continue to {host}").click()  # a link styled as a button
        sign_in_at_the_provider(page)
        expect(page).to_have_url(SERVER_PAGE)
        expect(page.locator("#oauth-outcome")).to_contain_text(f"Authorized. Mailroom can now send mail as {MAILBOX}")
        assert violations == []
    finally:
        context.close()


def configure_oauth_without_javascript(page: Page, provider) -> None:
    """The no-script form: choose OAuth and Other, update the form, Discover, fill in, Save."""
    field(page, "Authentication").select_option(label="OAuth 2.0")
    page.get_by_role("button", name="Update the form for these choices").click()
    field(page, "Provider").select_option("other")
    page.get_by_role("button", name="Update the form for these choices").click()
    field(page, "Issuer URL").fill(provider.issuer)
    page.get_by_role("button", name="Discover").click()  # the whole page comes back
    expect(page.locator("#issuer-found")).to_contain_text(f"Found the metadata of {provider.issuer}")
    field(page, "Scope").fill(f"{SMTP_SCOPE_OF_OTHER} openid offline_access")
    field(page, "Mailbox").fill(MAILBOX)
    field(page, "Client ID").fill(CLIENT_ID)
    field(page, "Client secret").fill(CLIENT_SECRET)
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page).to_have_url(SERVER_PAGE)
