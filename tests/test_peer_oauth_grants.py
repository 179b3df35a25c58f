"""Self-tests of the OAuth peer's switches for consent with provider Other: served over plain
HTTP on this machine, granting less than asked (RFC 6749 3.3 and 6), and the RFC 9207
metadata following what the server really sends."""
import requests
from authlib.integrations.requests_client import OAuth2Session

USER, PASSWORD = "alice@example.test", "alice-Pass1"
CLIENT_ID, SECRET = "mailroom-app", "app-secret-value"
REDIRECT = "http://127.0.0.1:9/oauth/callback"
SCOPE = "smtp openid offline_access"


def consent(server, scope=SCOPE) -> dict:
    """The whole code flow with PKCE as a confidential client; returns the token response."""
    client = OAuth2Session(CLIENT_ID, SECRET, scope=scope, redirect_uri=REDIRECT, code_challenge_method="S256",
                           token_endpoint_auth_method="client_secret_basic")
    client.trust_env = False
    verifier = "v" * 64
    uri, _state = client.create_authorization_url(server.authorize_url, code_verifier=verifier)
    answer = requests.post(uri, data={"username": USER, "password": PASSWORD, "action": "approve"},
                           allow_redirects=False)
    assert answer.status_code == 302, answer.text
    return client.fetch_token(server.token_url, authorization_response=answer.headers["Location"],
                              code_verifier=verifier)


def refresh(server, refresh_token, scope=None) -> requests.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scope is not None:
        form["scope"] = scope
    return requests.post(server.token_url, data=form, auth=(CLIENT_ID, SECRET))


def test_the_http_peer_serves_the_whole_flow_without_tls(http_oauth_server):
    server = http_oauth_server
    server.add_user(USER, PASSWORD)
    server.register_client(CLIENT_ID, SECRET, [REDIRECT])
    assert server.issuer.startswith("http://127.0.0.1:") and server.token_url == f"{server.issuer}/token"
    assert requests.get(server.metadata_url).json()["issuer"] == server.issuer
    token = consent(server)
    assert server.introspect(token["access_token"])["username"] == USER


def test_a_server_may_grant_less_than_asked_and_refuses_a_refresh_for_more(http_oauth_server):
    server = http_oauth_server
    server.add_user(USER, PASSWORD)
    server.register_client(CLIENT_ID, SECRET, [REDIRECT])
    server.withheld_scopes = {"offline_access"}
    token = consent(server)
    assert token["scope"] == "smtp openid"  # RFC 6749 3.3: the issued scope is named when it differs
    assert token["refresh_token"]  # offline access was asked for: a refresh token all the same
    assert server.introspect(token["access_token"])["scope"] == "smtp openid"

    asked_again = refresh(server, token["refresh_token"], SCOPE)
    assert asked_again.status_code == 400 and asked_again.json()["error"] == "invalid_scope"
    assert "exceeds the scope granted" in asked_again.json()["error_description"]
    narrower = refresh(server, token["refresh_token"], "smtp")
    assert narrower.status_code == 200 and narrower.json()["scope"] == "smtp"
    as_granted = refresh(server, narrower.json()["refresh_token"])  # RFC 6749 6: omitted, as granted
    assert as_granted.status_code == 200 and as_granted.json()["scope"] == "smtp openid"


def test_without_withheld_scopes_the_openid_scopes_may_always_be_asked_again(oauth_server, test_ca_file):
    oauth_server.add_user(USER, PASSWORD)
    oauth_server.register_client(CLIENT_ID, SECRET, [REDIRECT])
    client = OAuth2Session(CLIENT_ID, SECRET, scope="smtp offline_access", redirect_uri=REDIRECT,
                           code_challenge_method="S256")
    client.verify, client.trust_env = test_ca_file, False
    uri, _state = client.create_authorization_url(oauth_server.authorize_url, code_verifier="w" * 64)
    answer = requests.post(uri, data={"username": USER, "password": PASSWORD, "action": "approve"},
                           allow_redirects=False, verify=test_ca_file)
    token = client.fetch_token(oauth_server.token_url, authorization_response=answer.headers["Location"],
                               code_verifier="w" * 64)
    again = requests.post(oauth_server.token_url, verify=test_ca_file, auth=(CLIENT_ID, SECRET), data={
        "grant_type": "refresh_token", "refresh_token": token["refresh_token"], "scope": "smtp offline_access openid"})
    assert again.status_code == 200, again.text  # as Microsoft: OpenID scopes need no grant of their own


def test_the_metadata_says_iss_only_while_the_server_sends_it(http_oauth_server):
    assert requests.get(http_oauth_server.metadata_url).json()["authorization_response_iss_parameter_supported"]
    http_oauth_server.issue_iss = False
    assert not requests.get(http_oauth_server.metadata_url).json()["authorization_response_iss_parameter_supported"]
