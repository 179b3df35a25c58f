"""The HTTP API protocols in a real browser: an admin configures Microsoft Graph and the Gmail API
in the server form (the form follows the protocol through htmx), validates, saves and sends a
sample mail that the Graph or Gmail peer on loopback receives; tokens come from the real
authorization server (tests/peers/oauth.py): app-only client credentials after a tenant
administrator's admin consent at the provider's page, a Google service-account key uploaded
through the file field, and Google consent at the provider's sign-in page. A failure of each
is said in plain words, and no secret shows in any page."""
import json
import re

import pytest
from playwright.sync_api import Page, expect

from tests.test_oauth import payload

from .pages import add_server, field, htmx_ready, htmx_settled, open_mail_servers, sign_in, stored_servers

MAILBOX = "sender@example.test"
OWNER_PASSWORD = "owner-Pass-1"
TENANT = "contoso.example"
TENANT_ADMIN = "it-admin@contoso.example"
TENANT_ADMIN_PASSWORD = "tenant-Admin-Pass-5"
CLIENT_ID = "mailroom-graph-app"
CLIENT_SECRET = "graph-secret-VALUE-9"
GOOGLE_CLIENT_ID = "mailroom-google-app.apps.googleusercontent.com"
GOOGLE_CLIENT_SECRET = "GOCSPX-google-secret-4"
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
RECIPIENT = "jane@example.org"
GRAPH_SUBJECT = "Mailroom sample mail from Help Desk via Graph mailer"
GMAIL_SUBJECT = "Mailroom sample mail from Help Desk via Gmail sender"
ACCEPTED = "Email server accepted mail for delivery."


@pytest.fixture
def graph(oauth_server, graph_peer):
    return graph_peer(oauth_server, users={MAILBOX: {"id": "5f0c8a2e-7b1d-4c3e-9a6f-2d8e1b4c7a90",
                                                     "displayName": "Sender"}})


@pytest.fixture
def gmail(oauth_server, gmail_peer):
    return gmail_peer(oauth_server, users={MAILBOX})


def register_graph_app(oauth_server, live_url: str, app_roles: set[str]) -> None:
    """The app registration in Entra ID, with the application permissions it was given."""
    oauth_server.add_user(TENANT_ADMIN, TENANT_ADMIN_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [f"{live_url}/oauth/callback"], app_roles=app_roles)


def choose_protocol(page: Page, value: str, first_field: str) -> None:
    """Pick the protocol by value (the list grows); the whole form is re-rendered for it."""
    field(page, "Connection protocol").select_option(value)
    expect(field(page, first_field), f"choosing {value} should re-render the form through htmx").to_be_visible()
    expect(field(page, "Server name / IP address")).to_have_count(0)  # SMTP's settings went
    htmx_settled(page)


def secrets_absent(page: Page, *secrets: str) -> None:
    html = page.content()
    for secret in secrets:
        assert secret not in html


def configure_graph_app_only(page: Page, oauth_server, graph) -> None:
    """Microsoft Graph, app-only (client credentials), every setting typed as an admin would."""
    add_server(page)
    field(page, "Description").fill("Graph mailer")
    choose_protocol(page, "graph", "Graph endpoint")
    auth = field(page, "Authentication")
    expect(auth).to_have_value("oauth")
    expect(auth.locator("option")).to_have_text(["OAuth 2.0"])  # Graph signs in with OAuth only
    expect(field(page, "Provider")).to_have_value("microsoft")
    expect(field(page, "Scope")).to_have_value("Mail.Send offline_access")

    field(page, "Flow").select_option("app")  # only the endpoints and the scope are swapped
    expect(field(page, "Scope")).to_have_value("https://graph.microsoft.com/.default")
    expect(field(page, "Authorization URL")).to_have_count(0)  # no consent page for client credentials
    htmx_settled(page)
    field(page, "Tenant ID").fill(TENANT)
    field(page, "Tenant ID").press("Tab")  # a change: the endpoints follow the tenant
    expect(field(page, "Token URL")).to_have_value(f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")
    htmx_settled(page)  # the Graph section came along (out of band): type into the new one

    field(page, "Token URL").fill(f"{oauth_server.issuer}/{TENANT}/oauth2/v2.0/token")
    field(page, "Graph endpoint").fill(graph.url)
    field(page, "Importance").select_option("high")  # a message option (every protocol has them)
    page.get_by_role("button", name="Add a header").click()
    page.locator("#headers-0-name").fill("X-Portal")
    page.locator("#headers-0-value").fill("help-desk")
    field(page, "Mailbox").fill(MAILBOX)
    field(page, "Client ID").fill(CLIENT_ID)
    field(page, "Client secret").fill(CLIENT_SECRET)
    field(page, "From address").fill(MAILBOX)
    field(page, "Sender name").fill("Help Desk")
    field(page, "Reply-to address").fill("support@example.test")


def test_switching_between_graph_and_gmail_gives_each_its_own_endpoint(page, app, help_desk):
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    choose_protocol(page, "gmail", "Gmail API endpoint")
    assert field(page, "Gmail API endpoint").input_value() == "https://gmail.googleapis.com"
    choose_protocol(page, "graph", "Graph endpoint")  # the swap is done: the value is final
    assert field(page, "Graph endpoint").input_value() == "https://graph.microsoft.com"
    choose_protocol(page, "gmail", "Gmail API endpoint")
    assert field(page, "Gmail API endpoint").input_value() == "https://gmail.googleapis.com"


def save_and_find(page: Page, description: str):
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("status").filter(has_text=f"Saved “{description}”.")).to_be_visible()
    if "/edit" in page.url:  # an OAuth server waiting for a consent lands on its own page: to the list
        page.get_by_role("link", name="Mail servers").click()
    return page.get_by_role("row").filter(has_text=description)


