"""What the token endpoints' refusals say (webapp/mail/oauth_errors.py): Microsoft's AADSTS codes,
a declined admin consent, advice that fits the provider (none of Microsoft's or Google's for
another server), and a service account's failures worded for a service account, which never mark
its key "re-authorization needed" (they are the key's, the delegation's or the clock's, not a
consent's)."""
import re

import pytest
from joserfc.jwk import RSAKey

from tests.peers.smtp import free_port
from webapp.mail.oauth import OAuthFailure
from webapp.mail.oauth_errors import ERRORS

from .test_gmail import GMAIL_SEND, gmail_form
from .test_oauth import MAILBOX, credential, save


@pytest.mark.parametrize("description, words, hint", [
    ("AADSTS700022: The provided value for the input parameter scope is not valid because it contains more than one "
     "resource.", "the scope names more than one resource (AADSTS700022)", "ending in /.default"),
    ("AADSTS50194: Application 'x'(Mailroom) is not configured as a multi-tenant application. Usage of the /common "
     "endpoint is not supported", "the app is registered for one organization only", "enter your Tenant ID"),
    ("AADSTS7000215: Invalid client secret provided.", "the client secret is wrong (AADSTS7000215)",
     "not its Secret ID"),
    ("AADSTS700016: Application with identifier 'x' was not found in the directory 'contoso.example'.",
     "the app registration was not found in this tenant (AADSTS700016)", "check the Client ID and the Tenant ID"),
    ("AADSTS90002: Tenant 'nowhere.example' not found.", "the tenant does not exist (AADSTS90002)",
     "a US Government or China tenant exists only in its own cloud"),
    ("AADSTS500011: The resource principal named https://outlook.office365.us was not found in the tenant",
     "the service the scope names does not exist in this tenant or cloud (AADSTS500011)", "choose the Cloud"),
    ("AADSTS7000222: The provided client secret keys for app 'x' are expired.",
     "the client secret has expired (AADSTS7000222)", "make a new client secret"),
    ("AADSTS53003: Access has been blocked by Conditional Access policies.",
     "a Conditional Access policy blocked the sign-in (AADSTS53003)", "ask the Entra ID admin"),
])
def test_microsofts_codes_are_looked_up_by_number(description, words, hint):
    failure = OAuthFailure("invalid_request", description, 400, "microsoft")
    assert failure.summary.startswith(words) and hint in failure.hint and failure.permanent


def test_a_code_is_not_mistaken_for_a_longer_one():
    assert "(AADSTS70000)" not in OAuthFailure("invalid_grant", "AADSTS700000: something else", 400,
                                               "microsoft").summary


@pytest.mark.parametrize("error, description, words", [
    ("permission_denied", "The admin canceled the request", "the administrator declined the admin consent"),
    ("access_denied", "AADSTS65004: User declined to consent to access the app.", "the consent was declined"),
])
def test_a_declined_consent_is_said_as_such(error, description, words):
    failure = OAuthFailure(error, description, None, "microsoft")
    assert failure.summary.startswith(words) and failure.permanent


@pytest.mark.parametrize("error", sorted(ERRORS))
def test_another_servers_errors_carry_no_microsoft_or_google_advice(error):
    failure = OAuthFailure(error, "", None, "other")
    for name in ("Microsoft", "Entra", "Google", "Workspace", "AADSTS", "Secret ID", "Testing"):
        assert name not in f"{failure.summary} {failure.hint}", (error, name)


def test_a_transport_failure_is_one_sentence_and_never_a_dead_grant():
    failure = OAuthFailure("unreachable", "127.0.0.1:9 (Connection refused)", None, "microsoft")
    assert failure.headline == "could not reach the token endpoint: 127.0.0.1:9 (Connection refused)"
    assert not failure.reauthorize and not failure.permanent
    refused = OAuthFailure("invalid_grant", "AADSTS50173: revoked", 400, "microsoft")
    assert refused.headline.startswith("the token endpoint refused: the grant was revoked") and refused.reauthorize


# --- a service account, through the pages, against the peer ----------------------------------------------------

@pytest.fixture
def gmail(oauth_server, gmail_peer):
    return gmail_peer(oauth_server, users={MAILBOX})


def failed_token_step(admin, server) -> str:
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "Validation failed at “Token”:" in report
    return report


