"""Self-tests of the OAuth authorization server peer and the XOAUTH2 SMTP peer.

The client side is what an application would use: authlib's OAuth2Session and
AssertionSession, requests for the "browser", smtplib for SMTP.
"""
import base64
import json
import smtplib
import ssl
import threading
import time
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import AssertionSession, OAuth2Session
from authlib.oauth2 import rfc8414, rfc9207
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.peers.oauth import oauth_server, service_account_key  # noqa: F401
from tests.peers.xoauth2 import xoauth2_peer  # noqa: F401

USER, PASSWORD = "alice@example.test", "alice-Pass1"
OTHER_USER, OTHER_PASSWORD = "bob@example.test", "bob-Pass1"
CLIENT_ID, SECRET = "mailroom-app", "app-secret-value"
REDIRECT = "https://mailroom.example.test/oauth/callback"
SMTP_SCOPE = "https://outlook.office.com/SMTP.Send offline_access"
GRAPH_DEFAULT = "https://graph.microsoft.com/.default"
EXCHANGE_DEFAULT = "https://outlook.office365.com/.default"
GMAIL_SCOPE = "https://mail.google.com/"
SA_SUBJECT = "sender@example.test"


@pytest.fixture
def server(oauth_server):  # noqa: F811 - the fixture imported above
    oauth_server.add_user(USER, PASSWORD)
    oauth_server.add_user(OTHER_USER, OTHER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, SECRET, [REDIRECT], app_roles={"SMTP.SendAsApp", "Mail.Send"})
    return oauth_server


# --- helpers --------------------------------------------------------------------------------------

def session(server, ca_file, scope=SMTP_SCOPE, **kwargs) -> OAuth2Session:
    client = OAuth2Session(CLIENT_ID, SECRET, scope=scope, redirect_uri=REDIRECT,
                           code_challenge_method="S256", token_endpoint=server.token_url,
                           token_endpoint_auth_method="client_secret_post", **kwargs)
    client.verify = ca_file
    client.trust_env = False  # else REQUESTS_CA_BUNDLE in the environment overrides session.verify
    return client


def start_authorization(client, url, **params) -> tuple[str, str, str]:
    verifier = base64.urlsafe_b64encode(b"v" * 48).decode().rstrip("=") + "-verifier"
    uri, state = client.create_authorization_url(url, code_verifier=verifier, **params)
    return uri, state, verifier


def browser(uri, ca_file, action="approve", username=USER, password=PASSWORD) -> requests.Response:
    """What the user does: open the page, fill the form, press a button; the redirect is not followed."""
    page = requests.get(uri, verify=ca_file, allow_redirects=False)
    assert page.status_code == 200, page.text
    return requests.post(uri, data={"username": username, "password": password, "action": action},
                         verify=ca_file, allow_redirects=False)


