"""A grant after consent, against the real authorization server on loopback (tests/peers/oauth.py)
and an XOAUTH2 relay that checks every token with it: refresh with what was granted, Validate
that tells the grant's state, a client secret typed for Validate that is really tried, and
a token refused at SMTP explained as a consent to renew."""
import pytest

from webapp.mail import oauth

from .test_oauth import (CLIENT_ID, CLIENT_SECRET, MAILBOX, OWNER_PASSWORD, REDIRECT_URI, an_hour_passes, authorize,
                         credential, oauth_form, payload, provider, relay, save)  # noqa: F401

LOCAL_SCOPE = "smtp"  # what the local relay wants in a token


@pytest.fixture
def local(http_oauth_server):
    """Provider Other: a local authorization server over plain http:// that grants less than asked."""
    http_oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    http_oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
    return http_oauth_server


def other_form(authority, relay, **overrides) -> dict:
    return oauth_form(authority, relay, provider="other", issuer=authority.issuer,
                      authorize_url=authority.authorize_url, token_url=authority.token_url,
                      scope=f"{LOCAL_SCOPE} {oauth.OTHER_SCOPE}", _shown=["smtp", "port", "tls", "oauth", "issuer"],
                      **overrides)


def check(client, server) -> str:
    return client.post(f"/p/help/servers/{server.id}/check", htmx=True).text


def test_a_refresh_asks_only_for_what_other_granted(app, admin, staff, local, xoauth2_peer, test_ca_file):
    local.withheld_scopes = {"offline_access"}  # granted: "smtp openid", and a refresh token all the same
    relay = xoauth2_peer(local, required_scope=LOCAL_SCOPE)
    server = save(app, admin, other_form(local, relay))
    authorize(admin, server, test_ca_file)
    assert credential(app, server.id).granted_scopes == "smtp openid"

    an_hour_passes(app, local, server.id)
    report = check(staff, server)
    assert "All checks passed." in report and "obtained a new access token" in report
    [refresh] = [r for r in local.requests if r["grant_type"] == "refresh_token"]
    assert refresh["outcome"] == "ok" and refresh["scope"] is None  # RFC 6749 6: as granted
    stored = credential(app, server.id)
    assert not stored.needs_reauthorization and stored.granted_scopes == "smtp openid"
    assert "All checks passed." in check(staff, server)  # the rotated refresh token was kept


def test_a_refused_scope_on_refresh_does_not_mark_a_healthy_grant(app, admin, staff, provider, relay, test_ca_file):
    """Microsoft is asked with the configured scope on a refresh; a scope refused then is not a
    dead grant: a new consent would not change what the server grants."""
    provider.withheld_scopes = {"offline_access"}
    server = save(app, admin, oauth_form(provider, relay))
    authorize(admin, server, test_ca_file)
    an_hour_passes(app, provider, server.id)
    report = check(staff, server)
    assert "Validation failed at “Token”:" in report and "the provider does not accept the scope" in report
    assert [r["outcome"] for r in provider.requests if r["grant_type"] == "refresh_token"] == ["invalid_scope"]
    stored = credential(app, server.id)
    assert not stored.needs_reauthorization and stored.consented_at is not None
    assert "Re-authorization needed" not in admin.get("/p/help/servers/").text


def test_other_gets_a_default_scope_that_fills_the_required_field(admin):
    def swap(**values):
        form = {"protocol": "smtp", "auth_type": "oauth", "flow": "delegated", "_shown": ["oauth", "microsoft"],
                **values}
        return admin.post("/p/help/servers/new/section/credentials", form, htmx=True,
                          headers={"HX-Trigger-Name": "provider"}).text

    chosen = swap(provider="other", scope="https://outlook.office.com/SMTP.Send offline_access")
    assert f'name="scope" value="{oauth.OTHER_SCOPE}"' in chosen
    default = admin.post("/p/help/servers/new/section/endpoints", {
        "protocol": "smtp", "auth_type": "oauth", "provider": "other", "flow": "delegated", "scope": "mine",
        "_action": "default_scope", "_shown": ["oauth", "issuer"]}, htmx=True).text
    assert f'name="scope" value="{oauth.OTHER_SCOPE}"' in default
    back = swap(provider="microsoft", scope=oauth.OTHER_SCOPE)  # Other's default is a known one: it follows
    assert 'name="scope" value="https://outlook.office.com/SMTP.Send offline_access"' in back