def test_a_key_google_no_longer_accepts_is_worded_for_the_key(app, admin, oauth_server, gmail, service_account_key):
    key = service_account_key(oauth_server, subjects={MAILBOX}, scopes={GMAIL_SEND})
    replaced = {**key, "private_key": RSAKey.generate_key(2048).as_pem(private=True).decode()}
    server = save(app, admin, gmail_form(gmail, replaced))
    report = failed_token_step(admin, server)
    assert "Google does not accept the key&#39;s signature: the key was deleted or disabled" in report
    assert "create a new JSON key for the service account" in report
    assert "re-authorize" not in report.lower()
    assert not credential(app, server.id).needs_reauthorization


def test_a_clock_that_is_off_is_said_and_marks_nothing(app, admin, oauth_server, gmail, service_account_key):
    server = save(app, admin, gmail_form(gmail, service_account_key(oauth_server, subjects={MAILBOX},
                                                                      scopes={GMAIL_SEND})))
    oauth_server.clock_offset = -2 * 3600  # Google's clock two hours behind ours: ours is off
    report = failed_token_step(admin, server)
    assert "this machine&#39;s clock is off" in report and "NTP" in report
    assert not credential(app, server.id).needs_reauthorization


def test_a_mailbox_outside_the_delegation_marks_nothing(app, admin, oauth_server, gmail, service_account_key):
    key = service_account_key(oauth_server, subjects={MAILBOX}, scopes={GMAIL_SEND})
    server = save(app, admin, gmail_form(gmail, key, username="someone@example.test"))
    report = failed_token_step(admin, server)
    assert "the service account may not act for the mailbox with this scope (domain-wide delegation)" in report
    assert not credential(app, server.id).needs_reauthorization


def test_a_closed_token_endpoint_is_one_clear_sentence(app, admin, oauth_server, gmail, service_account_key):
    port = free_port()
    key = {**service_account_key(oauth_server, subjects={MAILBOX}, scopes={GMAIL_SEND}),
           "token_uri": f"https://127.0.0.1:{port}/token"}
    server = save(app, admin, gmail_form(gmail, key))
    report = failed_token_step(admin, server)
    failure = re.search(r"Validation failed at “Token”:</strong> ([^<]*)<", report).group(1).strip()
    assert failure.startswith(f"could not reach the token endpoint: 127.0.0.1:{port} (")
    assert failure.count("token endpoint") == 1 and "did not answer" not in report
    assert "the key&#39;s token_uri" in report
    assert not credential(app, server.id).needs_reauthorization


# --- the consent pages, with the peer as the provider ---------------------------------------------------------------

def test_a_declined_admin_consent_is_said_on_the_page(app, admin, oauth_server, xoauth2_peer, test_ca_file):
    from .test_oauth import (CLIENT_ID, CLIENT_SECRET, OWNER_PASSWORD, REDIRECT_URI, at_the_provider, back_at_mailroom,
                             to_the_provider)
    from .test_oauth import oauth_form

    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI], app_roles={"SMTP.SendAsApp"})
    relay = xoauth2_peer(oauth_server)
    server = save(app, admin, oauth_form(oauth_server, relay, flow="app", authorize_url="",
                                         scope="https://outlook.office365.com/.default"))
    start = to_the_provider(admin, f"/p/help/servers/{server.id}/oauth/admin-consent")
    page = back_at_mailroom(admin, at_the_provider(start, test_ca_file, action="cancel"))
    assert "the administrator declined the admin consent: The admin canceled the request" in page.text
    assert "ask a tenant administrator to click Grant admin consent again" in page.text


def test_another_provider_whose_client_takes_only_http_basic(app, admin, oauth_server, xoauth2_peer, test_ca_file):
    from .test_oauth import OWNER_PASSWORD, REDIRECT_URI, authorize, oauth_form

    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client("basic-only", "basic-SECRET-1", [REDIRECT_URI], auth_methods=("client_secret_basic",))
    relay = xoauth2_peer(oauth_server)
    form = oauth_form(oauth_server, relay, client_id="basic-only", client_secret="basic-SECRET-1",
                      issuer=oauth_server.issuer, authorize_url=oauth_server.authorize_url,
                      token_url=oauth_server.token_url, _shown=["smtp", "port", "tls", "oauth", "issuer"],
                      **{"provider": "other"})
    server = save(app, admin, form)
    assert authorize(admin, server, test_ca_file).status_code == 200
    assert [(r["grant_type"], r["outcome"]) for r in oauth_server.requests] == [("authorization_code", "ok")]
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report