def query(location: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def sign_in(server, ca_file, scope=SMTP_SCOPE, tenant=None, username=USER, password=PASSWORD, **params):
    """The whole code flow (on the Microsoft paths when a tenant is given); returns (OAuth2Session, token)."""
    client = session(server, ca_file, scope=scope)
    authorize_url = tenant_url(server, tenant, "authorize") if tenant else server.authorize_url
    uri, state, verifier = start_authorization(client, authorize_url, **params)
    location = browser(uri, ca_file, username=username, password=password).headers["Location"]
    assert query(location)["state"] == state
    token_url = tenant_url(server, tenant, "token") if tenant else server.token_url
    token = client.fetch_token(token_url, authorization_response=location, code_verifier=verifier)
    return client, token


def post_token(url, ca_file, **data) -> requests.Response:
    return requests.post(url, data=data, verify=ca_file)


def refresh(server, ca_file, refresh_token) -> requests.Response:
    return post_token(server.token_url, ca_file, grant_type="refresh_token", refresh_token=refresh_token,
                      client_id=CLIENT_ID, client_secret=SECRET)


def tenant_url(server, tenant, endpoint) -> str:
    return f"{server.issuer}/{tenant}/oauth2/v2.0/{endpoint}"


def assert_error(response, status, error, description=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    if description:
        assert description in body["error_description"]
    assert response.headers["Cache-Control"] == "no-store"


# --- metadata and the code flow -------------------------------------------------------------------

def test_metadata_document(server, test_ca_file):
    document = requests.get(server.metadata_url, verify=test_ca_file).json()
    assert requests.get(f"{server.issuer}/.well-known/openid-configuration", verify=test_ca_file).json() == document
    metadata = rfc8414.AuthorizationServerMetadata(document)
    metadata.validate(metadata_classes=[rfc9207.AuthorizationServerMetadata])
    assert document["issuer"] == server.issuer
    assert document["authorization_endpoint"] == server.authorize_url
    assert document["token_endpoint"] == server.token_url
    assert document["introspection_endpoint"] == server.introspect_url
    assert document["revocation_endpoint"] == server.revoke_url
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert set(document["token_endpoint_auth_methods_supported"]) == {"client_secret_post", "client_secret_basic"}
    assert document["authorization_response_iss_parameter_supported"] is True
    assert "urn:ietf:params:oauth:grant-type:jwt-bearer" in document["grant_types_supported"]


def test_code_flow_with_pkce(server, test_ca_file):
    client = session(server, test_ca_file)
    uri, state, verifier = start_authorization(client, server.authorize_url, login_hint=USER)
    page = requests.get(uri, verify=test_ca_file)
    assert "<label for=\"username\">Username</label>" in page.text and "Sign in and approve" in page.text
    assert "https://outlook.office.com/SMTP.Send" in page.text and "<script" not in page.text
    assert f'value="{USER}"' in page.text

    response = browser(uri, test_ca_file)
    assert response.status_code == 302
    params = query(response.headers["Location"])
    assert params["state"] == state and params["iss"] == server.issuer and params["code"]
    token = client.fetch_token(authorization_response=response.headers["Location"], code_verifier=verifier)

    assert token["token_type"] == "Bearer" and token["refresh_token"]
    assert token["scope"] == SMTP_SCOPE and token["expires_in"] == 3600
    info = server.introspect(token["access_token"])
    assert info["active"] and info["sub"] == USER == info["username"]
    assert info["client_id"] == CLIENT_ID and info["aud"] == "https://outlook.office.com"
    assert info["grant_type"] == "authorization_code" and info["roles"] == []
    assert server.consents == [{"username": USER, "client_id": CLIENT_ID, "scope": SMTP_SCOPE, "tenant": None}]
    assert [(r["grant_type"], r["client_id"], r["outcome"]) for r in server.requests] == [
        ("authorization_code", CLIENT_ID, "ok")]


def test_refresh_token_only_when_offline(server, test_ca_file):
    _, token = sign_in(server, test_ca_file, scope="https://outlook.office.com/SMTP.Send")
    assert "refresh_token" not in token
    _, token = sign_in(server, test_ca_file, scope=GMAIL_SCOPE, access_type="offline", prompt="consent")
    assert token["refresh_token"] and server.introspect(token["access_token"])["aud"] == "https://mail.google.com"


def test_code_flow_on_the_microsoft_paths(server, test_ca_file):
    server.known_tenants = {"contoso.example"}
    _, token = sign_in(server, test_ca_file, tenant="contoso.example")
    assert server.introspect(token["access_token"])["tenant"] == "contoso.example"

    client = session(server, test_ca_file)
    uri, _, _ = start_authorization(client, tenant_url(server, "fabrikam.example", "authorize"))
    page = requests.get(uri, verify=test_ca_file, allow_redirects=False)
    assert page.status_code == 400 and "AADSTS90002: Tenant 'fabrikam.example' not found." in page.text
    response = post_token(tenant_url(server, "fabrikam.example", "token"), test_ca_file,
                          grant_type="client_credentials", client_id=CLIENT_ID, client_secret=SECRET,
                          scope=GRAPH_DEFAULT)
    assert_error(response, 400, "invalid_request", "AADSTS90002: Tenant 'fabrikam.example' not found.")
    assert server.requests[-1]["tenant"] == "fabrikam.example"


def test_scopes_of_two_resources_are_refused_on_the_microsoft_paths(server, test_ca_file):
    client = session(server, test_ca_file, scope="https://outlook.office.com/SMTP.Send Mail.Send offline_access")
    uri, _, verifier = start_authorization(client, tenant_url(server, "common", "authorize"))
    location = browser(uri, test_ca_file).headers["Location"]
    with pytest.raises(OAuthError, match="AADSTS28000"):
        client.fetch_token(tenant_url(server, "common", "token"), authorization_response=location,
                           code_verifier=verifier)


@pytest.mark.parametrize("pkce", [{}, {"code_challenge": "x" * 43, "code_challenge_method": "plain"},
                                  {"code_challenge": "x" * 43}])
def test_code_without_pkce_s256_is_refused(server, test_ca_file, pkce):
    params = dict(response_type="code", client_id=CLIENT_ID, redirect_uri=REDIRECT, scope=SMTP_SCOPE,
                  state="s1", **pkce)
    response = requests.get(server.authorize_url, params=params, verify=test_ca_file, allow_redirects=False)
    assert response.status_code == 302
    params = query(response.headers["Location"])
    assert response.headers["Location"].startswith(REDIRECT + "?")
    assert params["error"] == "invalid_request" and params["state"] == "s1" and params["iss"] == server.issuer


def test_redirect_mismatch_shows_an_error_page(server, test_ca_file):
    client = session(server, test_ca_file)
    client.redirect_uri = "https://evil.example.test/callback"
    uri, _, _ = start_authorization(client, server.authorize_url)
    response = requests.get(uri, verify=test_ca_file, allow_redirects=False)
    assert response.status_code == 400 and "Location" not in response.headers
    assert ("AADSTS50011: The redirect URI 'https://evil.example.test/callback' specified in the request "
            f"does not match the redirect URIs configured for the application '{CLIENT_ID}'.") in response.text
    response = requests.post(uri, data={"username": USER, "password": PASSWORD, "action": "approve"},
                             verify=test_ca_file, allow_redirects=False)
    assert response.status_code == 400 and "Location" not in response.headers

    unknown = OAuth2Session("no-such-app", "x", scope=SMTP_SCOPE, redirect_uri=REDIRECT)
    uri, _ = unknown.create_authorization_url(server.authorize_url, code_verifier="v" * 50)
    response = requests.get(uri, verify=test_ca_file, allow_redirects=False)
    assert response.status_code == 400
    assert "AADSTS700016: Application with identifier 'no-such-app' was not found" in response.text


def test_prompt_none_needs_a_session_this_server_never_has(server, test_ca_file):
    uri, state, _ = start_authorization(session(server, test_ca_file), server.authorize_url, prompt="none")
    response = requests.get(uri, verify=test_ca_file, allow_redirects=False)
    assert query(response.headers["Location"])["error"] == "login_required"


def test_wrong_password_then_deny(server, test_ca_file):
    client = session(server, test_ca_file)
    uri, state, _ = start_authorization(client, server.authorize_url)
    response = browser(uri, test_ca_file, password="wrong")
    assert response.status_code == 200 and "Wrong username or password." in response.text
    response = browser(uri, test_ca_file, action="deny", username="", password="")
    assert response.status_code == 302
    assert response.headers["Location"].startswith(REDIRECT + "?")
    assert "error_description=The+user+denied+the+request." in response.headers["Location"]
    assert query(response.headers["Location"]) == {
        "error": "access_denied", "error_description": "The user denied the request.", "state": state,
        "iss": server.issuer}
    assert server.consents == [] and server.requests == []

    server.issue_iss = False
    assert "iss" not in query(browser(uri, test_ca_file, action="deny").headers["Location"])
    assert "iss" not in query(browser(uri, test_ca_file).headers["Location"])


def test_code_is_one_use_and_reuse_revokes_its_tokens(server, test_ca_file):
    client = session(server, test_ca_file)
    uri, _, verifier = start_authorization(client, server.authorize_url)
    code = query(browser(uri, test_ca_file).headers["Location"])["code"]
    exchange = dict(grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier,
                    client_id=CLIENT_ID, client_secret=SECRET)
    first = post_token(server.token_url, test_ca_file, **exchange)
    assert first.status_code == 200
    assert_error(post_token(server.token_url, test_ca_file, **exchange), 400, "invalid_grant", "AADSTS54005")
    assert server.introspect(first.json()["access_token"]) is None
    assert_error(refresh(server, test_ca_file, first.json()["refresh_token"]), 400, "invalid_grant")


def test_code_is_bound_to_verifier_and_redirect_uri(server, test_ca_file):
    client = session(server, test_ca_file)
    uri, _, verifier = start_authorization(client, server.authorize_url)
    code = query(browser(uri, test_ca_file).headers["Location"])["code"]
    exchange = dict(grant_type="authorization_code", code=code, redirect_uri=REDIRECT,
                    client_id=CLIENT_ID, client_secret=SECRET)
    assert_error(post_token(server.token_url, test_ca_file, **exchange, code_verifier="w" * 50),
                 400, "invalid_grant", "AADSTS501481")
    assert_error(post_token(server.token_url, test_ca_file, **exchange), 400, "invalid_request")
    assert_error(post_token(server.token_url, test_ca_file, **{**exchange, "redirect_uri": REDIRECT + "/x"},
                            code_verifier=verifier), 400, "invalid_grant")
    assert post_token(server.token_url, test_ca_file, **exchange, code_verifier=verifier).status_code == 200


def test_code_expires_after_a_minute(server, test_ca_file):
    server.code_lifetime = 0
    client = session(server, test_ca_file)
    uri, _, verifier = start_authorization(client, server.authorize_url)
    location = browser(uri, test_ca_file).headers["Location"]
    with pytest.raises(OAuthError, match="AADSTS70008"):
        client.fetch_token(authorization_response=location, code_verifier=verifier)


# --- refresh tokens -------------------------------------------------------------------------------

def test_refresh_rotates_and_the_old_token_is_refused(server, test_ca_file):
    _, token = sign_in(server, test_ca_file)
    server.expire_access_tokens()
    assert server.introspect(token["access_token"]) is None
    response = refresh(server, test_ca_file, token["refresh_token"])
    assert response.status_code == 200
    new = response.json()
    assert new["refresh_token"] != token["refresh_token"] and server.introspect(new["access_token"])
    assert_error(refresh(server, test_ca_file, token["refresh_token"]), 400, "invalid_grant",
                 "AADSTS70000: The provided refresh token is invalid or expired.")
    assert refresh(server, test_ca_file, new["refresh_token"]).status_code == 200


def test_refresh_without_rotation_keeps_the_token(server, test_ca_file):
    server.rotate_refresh_tokens = False
    _, token = sign_in(server, test_ca_file)
    for _ in range(2):
        response = refresh(server, test_ca_file, token["refresh_token"])
        assert response.status_code == 200 and "refresh_token" not in response.json()


def test_authlib_session_refreshes_by_itself(server, test_ca_file):
    saved = []
    client, token = sign_in(server, test_ca_file)
    client.update_token = lambda new, refresh_token=None, access_token=None: saved.append(new)
    server.access_token_lifetime = 120
    client.token = dict(token, expires_at=int(time.time()) - 10)
    client.ensure_active_token()
    assert saved and saved[0]["refresh_token"] != token["refresh_token"] and saved[0]["expires_in"] == 120


def test_two_refreshes_at_once_only_one_wins(server, test_ca_file):
    _, token = sign_in(server, test_ca_file)
    barrier, results = threading.Barrier(2), []

    def use_refresh_token():
        barrier.wait()
        results.append(refresh(server, test_ca_file, token["refresh_token"]))

    threads = [threading.Thread(target=use_refresh_token) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in results) == [200, 400]
    assert_error(next(r for r in results if r.status_code == 400), 400, "invalid_grant", "AADSTS70000")


def test_revoke_grant(server, test_ca_file):
    _, token = sign_in(server, test_ca_file)
    _, other = sign_in(server, test_ca_file, username=OTHER_USER, password=OTHER_PASSWORD)
    assert server.revoke_grant(USER.upper(), CLIENT_ID) == 1
    assert server.introspect(token["access_token"]) is None
    assert_error(refresh(server, test_ca_file, token["refresh_token"]), 400, "invalid_grant", "AADSTS50173")
    assert server.introspect(other["access_token"]) and refresh(server, test_ca_file, other["refresh_token"]).ok
    assert server.requests[-2]["outcome"] == "invalid_grant"


def test_refresh_may_narrow_the_scope_but_not_widen_it(server, test_ca_file):
    _, token = sign_in(server, test_ca_file, scope="https://outlook.office.com/SMTP.Send "
                                                   "https://outlook.office.com/EWS.AccessAsUser.All offline_access")
    narrow = post_token(server.token_url, test_ca_file, grant_type="refresh_token",
                        scope="https://outlook.office.com/SMTP.Send", refresh_token=token["refresh_token"],
                        client_id=CLIENT_ID, client_secret=SECRET)
    assert narrow.status_code == 200 and narrow.json()["scope"] == "https://outlook.office.com/SMTP.Send"
    msal_like = post_token(server.token_url, test_ca_file, grant_type="refresh_token",
                           scope="https://outlook.office.com/SMTP.Send openid profile offline_access",
                           refresh_token=narrow.json()["refresh_token"], client_id=CLIENT_ID, client_secret=SECRET)
    assert msal_like.status_code == 200, msal_like.text
    wide = post_token(server.token_url, test_ca_file, grant_type="refresh_token", scope="Mail.Send",
                      refresh_token=msal_like.json()["refresh_token"], client_id=CLIENT_ID, client_secret=SECRET)
    assert_error(wide, 400, "invalid_scope", "AADSTS65001")


# --- client authentication ------------------------------------------------------------------------

def test_wrong_client_secret(server, test_ca_file):
    _, token = sign_in(server, test_ca_file)
    expected = ("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID, for a secret added to app "
                f"'{CLIENT_ID}'.")
    response = post_token(server.token_url, test_ca_file, grant_type="refresh_token",
                          refresh_token=token["refresh_token"], client_id=CLIENT_ID, client_secret="wrong")
    assert_error(response, 401, "invalid_client")
    assert response.json()["error_description"] == expected
    basic = requests.post(server.token_url, data={"grant_type": "client_credentials", "scope": GRAPH_DEFAULT},
                          auth=(CLIENT_ID, "wrong"), verify=test_ca_file)
    assert_error(basic, 401, "invalid_client", expected)
    assert [r["outcome"] for r in server.requests[-2:]] == ["invalid_client", "invalid_client"]
    odd = post_token(server.token_url, test_ca_file, grant_type="client_credentials", scope=GRAPH_DEFAULT,
                     client_id='no"such\\app', client_secret="x")
    assert_error(odd, 400, "invalid_client", "AADSTS700016: Application with identifier 'no?such?app'")


# --- client credentials and admin consent ---------------------------------------------------------

def app_token(server, ca_file, scope=GRAPH_DEFAULT, tenant="contoso.example",
              client=(CLIENT_ID, SECRET)) -> requests.Response:
    return requests.post(tenant_url(server, tenant, "token"), auth=client, verify=ca_file,
                         data={"grant_type": "client_credentials", "scope": scope})


def test_client_credentials_before_admin_consent_give_a_token_without_roles(server, test_ca_file):
    before = app_token(server, test_ca_file)
    assert before.status_code == 200, before.text  # Entra issues it; the resource refuses it
    assert set(before.json()) == {"access_token", "expires_in", "token_type"}  # no scope, no refresh token
    assert server.introspect(before.json()["access_token"])["roles"] == []

    consent = f"{server.issuer}/contoso.example/adminconsent?" + requests.compat.urlencode(
        {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "state": "adm1"})
    page = requests.get(consent, verify=test_ca_file)
    assert page.status_code == 200 and "Accept" in page.text and "Cancel" in page.text
    cancel = requests.post(consent, data={"action": "cancel"}, verify=test_ca_file, allow_redirects=False)
    assert query(cancel.headers["Location"]) == {
        "error": "permission_denied", "state": "adm1", "error_description": "The admin canceled the request"}
    wrong = requests.post(consent, data={"username": USER, "password": "x", "action": "accept"}, verify=test_ca_file)
    assert wrong.status_code == 200 and "Wrong username or password." in wrong.text
    assert server.introspect(app_token(server, test_ca_file).json()["access_token"])["roles"] == []

    accept = requests.post(consent, data={"username": USER, "password": PASSWORD, "action": "accept"},
                           verify=test_ca_file, allow_redirects=False)
    assert accept.status_code == 302 and accept.headers["Location"].startswith(REDIRECT + "?")
    assert query(accept.headers["Location"]) == {"admin_consent": "True", "tenant": "contoso.example",
                                                 "state": "adm1"}

    response = app_token(server, test_ca_file)
    assert response.status_code == 200, response.text
    token = response.json()
    assert "refresh_token" not in token and "scope" not in token
    info = server.introspect(token["access_token"])
    assert info["sub"] == CLIENT_ID and info["username"] is None and info["aud"] == "https://graph.microsoft.com"
    assert sorted(info["roles"]) == ["Mail.Send", "SMTP.SendAsApp"] and info["grant_type"] == "client_credentials"
    assert server.requests[-1] == {"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                   "tenant": "contoso.example", "scope": GRAPH_DEFAULT, "outcome": "ok",
                                   "status": 200, "error_description": None}

    server.revoke_admin_consent(CLIENT_ID)
    assert server.introspect(token["access_token"]) is None
    assert server.introspect(app_token(server, test_ca_file).json()["access_token"])["roles"] == []


def test_admin_consent_page_checks_the_redirect_uri(server, test_ca_file):
    params = {"client_id": CLIENT_ID, "redirect_uri": "https://x.test/", "state": "s"}
    response = requests.get(server.admin_consent_url, params=params, verify=test_ca_file, allow_redirects=False)
    assert response.status_code == 400 and "AADSTS50011" in response.text


@pytest.mark.parametrize("scope, error, text", [
    (f"{GRAPH_DEFAULT} {EXCHANGE_DEFAULT}", "invalid_scope", "AADSTS28000"),
    ("https://graph.microsoft.com/Mail.Send", "invalid_scope", "AADSTS1002012"),
    ("", "invalid_request", "AADSTS900144"),
])
def test_client_credentials_scope_must_be_one_default(server, test_ca_file, scope, error, text):
    server.grant_admin_consent(CLIENT_ID)
    assert_error(app_token(server, test_ca_file, scope=scope), 400, error, text)


def test_client_credentials_need_a_real_tenant_and_the_grant_type(server, test_ca_file):
    server.grant_admin_consent(CLIENT_ID)
    assert_error(app_token(server, test_ca_file, tenant="common"), 400, "invalid_request", "AADSTS50059")
    ok = app_token(server, test_ca_file, scope=EXCHANGE_DEFAULT)
    assert server.introspect(ok.json()["access_token"])["aud"] == "https://outlook.office365.com"
    server.register_client("delegated-only", "s", [REDIRECT], grant_types=("authorization_code",))
    server.grant_admin_consent("delegated-only")
    response = post_token(server.token_url, test_ca_file, grant_type="client_credentials", scope=GRAPH_DEFAULT,
                          client_id="delegated-only", client_secret="s")
    assert_error(response, 400, "unauthorized_client")


# --- JWT bearer (Google service accounts) ---------------------------------------------------------

def assertion(key_file, *, key=None, **claims) -> str:
    now = int(time.time())
    payload = {"iss": key_file["client_email"], "sub": SA_SUBJECT, "aud": key_file["token_uri"],
               "scope": GMAIL_SCOPE, "iat": now, "exp": now + 3600, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    signing_key = key or RSAKey.import_key(key_file["private_key"])
    return jwt.encode({"alg": "RS256", "kid": key_file["private_key_id"]}, payload, signing_key)


def jwt_bearer(key_file, ca_file, value) -> requests.Response:
    return post_token(key_file["token_uri"], ca_file, grant_type="urn:ietf:params:oauth:grant-type:jwt-bearer",
                      assertion=value)


def test_service_account_key_file(server, service_account_key):  # noqa: F811
    key_file = service_account_key(server)
    assert key_file["type"] == "service_account" and key_file["token_uri"] == server.token_url
    assert key_file["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert key_file["client_id"].isdigit() and int(key_file["private_key_id"], 16)
    assert key_file["universe_domain"] == "googleapis.com"
    json.dumps(key_file)


def test_jwt_bearer_with_authlib_assertion_session(server, service_account_key, test_ca_file):  # noqa: F811
    key_file = service_account_key(server)
    client = AssertionSession(
        token_endpoint=key_file["token_uri"], issuer=key_file["client_email"], subject=SA_SUBJECT,
        audience=key_file["token_uri"], claims={"scope": GMAIL_SCOPE},
        key=RSAKey.import_key(key_file["private_key"]),
        header={"alg": "RS256", "kid": key_file["private_key_id"]})
    client.verify, client.trust_env = test_ca_file, False
    token = client.refresh_token()  # what AssertionSession does before its first request
    assert token["access_token"] and "refresh_token" not in token
    info = server.introspect(token["access_token"])
    assert info["sub"] == SA_SUBJECT == info["username"] and info["client_id"] == key_file["client_email"]
    assert info["scope"] == GMAIL_SCOPE and info["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert server.requests[-1]["client_id"] == key_file["client_email"]


@pytest.mark.parametrize("change, status, error, text", [
    ("other_key", 400, "invalid_grant", "Invalid JWT Signature."),
    ("unknown_iss", 400, "invalid_grant", "Invalid issuer"),
    ("other_sub", 401, "unauthorized_client", "Client is unauthorized to retrieve access tokens"),
    ("other_scope", 401, "unauthorized_client", "not authorized for any of the scopes requested."),
    ("wrong_aud", 400, "invalid_grant", "Invalid JWT"),
    ("too_long", 400, "invalid_grant", "Token must be a short-lived token (60 minutes)"),
    ("expired", 400, "invalid_grant", "Token must be a short-lived token (60 minutes)"),
    ("no_scope", 400, "invalid_scope", "Empty or missing scope not allowed."),
])
def test_jwt_bearer_errors(server, service_account_key, test_ca_file, change, status, error, text):  # noqa: F811
    key_file = service_account_key(server)
    now = int(time.time())
    changes = {
        "other_key": dict(key=RSAKey.generate_key(2048)),
        "unknown_iss": dict(iss="stranger@project.iam.gserviceaccount.com"),
        "other_sub": dict(sub="ceo@example.test"),
        "other_scope": dict(scope="https://www.googleapis.com/auth/gmail.readonly"),
        "wrong_aud": dict(aud=server.issuer),
        "too_long": dict(iat=now, exp=now + 7200),
        "expired": dict(iat=now - 7200, exp=now - 3600),
        "no_scope": dict(scope=None),
    }[change]
    response = jwt_bearer(key_file, test_ca_file, assertion(key_file, **changes))
    assert_error(response, status, error, text)


# --- introspection and revocation over HTTP -------------------------------------------------------

def test_introspection_and_revocation_endpoints(server, test_ca_file):
    _, token = sign_in(server, test_ca_file)

    def introspect(value, **kwargs):
        return requests.post(server.introspect_url, data={"token": value}, verify=test_ca_file, **kwargs)

    assert_error(introspect(token["access_token"]), 401, "invalid_client")
    body = introspect(token["access_token"], auth=(CLIENT_ID, SECRET)).json()
    assert body == server.introspect(token["access_token"]) and body["active"] is True
    assert introspect("nonsense", auth=(CLIENT_ID, SECRET)).json() == {"active": False}
    assert introspect(token["refresh_token"], auth=(CLIENT_ID, SECRET)).json() == {"active": False}

    revoked = requests.post(server.revoke_url, data={"token": token["refresh_token"], "client_id": CLIENT_ID,
                                                     "client_secret": SECRET}, verify=test_ca_file)
    assert revoked.status_code == 200
    assert introspect(token["access_token"], auth=(CLIENT_ID, SECRET)).json() == {"active": False}
    assert_error(refresh(server, test_ca_file, token["refresh_token"]), 400, "invalid_grant")


# --- XOAUTH2 over SMTP ----------------------------------------------------------------------------

def xoauth2(user, token):
    initial = f"user={user}\x01auth=Bearer {token}\x01\x01"
    challenges = []

    def answer(challenge=None):
        if challenge is None:
            return initial
        challenges.append(challenge)
        return ""
    return answer, challenges


def smtp_connect(peer, ca_file) -> smtplib.SMTP:
    smtp = smtplib.SMTP(peer.host, peer.port, timeout=10)
    smtp.starttls(context=ssl.create_default_context(cafile=ca_file))
    smtp.ehlo()
    return smtp


def message(sender) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, "someone@example.net", "Hello over XOAUTH2"
    mail.set_content("Sent with a bearer token.")
    return mail


def test_xoauth2_accepts_a_good_token_and_records_the_mail(server, xoauth2_peer, test_ca_file):  # noqa: F811
    peer = xoauth2_peer(server)
    _, token = sign_in(server, test_ca_file)
    with smtp_connect(peer, test_ca_file) as smtp:
        assert smtp.esmtp_features["auth"].split() == ["XOAUTH2"]
        answer, challenges = xoauth2(USER, token["access_token"])
        assert smtp.auth("XOAUTH2", answer)[0] == 235 and challenges == []
        smtp.send_message(message(USER))
    assert peer.kind == "xoauth2" and len(peer.messages) == 1
    assert peer.messages[0].user == USER and peer.messages[0].message["Subject"] == "Hello over XOAUTH2"
    assert peer.messages[0].token["client_id"] == CLIENT_ID
    assert peer.auth_attempts == [{"user": USER, "accepted": True, "reason": None}]


def test_xoauth2_without_auth_or_tls_is_refused(server, xoauth2_peer, test_ca_file):  # noqa: F811
    peer = xoauth2_peer(server)
    with smtplib.SMTP(peer.host, peer.port, timeout=10) as smtp:
        assert smtp.mail("x@example.test")[0] == 530  # STARTTLS first
    with smtp_connect(peer, test_ca_file) as smtp:
        assert smtp.mail("x@example.test")[0] == 530  # then AUTH


@pytest.mark.parametrize("flavour, reply", [("microsoft", b"5.7.3 Authentication unsuccessful"),
                                            ("google", b"5.7.8 Username and Password not accepted.")])
@pytest.mark.parametrize("problem", ["revoked", "wrong_user", "expired"])
def test_xoauth2_refuses_bad_tokens(server, xoauth2_peer, test_ca_file, flavour, reply, problem):  # noqa: F811
    scope = SMTP_SCOPE if flavour == "microsoft" else GMAIL_SCOPE
    peer = xoauth2_peer(server, flavour=flavour)
    _, token = sign_in(server, test_ca_file, scope=scope)
    user = OTHER_USER if problem == "wrong_user" else USER
    if problem == "revoked":
        server.revoke_grant(USER)
    if problem == "expired":
        server.expire_access_tokens()
    with smtp_connect(peer, test_ca_file) as smtp:
        answer, challenges = xoauth2(user, token["access_token"])
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.auth("XOAUTH2", answer)
    assert refused.value.smtp_code == 535 and refused.value.smtp_error == reply
    if flavour == "google":
        assert [json.loads(c) for c in challenges] == [
            {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}]
    else:
        assert challenges == []
    assert peer.messages == [] and peer.auth_attempts[0]["accepted"] is False


def test_xoauth2_checks_the_scope(server, xoauth2_peer, test_ca_file):  # noqa: F811
    peer = xoauth2_peer(server)
    _, token = sign_in(server, test_ca_file, scope="https://outlook.office.com/EWS.AccessAsUser.All offline_access")
    with smtp_connect(peer, test_ca_file) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.auth("XOAUTH2", xoauth2(USER, token["access_token"])[0])
    assert "scope" in peer.auth_attempts[0]["reason"]


def test_xoauth2_initial_response_after_an_empty_challenge(server, xoauth2_peer, test_ca_file):  # noqa: F811
    peer = xoauth2_peer(server)
    _, token = sign_in(server, test_ca_file)
    initial = f"user={USER}\x01auth=Bearer {token['access_token']}\x01\x01"
    with smtp_connect(peer, test_ca_file) as smtp:
        assert smtp.auth("XOAUTH2", lambda challenge=None: initial, initial_response_ok=False)[0] == 235


def test_xoauth2_app_only_token(server, xoauth2_peer, test_ca_file):  # noqa: F811
    server.grant_admin_consent(CLIENT_ID)
    server.register_client("no-roles", "s", [REDIRECT])
    server.grant_admin_consent("no-roles")
    peer = xoauth2_peer(server)
    peer.grant_full_access(CLIENT_ID, "shared@example.test")
    peer.grant_full_access("no-roles", "shared@example.test")
    exchange = app_token(server, test_ca_file, scope=EXCHANGE_DEFAULT).json()["access_token"]
    graph = app_token(server, test_ca_file, scope=GRAPH_DEFAULT).json()["access_token"]
    no_role = app_token(server, test_ca_file, scope=EXCHANGE_DEFAULT, client=("no-roles", "s")).json()["access_token"]
    with smtp_connect(peer, test_ca_file) as smtp:
        assert smtp.auth("XOAUTH2", xoauth2("shared@example.test", exchange)[0])[0] == 235
        smtp.send_message(message("shared@example.test"))
    for token in (graph, no_role):
        with smtp_connect(peer, test_ca_file) as smtp, pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.auth("XOAUTH2", xoauth2("shared@example.test", token)[0])
    assert peer.messages[0].user == "shared@example.test"
    assert [a["accepted"] for a in peer.auth_attempts] == [True, False, False]


def test_xoauth2_google_service_account(server, service_account_key, xoauth2_peer, test_ca_file):  # noqa: F811
    key_file = service_account_key(server)
    peer = xoauth2_peer(server, flavour="google")
    response = jwt_bearer(key_file, test_ca_file, assertion(key_file))
    with smtp_connect(peer, test_ca_file) as smtp:
        assert smtp.auth("XOAUTH2", xoauth2(SA_SUBJECT, response.json()["access_token"])[0])[0] == 235
