"""OAuth 2.0 against a real authorization server on loopback (tests/peers/oauth.py) and an SMTP
peer that checks every XOAUTH2 token with it (tests/peers/xoauth2.py): consent through the
redirect URI, consent links, admin consent and app-only tokens, refresh and rotation, and every
way a callback can be refused before any token request."""
import logging
import re
import threading
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlmodel import select

from tests.conftest import Client
from webapp import consent, db
from webapp.credentials import unseal
from webapp.models import AuditEvent, Credential, MailServer, OAuthState, utcnow

MAILBOX = "sender@example.test"
OWNER_PASSWORD = "owner-Pass-1"
CLIENT_ID = "mailroom-app"
CLIENT_SECRET = "app-secret-VALUE-7"
TENANT = "contoso.example"
REDIRECT_URI = "https://help.example.com/oauth/callback"  # the portal's base URL + the one callback path
SMTP_SCOPE = "https://outlook.office.com/SMTP.Send offline_access"
APP_LOGGERS = ("webapp", "flask", "werkzeug", "urllib3", "requests", "sqlalchemy")  # not the test peers' own


def query(url: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@pytest.fixture
def provider(oauth_server):
    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI], app_roles={"SMTP.SendAsApp"})
    return oauth_server


@pytest.fixture
def relay(provider, xoauth2_peer):
    return xoauth2_peer(provider)


def oauth_form(authority, relay, **overrides) -> dict:
    form = {
        "description": "Microsoft relay", "protocol": "smtp", "host": "localhost", "port": str(relay.port),
        "security": "starttls", "verify_cert": "y", "ca_cert": relay.ca_pem, "timeout": "10",
        "auth_type": "oauth", "provider": "microsoft", "cloud": "global", "tenant": TENANT, "flow": "delegated",
        "username": MAILBOX, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "authorize_url": f"{authority.issuer}/{TENANT}/oauth2/v2.0/authorize",
        "token_url": f"{authority.issuer}/{TENANT}/oauth2/v2.0/token", "scope": SMTP_SCOPE,
        "from_address": MAILBOX, "sender_name": "Help Desk", "max_connections": "5", "enabled": "y",
        "_shown": ["smtp", "port", "tls", "oauth", "microsoft"],
    }
    return {**form, **overrides}


def save(app, admin, form) -> MailServer:
    response = admin.post("/p/help/servers/new", form)
    assert response.status_code == 303, response.text
    with app.app_context():
        return db.session().exec(select(MailServer)).unique().one()


def credential(app, server_id) -> Credential:
    with app.app_context():
        return db.session().exec(select(Credential).where(Credential.server_id == server_id)).one()


def payload(app, server_id) -> dict:
    """The credential's secret part, decrypted."""
    with app.app_context():
        return unseal(credential(app, server_id).secret)


def an_hour_passes(app, provider, server_id) -> None:
    """The access token expires, for the provider and by Mailroom's clock alike."""
    provider.expire_access_tokens()
    with app.app_context():
        stored = db.session().exec(select(Credential).where(Credential.server_id == server_id)).one()
        stored.expires_at = utcnow() - timedelta(minutes=1)
        db.session().commit()


def at_the_provider(location: str, ca_file: str, action="approve", username=MAILBOX, password=OWNER_PASSWORD) -> str:
    """The person at the provider's page: sign in, press a button; returns where they are sent back."""
    assert requests.get(location, verify=ca_file).status_code == 200
    answer = requests.post(location, data={"username": username, "password": password, "action": action},
                           verify=ca_file, allow_redirects=False)
    assert answer.status_code in (302, 303), answer.text
    return answer.headers["Location"]


def back_at_mailroom(client: Client, location: str):
    """The provider sends the browser to the callback, which handles the answer and sends the
    browser on (303) to where it shows the outcome, without the code and the state."""
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == REDIRECT_URI
    handled = client.get(f"{parts.path}?{parts.query}")
    assert handled.status_code == 303 and handled.headers["Referrer-Policy"] == "no-referrer", handled.text
    assert "?" not in handled.headers["Location"], handled.headers["Location"]
    return client.get(handled.headers["Location"])


def to_the_provider(client: Client, url: str, data: dict | None = None) -> str:
    """Press Authorize (or Grant admin consent, or Continue): htmx is told where the browser goes."""
    start = client.post(url, data, htmx=True)
    assert start.status_code == 200 and "Location" not in start.headers, start.text
    return start.headers["HX-Redirect"]