def validate(page: Page):
    page.get_by_role("button", name="Validate").click()
    report = page.locator("#report")
    expect(report.locator("article.report")).to_be_visible(timeout=20_000)
    return report


def step(report, outcome: str, name: str):
    return report.locator(f"li.step.{outcome}").filter(has_text=re.compile(rf"[✔✘⚠] {name}\b"))


def send_sample(page: Page, row) -> None:
    row.get_by_role("link", name="Send a sample mail").click()
    expect(page.get_by_role("heading", name="Send a sample mail")).to_be_visible()
    htmx_ready(page)
    page.get_by_label("Send the sample mail to").fill(RECIPIENT)
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#sample article.report")).to_be_visible(timeout=20_000)


def test_graph_app_only_admin_consent_validate_and_a_sample_mail(page, app, oauth_portal, oauth_server, graph,
                                                                  live_url):
    register_graph_app(oauth_server, live_url, {"Mail.Send", "User.Read.All"})
    sign_in(page)
    open_mail_servers(page)
    configure_graph_app_only(page, oauth_server, graph)

    # Before any admin consent Entra issues a token without permissions (as in production) and Graph refuses
    # it: Validate says so in words (and saves nothing).
    report = validate(page)
    expect(report).to_contain_text("Validation failed at “Mailbox”:")
    expect(report).to_contain_text("it carries no permission, so nobody has granted admin consent yet")
    expect(report).to_contain_text("a tenant administrator grants admin consent")
    secrets_absent(page, CLIENT_SECRET)
    assert stored_servers(app) == [] and graph.sent == []

    row = save_and_find(page, "Graph mailer")
    expect(row).to_contain_text("Microsoft Graph")
    expect(row).to_contain_text("OAuth 2.0 (app-only)")
    expect(row).to_contain_text(graph.url)
    row.get_by_role("link", name="Edit").click()
    status = page.locator("#oauth-status")
    expect(status).to_contain_text("Not authorized yet: a tenant administrator must grant admin consent.")
    status.get_by_role("button", name="Grant admin consent").click()

    # At the provider's own page: the tenant administrator signs in and accepts.
    expect(page.get_by_role("heading", name="Permissions requested")).to_be_visible()
    expect(page.locator("main")).to_contain_text(CLIENT_ID)
    page.get_by_label("Username").fill(TENANT_ADMIN)
    page.get_by_label("Password").fill(TENANT_ADMIN_PASSWORD)
    page.get_by_role("button", name="Accept").click()
    expect(page.locator("#oauth-outcome")).to_contain_text("Admin consent granted.")  # back on the server page
    expect(page.locator("#oauth-outcome")).to_contain_text(f"The app may now act for the tenant {TENANT}")
    expect(page.locator("#oauth-status dd").first).to_have_text(f"a tenant administrator ({TENANT})")
    htmx_ready(page)

    report = validate(page)
    expect(report).to_contain_text("All checks passed.")
    expect(report).to_contain_text("Microsoft Graph accepts the token and knows the mailbox.")
    expect(step(report, "passed", "Token")).to_contain_text("obtained a new access token")
    expect(step(report, "passed", "Mailbox")).to_contain_text(f"the mailbox {MAILBOX} exists")
    expect(report.locator("li.step.failed")).to_have_count(0)
    requests = report.locator("details").filter(has=page.locator("summary", has_text="HTTP requests"))
    requests.locator("summary").click()
    expect(requests.locator("pre.transcript")).to_contain_text(f"C: GET {graph.url}/v1.0/users/{MAILBOX}")
    assert [(r["grant_type"], r["outcome"]) for r in oauth_server.requests][-1] == ("client_credentials", "ok")
    assert graph.sent == []  # Validate sends nothing
    [server] = stored_servers(app)
    token = payload(app, server.id)["access_token"]
    secrets_absent(page, CLIENT_SECRET, token)

    page.get_by_role("link", name="Mail servers").click()
    send_sample(page, page.get_by_role("row").filter(has_text="Graph mailer"))
    sample = page.locator("#sample")
    expect(sample.get_by_role("status")).to_contain_text(ACCEPTED)
    expect(sample).to_contain_text("Server reply: 202 Accepted")
    token = payload(app, server.id)["access_token"]
    secrets_absent(page, CLIENT_SECRET, token)

    [mail] = graph.sent  # the stored message in Graph's MIME form, the server's headers in front
    assert mail.mailbox == MAILBOX and mail.app_only and mail.client_id == CLIENT_ID and mail.json is None
    message = mail.mime
    assert message["To"] == RECIPIENT and message["Reply-To"] == "support@example.test"
    assert message["From"] == f"Help Desk <{MAILBOX}>"
    assert message["Subject"] == GRAPH_SUBJECT and message["Importance"] == "High"
    assert message["X-Portal"] == "help-desk"
    text = " ".join(message.get_content().split())  # the sample's text is in lines under 78 characters
    assert "sent by the portal Help Desk through the mail server Graph mailer" in text


