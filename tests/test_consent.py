"""OAuth consent as the browser sees it, against the real authorization server on loopback
(tests/peers/oauth.py): how the browser leaves for the provider (never a form's redirect),
and how it comes back."""
import re
from urllib.parse import urlsplit

import pytest
from sqlmodel import select

from tests.conftest import Client
from webapp import consent, db
from webapp.models import MailServer, OAuthState

from .test_oauth import (MAILBOX, at_the_provider, authorize, authorize_url, deny_the_provider,  # noqa: F401
                         oauth_form, provider, query, relay, save)


def test_without_javascript_authorize_answers_a_page_that_links_to_the_provider(app, admin, provider, relay):
    server = save(app, admin, oauth_form(provider, relay))
    page = admin.post(f"/p/help/servers/{server.id}/oauth/authorize")
    assert page.status_code == 200 and "Location" not in page.headers  # not a form's redirect
    link = re.search(r'<a href="([^"]+)" role="button" id="continue-to-provider"', page.text).group(1)
    link = link.replace("&amp;", "&")
    assert link.startswith(f"{provider.issuer}/contoso.example/oauth2/v2.0/authorize?")
    assert query(link)["client_id"] == "mailroom-app" and query(link)["login_hint"] == MAILBOX
    assert f"Continue to {urlsplit(provider.issuer).netloc}" in page.text
    assert "form-action 'self';" in page.headers["Content-Security-Policy"]
    with app.app_context():
        assert len(db.session().exec(select(OAuthState)).all()) == 1  # the consent has started


def test_with_htmx_authorize_sends_the_browser_on_by_a_plain_navigation(app, admin, provider, relay):
    server = save(app, admin, oauth_form(provider, relay))
    url = authorize_url(admin, server)
    assert url.startswith(f"{provider.issuer}/contoso.example/oauth2/v2.0/authorize?")
    assert query(url)["code_challenge_method"] == "S256"


def test_no_page_lets_a_form_go_to_another_origin(app, admin, provider, relay):
    """Every form posts to Mailroom: the provider's origin is no longer a form-action target."""
    server = save(app, admin, oauth_form(provider, relay))
    for path in (f"/p/help/servers/{server.id}/edit", "/p/help/servers/"):
        policy = admin.get(path).headers["Content-Security-Policy"]
        assert "form-action 'self';" in policy and "127.0.0.1" not in policy, policy


def test_a_refusal_to_start_is_shown_in_the_page_to_htmx(app, admin, make, provider, relay):
    server = save(app, admin, oauth_form(provider, relay))
    make.user("root@example.com", superadmin=True)
    deny_the_provider(app, provider)
    refused = admin.post(f"/p/help/servers/{server.id}/oauth/authorize", htmx=True)
    assert refused.status_code == 403 and "HX-Redirect" not in refused.headers
    assert refused.headers["HX-Retarget"] == "#messages"  # static/app.js swaps it there despite the 403
    assert refused.text.startswith('<p class="flash error" role="alert">The consent cannot go on: the token URL')
    assert "What to try:</strong> if it is right, a super-admin can allow it" in refused.text


# -- the next step is obvious ------------------------------------------------------------------------

def test_saving_an_oauth_server_that_needs_consent_lands_where_authorize_is(app, admin, provider, relay):
    saved = admin.post("/p/help/servers/new", oauth_form(provider, relay))
    assert saved.status_code == 303 and saved.headers["Location"].endswith("/edit#oauth-status")
    page = admin.get(saved.headers["Location"].split("#")[0]).text
    assert "Saved “Microsoft relay”. Next: authorize Mailroom at the provider (Authorize)" in page
    assert page.index('id="oauth-status"') < page.index('id="server-form"')  # not buried below the form
    again = admin.post("/p/help/servers/new", oauth_form(provider, relay, description="Second"), htmx=True)
    assert again.status_code == 204 and again.headers["HX-Redirect"].endswith("/edit#oauth-status")
    assert again.headers["HX-Redirect"] != saved.headers["Location"]
    plain = admin.post("/p/help/servers/new", {**oauth_form(provider, relay, description="Plain"),
                                               "auth_type": "none"})
    assert plain.headers["Location"] == "/p/help/servers/"  # nothing to consent to: the list