def authorize_url(client: Client, server) -> str:
    return to_the_provider(client, f"/p/help/servers/{server.id}/oauth/authorize")


def authorize(client: Client, server, test_ca_file, **kwargs):
    return back_at_mailroom(client, at_the_provider(authorize_url(client, server), test_ca_file, **kwargs))


def test_consent_then_validate_and_a_sample_mail_over_xoauth2(app, admin, staff, provider, relay, test_ca_file,
                                                              caplog):
    caplog.set_level(logging.DEBUG)  # the app's own loggers, at every level, are checked below
    server = save(app, admin, oauth_form(provider, relay))
    page = admin.get(f"/p/help/servers/{server.id}/edit").text
    assert f'<input type="text" id="redirect-uri" value="{REDIRECT_URI}" readonly' in page
    assert "Not authorized yet: nobody has consented for this server." in page

    done = authorize(admin, server, test_ca_file)  # back on the server's page
    assert done.status_code == 200 and "<strong>Authorized.</strong>" in done.text
    assert f"Mailroom can now send mail as {MAILBOX}" in done.text and 'id="oauth-status"' in done.text
    stored = credential(app, server.id)
    assert stored.consented_by == MAILBOX and "SMTP.Send" in stored.granted_scopes and stored.expires_at
    tokens = payload(app, server.id)
    assert tokens["client_secret"] == CLIENT_SECRET and tokens["refresh_token"] and tokens["access_token"]

    page = admin.get(f"/p/help/servers/{server.id}/edit").text
    assert re.search(rf"<dt>Consented by</dt><dd>{re.escape(MAILBOX)}</dd>", page)
    assert "Re-authorize" in page

    report = staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report
    assert "the stored access token is still valid" in report  # the Token step, then XOAUTH2
    assert f"signed in as {MAILBOX} with XOAUTH2" in report
    assert "C: AUTH XOAUTH2 ********" in report

    sample = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.test"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sample
    [mail] = relay.messages
    assert mail.user == MAILBOX and mail.rcpt_tos == ["jane@example.test"]
    app_log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(APP_LOGGERS))
    for text in (report, sample, page, admin.get("/p/help/history").text, app_log):
        for secret in (tokens["access_token"], tokens["refresh_token"], CLIENT_SECRET):
            assert secret not in text
    with app.app_context():
        event = db.session().exec(select(AuditEvent).where(AuditEvent.action == "server.authorized")).one()
    assert event.actor == f"OAuth consent by {MAILBOX}"


def test_the_consent_request_uses_pkce_the_redirect_uri_and_a_fresh_state(app, admin, provider, relay):
    server = save(app, admin, oauth_form(provider, relay))
    first = query(authorize_url(admin, server))
    second = query(authorize_url(admin, server))
    assert first["code_challenge_method"] == "S256" and len(first["code_challenge"]) == 43
    assert first["redirect_uri"] == REDIRECT_URI and first["client_id"] == CLIENT_ID
    assert set(first["scope"].split()) == {"https://outlook.office.com/SMTP.Send", "offline_access", "openid", "email"}
    assert first["login_hint"] == MAILBOX
    assert first["state"] != second["state"] and first["code_challenge"] != second["code_challenge"]
    assert "client_secret" not in first and CLIENT_SECRET not in str(first)