def test_graph_without_the_mail_send_permission_is_said_in_words(page, app, oauth_portal, oauth_server, graph,
                                                                 live_url):
    # The tenant administrator consented, but the app registration lacks Mail.Send (it may read users).
    register_graph_app(oauth_server, live_url, {"User.Read.All"})
    oauth_server.grant_admin_consent(CLIENT_ID)
    sign_in(page)
    open_mail_servers(page)
    configure_graph_app_only(page, oauth_server, graph)

    # Graph lets nothing prove Mail.Send short of sending: Validate finds the token and the mailbox.
    report = validate(page)
    expect(report).to_contain_text("All checks passed.")
    expect(step(report, "passed", "Mailbox")).to_contain_text(f"the mailbox {MAILBOX} exists")

    row = save_and_find(page, "Graph mailer")
    send_sample(page, row)
    refused = page.locator("#sample").get_by_role("alert")
    expect(refused).to_contain_text("The mail was not sent:")
    expect(refused).to_contain_text(f"the app may not send from {MAILBOX} (403 ErrorAccessDenied)")
    expect(refused.locator(":scope > p.hint")).to_contain_text(
        "grant the app the application permission Mail.Send with admin consent")
    expect(page.get_by_role("status").filter(has_text=ACCEPTED)).to_have_count(0)
    [server] = stored_servers(app)
    token = payload(app, server.id)["access_token"]
    secrets_absent(page, CLIENT_SECRET, token)
    assert graph.sent == []


def configure_gmail_service_account(page: Page, gmail, key: dict) -> None:
    add_server(page)
    field(page, "Description").fill("Gmail sender")
    choose_protocol(page, "gmail", "Gmail API endpoint")
    auth = field(page, "Authentication")
    expect(auth).to_have_value("service_account")
    expect(auth.locator("option")).to_have_text(["Service account key", "OAuth 2.0"])
    expect(field(page, "Gmail API endpoint")).to_have_value("https://gmail.googleapis.com")
    expect(field(page, "Scope")).to_have_value(GMAIL_SEND)
    field(page, "Gmail API endpoint").fill(gmail.url)
    field(page, "Mailbox to send as").fill(MAILBOX)
    field(page, "Service-account key (JSON)").set_input_files(
        {"name": "service-account.json", "mimeType": "application/json", "buffer": json.dumps(key).encode()})
    field(page, "From address").fill(MAILBOX)
    field(page, "Sender name").fill("Help Desk")
    field(page, "Reply-to address").fill("support@example.test")


