"""The OAuth and XOAUTH2 peers behave as Entra ID, Google and Exchange Online do where a textbook
server would not (each case cites its documentation in tests/peers/oauth.py and xoauth2.py)."""
import smtplib

import pytest
import requests

from tests.peers.oauth import GRAPH_APP_ID

from .test_peer_oauth import (CLIENT_ID, PASSWORD, REDIRECT, SECRET, USER, app_token, assert_error, assertion,
                              jwt_bearer, post_token, query, session, sign_in, smtp_connect, start_authorization,
                              tenant_url, xoauth2)

US_GRAPH_DEFAULT = "https://graph.microsoft.us/.default"
DOD_EXCHANGE_DEFAULT = "https://outlook-dod.office365.us/.default"
GCC_SMTP = "https://outlook.office365.us/SMTP.Send"


@pytest.fixture
def server(oauth_server):
    oauth_server.add_user(USER, PASSWORD)
    oauth_server.register_client(CLIENT_ID, SECRET, [REDIRECT], app_roles={"SMTP.SendAsApp", "Mail.Send"})
    oauth_server.grant_admin_consent(CLIENT_ID)
    return oauth_server


def test_a_scope_of_another_cloud_is_refused_at_the_token_endpoint(server, test_ca_file):
    refused = app_token(server, test_ca_file, scope=US_GRAPH_DEFAULT)
    assert_error(refused, 400, "invalid_resource", "AADSTS500011: The resource principal named "
                                                   "https://graph.microsoft.us was not found in the tenant")
    server.cloud = "gcc_high"
    assert_error(app_token(server, test_ca_file, scope="https://graph.microsoft.com/.default"), 400,
                 "invalid_resource", "AADSTS500011")
    for scope in (US_GRAPH_DEFAULT, DOD_EXCHANGE_DEFAULT):  # GCC High and DoD share login.microsoftonline.us
        assert app_token(server, test_ca_file, scope=scope).status_code == 200


def test_a_scope_of_another_cloud_is_refused_at_the_authorization_endpoint(server, test_ca_file):
    client = session(server, test_ca_file, scope=f"{GCC_SMTP} offline_access")
    uri, state, _ = start_authorization(client, tenant_url(server, "contoso.example", "authorize"))
    answer = query(requests.get(uri, verify=test_ca_file, allow_redirects=False).headers["Location"])
    assert answer["error"] == "invalid_resource" and answer["state"] == state
    assert answer["error_description"].startswith("AADSTS500011")
    server.cloud = "gcc_high"
    _, token = sign_in(server, test_ca_file, scope=f"{GCC_SMTP} offline_access", tenant="contoso.example")
    assert server.introspect(token["access_token"])["aud"] == "https://outlook.office365.us"


def test_a_bare_graph_scope_gives_a_token_for_graph_on_the_tenant_paths(server, test_ca_file):
    _, token = sign_in(server, test_ca_file, scope="Mail.Send offline_access", tenant="contoso.example")
    assert server.introspect(token["access_token"])["aud"] == GRAPH_APP_ID
    assert token["scope"] == "Mail.Send offline_access"  # Entra names the scope in a code or refresh answer
    _, other = sign_in(server, test_ca_file, scope="Mail.Send offline_access")  # another provider's server
    assert server.introspect(other["access_token"])["aud"] is None


def test_the_service_account_answer_names_no_scope(server, service_account_key, test_ca_file):
    key_file = service_account_key(server)
    answer = jwt_bearer(key_file, test_ca_file, assertion(key_file))
    assert answer.status_code == 200 and set(answer.json()) == {"access_token", "expires_in", "token_type"}


def test_a_client_that_may_use_only_http_basic(server, test_ca_file):
    server.register_client("basic-only", "b-secret", [REDIRECT], auth_methods=("client_secret_basic",))
    server.grant_admin_consent("basic-only")
    form = post_token(tenant_url(server, "contoso.example", "token"), test_ca_file, grant_type="client_credentials",
                      scope="https://graph.microsoft.com/.default", client_id="basic-only", client_secret="b-secret")
    assert_error(form, 401, "invalid_client")
    basic = app_token(server, test_ca_file, client=("basic-only", "b-secret"))
    assert basic.status_code == 200, basic.text


def test_a_declined_admin_consent_comes_back_as_permission_denied(server, test_ca_file):
    consent = f"{server.issuer}/contoso.example/adminconsent?" + requests.compat.urlencode(
        {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "state": "s1"})
    cancel = requests.post(consent, data={"action": "cancel"}, verify=test_ca_file, allow_redirects=False)
    assert query(cancel.headers["Location"]) == {"error": "permission_denied", "state": "s1",
                                                 "error_description": "The admin canceled the request"}


def test_xoauth2_app_only_needs_full_access_to_the_mailbox(server, xoauth2_peer, test_ca_file):
    peer = xoauth2_peer(server)
    token = app_token(server, test_ca_file, scope="https://outlook.office365.com/.default").json()["access_token"]
    with smtp_connect(peer, test_ca_file) as smtp, pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        smtp.auth("XOAUTH2", xoauth2("box@example.test", token)[0])
    assert refused.value.smtp_code == 535
    assert peer.auth_attempts[-1]["reason"] == f"the app {CLIENT_ID} has no FullAccess to box@example.test"
    peer.grant_full_access(CLIENT_ID, "box@example.test")
    with smtp_connect(peer, test_ca_file) as smtp:
        assert smtp.auth("XOAUTH2", xoauth2("box@example.test", token)[0])[0] == 235


def test_xoauth2_a_delegated_token_for_another_mailbox_needs_full_access(server, xoauth2_peer, test_ca_file):
    peer = xoauth2_peer(server)
    _, token = sign_in(server, test_ca_file)
    with smtp_connect(peer, test_ca_file) as smtp, pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.auth("XOAUTH2", xoauth2("shared@example.test", token["access_token"])[0])
    peer.grant_full_access(USER, "shared@example.test")
    with smtp_connect(peer, test_ca_file) as smtp:
        assert smtp.auth("XOAUTH2", xoauth2("shared@example.test", token["access_token"])[0])[0] == 235


def test_xoauth2_of_another_cloud_refuses_a_global_token(server, xoauth2_peer, test_ca_file):
    peer = xoauth2_peer(server, required_scope=GCC_SMTP)
    peer.grant_full_access(CLIENT_ID, USER)
    token = app_token(server, test_ca_file, scope="https://outlook.office365.com/.default").json()["access_token"]
    with smtp_connect(peer, test_ca_file) as smtp, pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.auth("XOAUTH2", xoauth2(USER, token)[0])
    assert "not https://outlook.office365.us" in peer.auth_attempts[-1]["reason"]