def test_while_re_authorization_is_needed_validate_does_not_pass_on_a_cached_token(app, admin, staff, provider,
                                                                                   relay, test_ca_file):
    """The refresh token ended (a password change), the access token lives on for its hour:
    the nightly refresh marks the grant, and Validate says so instead of passing."""
    server = save(app, admin, oauth_form(provider, relay))
    authorize(admin, server, test_ca_file)
    provider.revoke_grant(MAILBOX, keep_access_tokens=True)
    cron = app.test_cli_runner().invoke(args=["mail", "refresh-tokens", "--older-than-hours", "0"])
    assert cron.exit_code == 1 and credential(app, server.id).needs_reauthorization
    report = check(staff, server)
    assert "Validation failed at “Token”:</strong> re-authorization needed: the token endpoint refused: " \
           "the grant was revoked (AADSTS50173)" in report
    assert "the stored access token is still valid" not in report and relay.auth_attempts == []
    page = admin.get(f"/p/help/servers/{server.id}/edit").text
    assert "Re-authorization needed" in page


def test_a_grant_marked_by_mistake_heals_with_the_next_good_refresh(app, admin, staff, provider, relay,
                                                                   test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    authorize(admin, server, test_ca_file)
    from webapp.grants import mark_needs_reauthorization

    with app.app_context():
        mark_needs_reauthorization(credential(app, server.id), oauth.OAuthFailure("invalid_grant", "a blip"))
    assert "All checks passed." in check(staff, server)  # refreshed, not vouched for by the cached token
    assert not credential(app, server.id).needs_reauthorization


def test_validate_with_a_typed_client_secret_really_uses_it(app, admin, provider, relay, test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    authorize(admin, server, test_ca_file)
    stored = payload(app, server.id)
    url = f"/p/help/servers/{server.id}/validate"

    wrong = admin.post(url, oauth_form(provider, relay, client_secret="not-the-secret", version="1"), htmx=True).text
    assert "Validation failed at “Token”:" in wrong and "the client secret is wrong (AADSTS7000215)" in wrong
    assert "not-the-secret" not in wrong
    after = credential(app, server.id)
    assert not after.needs_reauthorization and payload(app, server.id) == stored  # nothing stored, nothing marked

    right = admin.post(url, oauth_form(provider, relay, client_secret=CLIENT_SECRET, version="1"), htmx=True).text
    assert "All checks passed." in right and "obtained a new access token" in right
    kept = payload(app, server.id)
    assert kept["client_secret"] == CLIENT_SECRET and kept["refresh_token"] != stored["refresh_token"]
    assert "All checks passed." in check(admin, server)  # the rotated refresh token was kept: the grant lives


def test_a_token_refused_at_smtp_says_re_authorize(app, admin, staff, provider, relay, test_ca_file):
    server = save(app, admin, oauth_form(provider, relay))
    authorize(admin, server, test_ca_file)
    provider.revoke_grant(MAILBOX)  # the access token too, which Mailroom still thinks fresh
    report = check(staff, server)
    assert "Validation failed at “Authenticate”:" in report
    assert f"535: the server refused the OAuth token for {MAILBOX}" in report
    assert "The server said &#34;535 5.7.3 Authentication unsuccessful&#34;" in report  # the server's words
    assert "re-authorize (Authorize on the server&#39;s page)" in report
    assert "Exchange admin center" not in report and "Microsoft 365" not in report  # localhost is not Exchange Online