def test_the_list_says_authorization_needed_with_the_button(app, admin, staff, provider, relay, test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    app_only = save_another(app, admin, oauth_form(provider, relay, description="App relay", flow="app",
                                                   scope="https://outlook.office365.com/.default", authorize_url=""))
    listing = admin.get("/p/help/servers/").text
    assert listing.count('<span class="badge error">Authorization needed</span>') == 2
    assert re.search(rf'<button type="submit" form="server-actions" formaction="/p/help/servers/{server.id}/oauth/authorize"'
                     rf' hx-post="/p/help/servers/{server.id}/oauth/authorize" hx-target="this" class="small">Authorize</button>',
                     listing)  # the page's one form carries the token
    assert f'hx-post="/p/help/servers/{app_only.id}/oauth/admin-consent"' in listing
    assert ">Grant admin consent</button>" in listing
    assert "oauth/authorize" not in staff.get("/p/help/servers/").text  # staff see the state, not the button
    authorize(admin, server, test_ca_file)
    assert admin.get("/p/help/servers/").text.count("Authorization needed") == 1


def save_another(app, admin, form):
    response = admin.post("/p/help/servers/new", form)
    assert response.status_code == 303, response.text
    with app.app_context():
        return db.session().exec(select(MailServer).order_by(MailServer.id.desc())).unique().first()


def test_back_from_the_provider_the_address_bar_is_clean_and_the_page_says_it_once(app, admin, provider, relay,
                                                                                 test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    location = at_the_provider(authorize_url(admin, server), test_ca_file)
    handled = admin.get(urlsplit(location).path + "?" + urlsplit(location).query)
    assert handled.status_code == 303
    assert handled.headers["Location"] == f"/p/help/servers/{server.id}/edit#oauth-status"
    page = admin.get(handled.headers["Location"]).text
    assert f"<strong>Authorized.</strong> Mailroom can now send mail as {MAILBOX}" in page
    assert "<strong>Authorized.</strong>" not in admin.get(handled.headers["Location"]).text  # once


def discover_form(issuer, **values) -> dict:
    return {"description": "Typed meanwhile", "protocol": "smtp", "host": "localhost", "auth_type": "oauth",
            "provider": "other", "flow": "delegated", "issuer": issuer, "scope": "openid offline_access",
            "from_address": "a@example.test", "timeout": "10", "max_connections": "5",
            "_shown": ["smtp", "port", "tls", "oauth", "issuer"], **values}


def test_discover_says_what_it_found(admin, provider):
    found = admin.post("/p/help/servers/new/oauth/discover", discover_form(provider.issuer), htmx=True).text
    assert (f'<p class="ok" role="status" id="issuer-found">Found the metadata of {provider.issuer}: filled in the '
            f"authorization URL ({provider.authorize_url}) and the token URL ({provider.token_url}).") in found
    assert "Its sign-in answers name it (RFC 9207 iss)" in found and "Scopes it offers: " in found


def test_discover_without_javascript_answers_the_whole_page(admin, provider):
    page = admin.post("/p/help/servers/new/oauth/discover", discover_form(provider.issuer))
    assert page.status_code == 200 and page.text.startswith("<!doctype html>")
    assert '<form id="server-form"' in page.text and 'value="Typed meanwhile"' in page.text
    assert f'value="{provider.token_url}"' in page.text and 'id="issuer-found"' in page.text


def test_an_egress_refusal_at_discover_offers_allow_and_keeps_the_form(app, admin, make, provider):
    root = Client(app).login(make.user("root@example.com", superadmin=True).email)
    assert root.post("/settings/egress", {"allow": "", "deny": ""}).status_code == 303  # loopback: refused again
    port = urlsplit(provider.issuer).port
    refused = root.post("/p/help/servers/new/oauth/discover", discover_form(provider.issuer), htmx=True).text
    assert f"the egress policy refuses 127.0.0.1 port {port}" in refused  # beside the issuer field
    report = refused[refused.index('<section id="report" hx-swap-oob="innerHTML">'):]
    assert "Discover could not reach the issuer:" in report
    assert f'<input type="hidden" name="rule" value="127.0.0.1 {port}">' in report
    assert f"Allow 127.0.0.1 {port} for this portal" in report
    assert refused.index('id="section-credentials"') < refused.index('<section id="report"')  # outside the form
    assert f'value="{provider.issuer}"' in refused and 'value="openid offline_access"' in refused  # as typed
    not_offered = admin.post("/p/help/servers/new/oauth/discover", discover_form(provider.issuer), htmx=True).text
    assert "Discover could not reach the issuer:" in not_offered and "Allow 127.0.0.1" not in not_offered
    without_javascript = root.post("/p/help/servers/new/oauth/discover", discover_form(provider.issuer))
    assert without_javascript.status_code == 422 and 'value="Typed meanwhile"' in without_javascript.text
    assert f"Allow 127.0.0.1 {port} for this portal" in without_javascript.text
    allowed = root.post("/p/help/egress/allow", {"rule": f"127.0.0.1 {port}"}, htmx=True)
    assert allowed.status_code == 200 and "may now connect" in allowed.text
    found = root.post("/p/help/servers/new/oauth/discover", discover_form(provider.issuer), htmx=True).text
    assert 'id="issuer-found"' in found and "Discover could not reach" not in found


@pytest.mark.parametrize("base_url, provider, words", [
    ("http://mailroom.contoso.com", "other", "The redirect URI is plain http://: Authorization servers commonly "
                                             "accept that only for localhost"),
    ("https://192.0.2.10", "other", ""),
    ("https://mailroom.local", "other", ""),
    ("https://mailroom.local", "microsoft", ""),
    ("https://mailroom.local", "google", "Google accepts only public domain names"),
    ("http://127.0.0.1:8123", "other", "The redirect URI points at this machine (127.0.0.1)"),
])
def test_redirect_uri_warnings_give_other_no_microsoft_or_google_advice(app, make, base_url, provider, words):
    portal = make.portal(slug="redirects", name="Redirects", base_url=base_url)
    with app.test_request_context("/p/redirects/servers/new", base_url=base_url):
        warning = consent.host_warning(portal, provider)
    assert (warning == "") if not words else (words in warning), warning
    if provider != "google":
        assert "Google" not in warning and ("Microsoft" not in warning or provider == "microsoft")


def test_the_oauth_section_gives_other_no_microsoft_or_google_advice(admin):
    def section(provider):
        form = {"protocol": "smtp", "auth_type": "oauth", "provider": provider, "flow": "delegated",
                "_shown": ["oauth", "issuer", "microsoft"]}
        return admin.post("/p/help/servers/new/section/credentials", form, htmx=True).text

    other = re.sub(r"<select.*?</select>", "", section("other"), flags=re.S)  # the choices name them all
    assert "at the authorization server, as a redirect URI of this client" in other
    assert "Entra" not in other and "Google" not in other and "Secret ID" not in other
    assert "Entra ID: Authentication → Web → Redirect URIs" in section("microsoft")
    assert "The secret&#39;s Value (not its Secret ID)." in section("microsoft")
    assert "Authorized redirect URIs" in section("google")