def test_gmail_with_an_uploaded_service_account_key_validates_and_sends(page, app, help_desk, oauth_server, gmail,
                                                                        service_account_key):
    key = service_account_key(oauth_server, subjects={MAILBOX}, scopes={GMAIL_SEND})
    sign_in(page)
    open_mail_servers(page)
    configure_gmail_service_account(page, gmail, key)

    report = validate(page)  # the key travels with the form, unsaved
    expect(report).to_contain_text("All checks passed.")
    expect(report).to_contain_text("Google gives a token for the mailbox and the Gmail API accepts it.")
    token_step = step(report, "passed", "Token")
    expect(token_step).to_contain_text("obtained a new access token")
    expect(token_step.locator("dd").first).to_have_text(MAILBOX)  # Acts as
    expect(step(report, "warning", "Mailbox")).to_contain_text(
        "the token may not read the mailbox's profile (that needs more than gmail.send)")
    assert [r["grant_type"] for r in oauth_server.requests] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert oauth_server.requests[0]["client_id"] == key["client_email"]
    secrets_absent(page, key["private_key"], "PRIVATE KEY")
    assert gmail.sent == [] and stored_servers(app) == []

    row = save_and_find(page, "Gmail sender")  # the chosen file is still in its field: it is saved
    expect(row).to_contain_text("Gmail API")
    expect(row).to_contain_text("Service account key")
    row.get_by_role("link", name="Edit").click()
    expect(page.locator("#stored-key")).to_contain_text(
        f"A key is stored for {key['client_email']} (key ID {key['private_key_id']}")
    secrets_absent(page, key["private_key"], "PRIVATE KEY")
    page.get_by_role("link", name="Mail servers").click()

    send_sample(page, page.get_by_role("row").filter(has_text="Gmail sender"))
    sample = page.locator("#sample")
    expect(sample.get_by_role("status")).to_contain_text(ACCEPTED)
    expect(sample).to_contain_text(re.compile(r"Server reply: 200 OK, id \w+"))
    [server] = stored_servers(app)
    assert payload(app, server.id)["key"] == key
    secrets_absent(page, key["private_key"], "PRIVATE KEY", payload(app, server.id)["access_token"])

    [mail] = gmail.sent
    assert mail.sub == MAILBOX and mail.mailbox == MAILBOX
    assert mail.mime["To"] == RECIPIENT and mail.mime["Subject"] == GMAIL_SUBJECT
    assert mail.mime["From"].addresses[0].display_name == "Help Desk"
    assert mail.mime["From"].addresses[0].addr_spec == MAILBOX
    assert mail.mime["Reply-To"] == "support@example.test"
    assert "through the mail server Gmail sender" in mail.mime.get_content()