def test_a_callback_without_a_valid_state_is_refused_before_any_token_request(app, admin, make, provider, relay,
                                                                             test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    location = at_the_provider(authorize_url(admin, server),
                               test_ca_file)
    code = query(location)["code"]
    missing = admin.get(f"/oauth/callback?code={code}", follow_redirects=True)
    forged = admin.get(f"/oauth/callback?code={code}&state=forged-state", follow_redirects=True)
    assert missing.status_code == forged.status_code == 400
    assert "The consent cannot go on" in forged.text and "was not started here" in forged.text
    make.member(make.portal(slug="x", name="X"), "someone@example.com")
    elsewhere = Client(app).login("someone@example.com").get(
        urlsplit(location).path + "?" + urlsplit(location).query, follow_redirects=True)
    assert elsewhere.status_code == 400 and "belongs to another browser" in elsewhere.text
    assert provider.requests == []  # nothing reached the token endpoint
    # the other browser's attempt left the state alone: the browser that started the consent finishes it
    finished = back_at_mailroom(admin, location)
    assert "<strong>Authorized.</strong>" in finished.text
    assert [r["grant_type"] for r in provider.requests] == ["authorization_code"]


def test_a_used_state_cannot_be_replayed(app, admin, provider, relay, test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    location = at_the_provider(authorize_url(admin, server),
                               test_ca_file)
    assert back_at_mailroom(admin, location).status_code == 200
    assert [r["grant_type"] for r in provider.requests] == ["authorization_code"]
    replay = back_at_mailroom(admin, location)
    assert replay.status_code == 400 and "already used" in replay.text
    assert len(provider.requests) == 1


def test_access_denied_at_the_provider_is_said_in_words(app, admin, provider, relay, test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    answer = authorize(admin, server, test_ca_file, action="deny")  # back on the server's page
    assert 'role="alert"><strong>The consent did not complete.</strong>' in answer.text
    assert "declined" in answer.text and "What to try:" in answer.text
    assert provider.requests == []
    assert "An OAuth consent failed for" in admin.get("/p/help/history").text
    assert credential(app, server.id).consented_at is None


def test_an_answer_from_another_issuer_is_refused(app, admin, provider, relay, test_ca_file):
    form = oauth_form(provider, relay, issuer=provider.issuer, authorize_url=provider.authorize_url,
                      token_url=provider.token_url, _shown=["smtp", "port", "tls", "oauth", "issuer"],
                      **{"provider": "other"})
    server = save(app, admin, form)
    location = at_the_provider(authorize_url(admin, server),
                               test_ca_file)
    assert query(location)["iss"] == provider.issuer
    mixed_up = location.replace("iss=", "iss=https%3A%2F%2Fevil.example&was=")
    refused = back_at_mailroom(admin, mixed_up)
    assert refused.status_code == 400 and "names the issuer https://evil.example" in refused.text
    assert provider.requests == []


def deny_the_provider(app, provider) -> None:
    """A super-admin puts the authorization server's host and port on the portal's deny list."""
    port = urlsplit(provider.issuer).port
    admin_of_everything = Client(app).login("root@example.com")
    answer = admin_of_everything.post("/p/help/egress", {"allow": "", "deny": f"127.0.0.1 {port}"})
    assert answer.status_code == 303, answer.text


def test_authorize_refuses_before_the_provider_when_the_egress_policy_refuses_its_endpoints(app, admin, make,
                                                                                             provider, relay):
    server = save(app, admin, oauth_form(provider, relay))
    make.user("root@example.com", superadmin=True)
    deny_the_provider(app, provider)
    refused = admin.post(f"/p/help/servers/{server.id}/oauth/authorize")
    assert refused.status_code == 403 and "Location" not in refused.headers  # the browser stays here
    assert "The token URL cannot be used: the egress policy refuses 127.0.0.1 port" in refused.text
    assert "in the portal&#39;s deny list, line 1 refuses it" in refused.text
    assert "a super-admin can allow it" in refused.text and "then authorize again" in refused.text
    with app.app_context():
        assert db.session().exec(select(OAuthState)).all() == []


def test_a_token_endpoint_refused_after_the_consent_is_said_in_words(app, admin, make, provider, relay, test_ca_file):
    """The policy changed while the owner was at the provider: the code exchange is refused, not a 500."""
    server = save(app, admin, oauth_form(provider, relay))
    make.user("root@example.com", superadmin=True)
    location = at_the_provider(authorize_url(admin, server),
                               test_ca_file)
    deny_the_provider(app, provider)
    answer = back_at_mailroom(admin, location)
    assert "<strong>The consent did not complete.</strong>" in answer.text
    assert "Exchanging the code for tokens failed: Mailroom&#39;s egress policy refuses the token endpoint" in answer.text
    assert provider.requests == []  # nothing was sent to it
    stored = credential(app, server.id)
    assert stored.consented_at is None and "egress policy refuses the token endpoint" in stored.last_error
    assert "An OAuth consent failed for" in admin.get("/p/help/history").text


def test_the_refresh_tokens_command_reports_an_egress_refusal(app, admin, make, provider, relay, test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    authorize(admin, server, test_ca_file)
    make.user("root@example.com", superadmin=True)
    deny_the_provider(app, provider)
    refused = app.test_cli_runner().invoke(args=["mail", "refresh-tokens", "--older-than-hours", "0"])
    assert refused.exit_code == 1, refused.output
    assert "help/Microsoft relay: failed: Mailroom's egress policy refuses the token endpoint" in refused.output
    assert not credential(app, server.id).needs_reauthorization  # a policy, not the grant: no re-consent


def test_a_revoked_grant_asks_for_re_authorization_and_validate_says_why(app, admin, staff, provider, relay,
                                                                        test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    authorize(admin, server, test_ca_file)
    provider.revoke_grant(MAILBOX)
    an_hour_passes(app, provider, server.id)
    report = staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "Validation failed at “Token”:" in report
    assert "the grant was revoked (AADSTS50173)" in report
    assert "re-authorize: the user&#39;s password changed, or the consent was revoked" in report
    listing = admin.get("/p/help/servers/").text
    assert '<span class="badge error">Re-authorization needed</span>' in listing
    assert f'action="/p/help/servers/{server.id}/oauth/authorize"' in listing and ">Re-authorize</button>" in listing
    assert "Re-authorization needed for" in admin.get("/p/help/history").text
    again = authorize(admin, server, test_ca_file)  # one click, and it works again
    assert again.status_code == 200
    assert credential(app, server.id).needs_reauthorization is False
    assert "All checks passed." in staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text


def test_an_expired_access_token_is_refreshed_first_and_the_rotated_refresh_token_kept(app, admin, staff, provider,
                                                                                      relay, test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    authorize(admin, server, test_ca_file)
    before = payload(app, server.id)
    opened_form = admin.get(f"/p/help/servers/{server.id}/edit").text
    an_hour_passes(app, provider, server.id)
    report = staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report and "obtained a new access token" in report
    after = credential(app, server.id)
    tokens = payload(app, server.id)
    assert tokens["refresh_token"] != before["refresh_token"] and tokens["access_token"] != before["access_token"]
    assert after.refreshed_at is not None
    old = requests.post(provider.token_url, verify=test_ca_file, data={
        "grant_type": "refresh_token", "refresh_token": before["refresh_token"], "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET})
    assert old.json()["error"] == "invalid_grant"  # rotated: only the newest one works, and it is stored
    assert '<input type="hidden" name="version" value="1">' in opened_form
    with app.app_context():
        assert db.session().get(MailServer, server.id).version == 1  # no open edit form became stale
    refreshes = [r for r in provider.requests if r["grant_type"] == "refresh_token"]
    assert "the stored access token is still valid" in staff.post(f"/p/help/servers/{server.id}/check",
                                                                   htmx=True).text
    assert [r for r in provider.requests if r["grant_type"] == "refresh_token"] == refreshes


def test_two_refreshes_at_once_do_not_race(app, admin, make, portal, provider, relay, test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    authorize(admin, server, test_ca_file)
    an_hour_passes(app, provider, server.id)
    make.member(portal, "agent@example.com", "staff")
    browsers = [Client(app).login("agent@example.com") for _ in range(2)]
    answers = [None, None]

    def check(index):
        answers[index] = browsers[index].post(f"/p/help/servers/{server.id}/check", htmx=True).text

    threads = [threading.Thread(target=check, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all("All checks passed." in answer for answer in answers)
    refreshes = [r for r in provider.requests if r["grant_type"] == "refresh_token"]
    assert [r["outcome"] for r in refreshes] == ["ok"]
    assert credential(app, server.id).needs_reauthorization is False


def test_the_refresh_tokens_command_keeps_quiet_grants_alive(app, admin, provider, relay, test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    authorize(admin, server, test_ca_file)
    runner = app.test_cli_runner()
    quiet = runner.invoke(args=["mail", "refresh-tokens", "--older-than-hours", "0"])
    assert quiet.exit_code == 0 and "help/Microsoft relay: refreshed" in quiet.output
    assert credential(app, server.id).refreshed_at is not None
    recent = runner.invoke(args=["mail", "refresh-tokens"])
    assert "No grant needed a refresh." in recent.output
    provider.revoke_grant(MAILBOX)
    failed = runner.invoke(args=["mail", "refresh-tokens", "--older-than-hours", "0"])
    assert failed.exit_code == 1 and "failed:" in failed.output
    assert credential(app, server.id).needs_reauthorization


def test_app_only_needs_admin_consent_then_validates(app, admin, provider, relay, test_ca_file):
    relay.grant_full_access(CLIENT_ID, MAILBOX)  # the service principal's FullAccess, as Exchange Online wants
    form = oauth_form(provider, relay, flow="app", scope="https://outlook.office365.com/.default", authorize_url="")
    server = save(app, admin, form)
    page = admin.get(f"/p/help/servers/{server.id}/edit").text
    assert ">Grant admin consent</button>" in page and "a tenant administrator must grant admin consent" in page
    before = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    # Entra gives an unconsented app a token without roles; Exchange refuses it at AUTH (535), as in production
    assert "Validation failed at “Authenticate”:" in before and "535 5.7.3" in before
    assert ">Grant admin consent</button>" in admin.get("/p/help/servers/").text  # the list says what is needed

    start = to_the_provider(admin, f"/p/help/servers/{server.id}/oauth/admin-consent")
    assert f"{provider.issuer}/{TENANT}/adminconsent?" in start
    assert query(start)["redirect_uri"] == REDIRECT_URI
    answer = back_at_mailroom(admin, at_the_provider(start, test_ca_file, action="accept"))
    assert answer.status_code == 200 and "Admin consent granted" in answer.text

    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report and f"signed in as {MAILBOX} with XOAUTH2" in report
    # one token before the consent (without roles), and a new one after it: the old one is not used again
    assert [r["grant_type"] for r in provider.requests if r["outcome"] == "ok"] == ["client_credentials"] * 2
    assert "refresh_token" not in payload(app, server.id)
    assert "Authorization needed" not in admin.get("/p/help/servers/").text


def test_the_mailbox_owner_consents_through_a_link(app, admin, provider, relay, test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    made = admin.post(f"/p/help/servers/{server.id}/oauth/link", htmx=True)
    link = re.search(r'<input type="text" id="consent-link-url" value="([^"]+)"', made.text).group(1)
    assert "works once, for this server only, for 7 days" in made.text
    owner = Client(app)  # not signed in to Mailroom
    path, token = urlsplit(link).path, query(link)["link"]
    assert path == "/oauth/consent" and token  # the token is not in the path (which the access log shows)
    page = owner.get(f"{path}?link={token}")
    assert page.status_code == 200 and f"send mail as <strong>{MAILBOX}</strong>" in page.text
    assert f'<input type="hidden" name="link" value="{token}">' in page.text
    done = back_at_mailroom(owner, at_the_provider(to_the_provider(owner, path, {"link": token}), test_ca_file))
    assert done.status_code == 200 and "Authorized" in done.text and "You can close this page." in done.text
    assert credential(app, server.id).consented_by == MAILBOX
    assert owner.get(f"{path}?link={token}").status_code == 410  # used
    assert owner.get(f"{path}/{token}").status_code == 410  # the form of links made before: the same link
    with app.app_context():
        actors = [e.actor for e in db.session().exec(select(AuditEvent).where(AuditEvent.action.in_(
            ["server.consent_link", "server.authorized"])).order_by(AuditEvent.id))]
    assert actors == ["admin@example.com", f"OAuth consent by {MAILBOX}"]


def test_a_stored_client_secret_goes_only_to_the_token_url_it_was_saved_for(app, admin, provider, relay,
                                                                          test_ca_file, listener):
    server = save(app, admin, oauth_form(provider, relay))
    other = listener()
    posted = oauth_form(provider, relay, client_secret="", version="1",
                        token_url=f"https://127.0.0.1:{other.port}/token")
    response = admin.post(f"/p/help/servers/{server.id}/validate", posted, htmx=True)
    assert response.status_code == 422
    assert "enter the client secret again" in response.text
    assert other.connections == 0


def test_provider_choices_fill_in_endpoints_and_scope(admin):
    def swap(**values):
        form = {"protocol": "smtp", "auth_type": "oauth", "_shown": ["oauth", "microsoft"], **values}
        return admin.post("/p/help/servers/new/section/credentials", form, htmx=True,
                          headers={"HX-Trigger-Name": values.pop("trigger", "provider")}).text

    microsoft = swap(provider="microsoft", cloud="gcc_high", tenant="contoso.example", flow="delegated", scope="",
                     trigger="cloud")
    assert 'value="https://login.microsoftonline.us/contoso.example/oauth2/v2.0/token"' in microsoft
    assert 'value="https://outlook.office365.us/SMTP.Send offline_access"' in microsoft  # GCC High's Exchange
    google = swap(provider="google", flow="delegated", scope=SMTP_SCOPE)
    assert 'value="https://oauth2.googleapis.com/token"' in google and 'value="https://mail.google.com/"' in google
    assert 'name="tenant"' not in google and '<option value="app"' not in google  # app-only is Microsoft's
    app_only = swap(provider="microsoft", flow="app", scope=SMTP_SCOPE, trigger="flow")
    assert 'value="https://outlook.office365.com/.default"' in app_only
    mine = swap(provider="microsoft", flow="delegated", scope="https://outlook.office.com/SMTP.Send custom",
                trigger="flow")
    assert 'value="https://outlook.office.com/SMTP.Send custom"' in mine  # the admin's own scope stays
    reset = admin.post("/p/help/servers/new/section/credentials",
                       {"protocol": "smtp", "auth_type": "oauth", "provider": "microsoft", "flow": "delegated",
                        "scope": "mine", "_action": "default_scope", "_shown": ["oauth", "microsoft"]}, htmx=True).text
    assert f'value="{SMTP_SCOPE}"' in reset


def test_choosing_other_clears_a_known_providers_endpoints_but_keeps_typed_ones(admin):
    def to_other(**values):
        form = {"protocol": "smtp", "auth_type": "oauth", "provider": "other", "flow": "delegated",
                "_shown": ["oauth", "microsoft"], **values}
        return admin.post("/p/help/servers/new/section/credentials", form, htmx=True,
                          headers={"HX-Trigger-Name": "provider"}).text

    microsoft = "https://login.microsoftonline.com/organizations/oauth2/v2.0"
    cleared = to_other(authorize_url=f"{microsoft}/authorize", token_url=f"{microsoft}/token")
    assert re.search(r'<input type="text" id="token_url" name="token_url" value=""', cleared)
    assert "login.microsoftonline.com" not in cleared and 'name="issuer"' in cleared
    google = to_other(authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
                      token_url="https://oauth2.googleapis.com/token")
    assert "googleapis.com" not in google
    typed = to_other(authorize_url="https://auth.example.com/authorize", token_url="https://auth.example.com/token")
    assert 'value="https://auth.example.com/token"' in typed  # the admin's own endpoints stay


def test_discovery_fills_in_the_endpoints_of_an_issuer(admin, provider):
    form = {"protocol": "smtp", "auth_type": "oauth", "provider": "other", "flow": "delegated",
            "issuer": provider.issuer, "_shown": ["oauth", "issuer"]}
    found = admin.post("/p/help/servers/new/oauth/discover", form, htmx=True).text
    assert f'value="{provider.token_url}"' in found and f'value="{provider.authorize_url}"' in found
    wrong = admin.post("/p/help/servers/new/oauth/discover", {**form, "issuer": f"{provider.issuer}/nowhere"},
                       htmx=True).text
    assert "the issuer&#39;s metadata could not be found" in wrong


def test_discovery_authorize_and_the_code_exchange_take_a_slot_like_checks(app, admin, portal, provider, relay,
                                                                             test_ca_file):
    """Each waits on a server the portal chose, as a check does: bounded the same way, busy at once."""
    server = save(app, admin, oauth_form(provider, relay))
    form = {"protocol": "smtp", "auth_type": "oauth", "provider": "other", "flow": "delegated",
            "issuer": provider.issuer, "_shown": ["oauth", "issuer"]}
    location = authorize_url(admin, server)
    back = at_the_provider(location, test_ca_file)
    slots = app.extensions["mailroom.slots"]
    with slots.hold(portal.id, None, 0), slots.hold(portal.id, None, 0):
        found = admin.post("/p/help/servers/new/oauth/discover", form, htmx=True).text
        assert "This portal already has 2 checks or sample mails running" in found
        assert f'value="{provider.token_url}"' not in found
        refused = admin.post(f"/p/help/servers/{server.id}/oauth/authorize")
        assert refused.status_code == 429 and "Location" not in refused.headers
        assert "This portal already has 2 checks or sample mails running" in refused.text
        answer = back_at_mailroom(admin, back)
        assert "<strong>The consent did not complete.</strong>" in answer.text
        assert "This portal already has 2 checks or sample mails running" in answer.text
        assert "authorize again in a moment" in answer.text
    assert provider.requests == []  # nothing was asked of the token endpoint
    assert f'value="{provider.token_url}"' in admin.post("/p/help/servers/new/oauth/discover", form, htmx=True).text
    assert authorize(admin, server, test_ca_file).status_code == 200  # and all works again once the slots are free


def test_a_host_other_than_the_public_base_url_is_pointed_out(admin):
    form = {"protocol": "smtp", "auth_type": "oauth", "provider": "microsoft", "_shown": ["oauth", "microsoft"]}
    text = admin.post("/p/help/servers/new/section/credentials", form, htmx=True).text
    assert "You are using Mailroom at http://localhost, but the portal&#39;s public base URL is " \
           "https://help.example.com" in text


@pytest.mark.parametrize("error, description, provider, grant, words, hint", [
    ("invalid_grant", "Token has been expired or revoked.", "google", "",
     "the provider no longer accepts the authorization", "7 days while the app's consent screen is in “Testing”"),
    ("invalid_grant", "AADSTS70000: The provided refresh token is invalid or expired.", "microsoft", "",
     "the refresh token is no longer valid (AADSTS70000)", "end after 90 days unused"),
    ("invalid_client", "AADSTS7000215: Invalid client secret provided.", "microsoft", "", "the client secret is wrong",
     "not its Secret ID"),
    ("unauthorized_client", "Client is unauthorized to retrieve access tokens using this method", "google",
     "service_account", "the service account may not act for the mailbox", "Domain-wide delegation"),
])
def test_provider_errors_say_what_they_usually_mean(error, description, provider, grant, words, hint):
    from webapp.mail.oauth import OAuthFailure

    failure = OAuthFailure(error, description, provider=provider, grant=grant)
    assert failure.summary.startswith(words) and hint in failure.hint and failure.permanent


def test_a_tenant_change_swaps_only_the_endpoints_and_scope(admin):
    form = {"protocol": "smtp", "auth_type": "oauth", "provider": "microsoft", "cloud": "china", "tenant": "fabrikam.cn",
            "flow": "delegated", "scope": "", "username": "typed meanwhile", "_shown": ["oauth", "microsoft"]}
    swapped = admin.post("/p/help/servers/new/section/endpoints", form, htmx=True,
                         headers={"HX-Trigger-Name": "tenant"}).text
    assert swapped.strip().startswith('<div id="oauth-endpoints">')
    assert 'value="https://login.chinacloudapi.cn/fabrikam.cn/oauth2/v2.0/authorize"' in swapped
    assert 'value="https://partner.outlook.cn/SMTP.Send offline_access"' in swapped  # China's Exchange
    assert 'name="username"' not in swapped and 'name="client_id"' not in swapped


@pytest.mark.parametrize("base_url, words", [
    ("https://help.example.com", None),
    ("https://mailroom.contoso.com", None),
    ("http://mailroom.contoso.com", "The redirect URI is plain http://: Microsoft and Google accept that only for localhost"),
    ("http://127.0.0.1:8123", "The redirect URI points at this machine (127.0.0.1): the consent can only be completed"),
    ("http://localhost:8000", "The redirect URI points at this machine (localhost)"),
    ("http://[::1]:8000", "The redirect URI points at this machine (::1)"),
    ("https://192.0.2.10", "The redirect URI uses the IP address 192.0.2.10: Google does not accept an IP address"),
    ("https://mailroom.local", "The redirect URI uses the local name mailroom.local: Google accepts only public"),
    ("https://intranet", "The redirect URI uses the local name intranet"),
    ("https://mail.corp.internal", "The redirect URI uses the local name mail.corp.internal"),
])
def test_a_redirect_uri_a_provider_would_refuse_is_pointed_out(app, make, base_url, words):
    portal = make.portal(slug="redirects", name="Redirects", base_url=base_url)
    with app.test_request_context("/p/redirects/servers/new", base_url=base_url):  # used at its own address
        assert consent.redirect_uri(portal) == f"{base_url}/oauth/callback"
        warning = consent.host_warning(portal)
    assert (warning == "") if words is None else (words in warning), warning