def test_gmail_with_google_consent_validates_and_sends(page, app, oauth_portal, oauth_server, gmail, live_url):
    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET, [f"{live_url}/oauth/callback"])
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    field(page, "Description").fill("Gmail sender")
    choose_protocol(page, "gmail", "Gmail API endpoint")
    # The mailbox typed before choosing OAuth comes along.
    field(page, "Mailbox to send as").fill(MAILBOX)
    field(page, "Authentication").select_option("oauth")
    expect(field(page, "Provider"), "choosing OAuth should re-render the credentials through htmx").to_be_visible()
    expect(field(page, "Mailbox to send as")).to_have_count(0)
    expect(field(page, "Mailbox")).to_have_value(MAILBOX)
    htmx_settled(page)
    field(page, "Provider").select_option("google")
    expect(field(page, "Authorization URL")).to_have_value("https://accounts.google.com/o/oauth2/v2/auth")
    htmx_settled(page)
    expect(field(page, "Token URL")).to_have_value("https://oauth2.googleapis.com/token")
    expect(field(page, "Scope")).to_have_value(GMAIL_SEND)
    expect(field(page, "Flow").locator("option")).to_have_count(1)  # Google: delegated only
    expect(field(page, "Tenant ID")).to_have_count(0)
    field(page, "Authorization URL").fill(oauth_server.authorize_url)
    field(page, "Token URL").fill(oauth_server.token_url)
    field(page, "Client ID").fill(GOOGLE_CLIENT_ID)
    field(page, "Client secret").fill(GOOGLE_CLIENT_SECRET)
    field(page, "Gmail API endpoint").fill(gmail.url)
    field(page, "From address").fill(MAILBOX)
    field(page, "Sender name").fill("Help Desk")

    row = save_and_find(page, "Gmail sender")
    expect(row).to_contain_text("OAuth 2.0 (delegated)")
    row.get_by_role("link", name="Edit").click()
    status = page.locator("#oauth-status")
    expect(status).to_contain_text("Not authorized yet: nobody has consented for this server.")
    status.get_by_role("button", name="Authorize").click()

    expect(page.get_by_role("heading", name="Sign in and approve")).to_be_visible()  # the provider's page
    expect(page.locator("#scopes")).to_contain_text(GMAIL_SEND)
    page.get_by_label("Username").fill(MAILBOX)
    page.get_by_label("Password").fill(OWNER_PASSWORD)
    page.get_by_role("button", name="Sign in and approve").click()
    expect(page.locator("#oauth-outcome")).to_contain_text("Authorized.")  # back on the server page
    expect(page.locator("#oauth-outcome")).to_contain_text(f"Mailroom can now send mail as {MAILBOX}")
    expect(page.locator("#oauth-status dd").first).to_have_text(MAILBOX)
    expect(page.locator("#oauth-status")).to_contain_text("gmail.send")
    htmx_ready(page)

    report = validate(page)
    expect(report).to_contain_text("All checks passed.")
    expect(step(report, "passed", "Token")).to_contain_text("the stored access token is still valid")
    expect(step(report, "warning", "Mailbox")).to_contain_text("the token may not read the mailbox's profile")
    [server] = stored_servers(app)
    secrets_absent(page, GOOGLE_CLIENT_SECRET, payload(app, server.id)["access_token"],
                   payload(app, server.id)["refresh_token"])

    page.get_by_role("link", name="Mail servers").click()
    send_sample(page, page.get_by_role("row").filter(has_text="Gmail sender"))
    expect(page.locator("#sample").get_by_role("status")).to_contain_text(ACCEPTED)
    secrets_absent(page, GOOGLE_CLIENT_SECRET, payload(app, server.id)["access_token"])
    [mail] = gmail.sent
    assert mail.sub == MAILBOX and mail.mime["To"] == RECIPIENT and mail.mime["Subject"] == GMAIL_SUBJECT
    assert mail.mime["From"].addresses[0].display_name == "Help Desk"


def test_gmail_oauth_keeps_the_mailbox_typed_after_choosing_oauth(page, app, help_desk, live_url):
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    field(page, "Description").fill("Gmail sender")
    choose_protocol(page, "gmail", "Gmail API endpoint")
    field(page, "Authentication").select_option("oauth")
    expect(field(page, "Provider")).to_be_visible()
    htmx_settled(page)
    field(page, "Provider").select_option("google")
    expect(field(page, "Token URL")).to_have_value("https://oauth2.googleapis.com/token")
    htmx_settled(page)
    field(page, "Mailbox").fill(MAILBOX)
    field(page, "Client ID").fill(GOOGLE_CLIENT_ID)
    field(page, "Client secret").fill(GOOGLE_CLIENT_SECRET)
    field(page, "From address").fill(MAILBOX)
    new_url = f"{live_url}/p/help/servers/new"
    with page.expect_response(lambda r: r.request.method == "POST" and r.url == new_url) as saved:
        page.get_by_role("button", name="Save", exact=True).click()
    assert saved.value.status == 204, f"the form came back ({saved.value.status}) instead of being saved"
    expect(page.get_by_role("status").filter(has_text="Saved “Gmail sender”.")).to_be_visible()
    [server] = stored_servers(app)
    assert server.credential.username == MAILBOX


def test_gmail_with_a_delegation_scope_too_narrow_is_said_in_words(page, app, help_desk, oauth_server, gmail,
                                                                    service_account_key):
    # The Workspace admin allowed the service account gmail.readonly only; Mailroom asks for gmail.send.
    key = service_account_key(oauth_server, subjects={MAILBOX}, scopes={GMAIL_READONLY})
    sign_in(page)
    open_mail_servers(page)
    configure_gmail_service_account(page, gmail, key)

    report = validate(page)
    expect(report).to_contain_text("Validation failed at “Token”:")
    failed = step(report, "failed", "Token")
    expect(failed).to_contain_text("the service account may not act for the mailbox with this scope")
    expect(failed).to_contain_text("not authorized for any of the scopes requested")
    expect(failed.locator(".hint")).to_contain_text("Domain-wide delegation")
    expect(report.locator("li.step.failed")).to_have_count(1)
    assert [(r["scope"], r["outcome"]) for r in oauth_server.requests] == [(GMAIL_SEND, "unauthorized_client")]
    secrets_absent(page, key["private_key"], "PRIVATE KEY")
    assert gmail.sent == [] and gmail.requests == [] and stored_servers(app) == []
