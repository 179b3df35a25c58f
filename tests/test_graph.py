"""Microsoft Graph as a protocol, against a Graph endpoint on loopback (tests/peers/graph.py) that
checks each bearer token with the real authorization server (tests/peers/oauth.py)."""
import re

import pytest

from .test_oauth import (CLIENT_ID, CLIENT_SECRET, MAILBOX, OWNER_PASSWORD, REDIRECT_URI, TENANT, at_the_provider,
                         authorize, back_at_mailroom, credential, payload, save, to_the_provider)

GRAPH_SCOPE = "Mail.Send offline_access"


@pytest.fixture
def authority(oauth_server):
    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI], app_roles={"Mail.Send"})
    return oauth_server


@pytest.fixture
def graph(authority, graph_peer):
    return graph_peer(authority, users={MAILBOX: {"id": "5f0c8a2e-7b1d-4c3e-9a6f-2d8e1b4c7a90", "displayName": "Sender"},
                                        "shared@example.test": {"id": "0aa1", "displayName": "Shared"}})


def graph_form(authority, graph, **overrides) -> dict:
    form = {
        "description": "Graph mailer", "protocol": "graph", "graph_endpoint": graph.url, "importance": "high",
        "save_to_sent": "y", "headers": "X-Portal: help-desk\nX-Mailer-Check: yes", "timeout": "10",
        "auth_type": "oauth", "provider": "microsoft", "cloud": "global", "tenant": TENANT, "flow": "delegated",
        "username": MAILBOX, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "authorize_url": f"{authority.issuer}/{TENANT}/oauth2/v2.0/authorize",
        "token_url": f"{authority.issuer}/{TENANT}/oauth2/v2.0/token", "scope": GRAPH_SCOPE,
        "from_address": MAILBOX, "sender_name": "Help Desk", "reply_to": "support@example.test",
        "max_connections": "5", "enabled": "y", "_shown": ["graph", "oauth", "microsoft"],
    }
    return {**form, **overrides}


def test_graph_offers_oauth_only_and_fills_in_its_defaults(admin):
    form = admin.post("/p/help/servers/new", {"protocol": "graph", "auth_type": "basic", "_action": "refresh"},
                      htmx=True).text
    assert '<select id="auth_type" name="auth_type"' in form
    assert re.search(r'<select id="auth_type"[^>]*><option value="oauth" selected>OAuth 2.0</option></select>', form)
    assert 'name="password"' not in form and 'name="host"' not in form
    assert 'value="https://graph.microsoft.com"' in form and f'value="{GRAPH_SCOPE}"' in form
    china = admin.post("/p/help/servers/new/section/endpoints",
                       {"protocol": "graph", "auth_type": "oauth", "provider": "microsoft", "cloud": "china",
                        "flow": "app", "graph_endpoint": "https://graph.microsoft.com",
                        "_shown": ["graph", "oauth", "microsoft"]}, htmx=True, headers={"HX-Trigger-Name": "cloud"})
    assert 'value="https://microsoftgraph.chinacloudapi.cn/.default"' in china.text
    assert '<fieldset id="section-graph" hx-swap-oob="true">' in china.text
    assert 'value="https://microsoftgraph.chinacloudapi.cn"' in china.text


def test_delegated_consent_validate_and_a_sample_mail(app, admin, staff, authority, graph, test_ca_file):
    server = save(app, admin, graph_form(authority, graph))
    assert authorize(admin, server, test_ca_file).status_code == 200
    report = staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report and "Microsoft Graph accepts the token and knows the mailbox." in report
    assert f"the mailbox {MAILBOX} exists" in report
    assert f"C: GET {graph.url}/v1.0/users/{MAILBOX} (read the mailbox)" in report
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent and "202 Accepted" in sent
    [mail] = graph.sent
    assert mail.mailbox == MAILBOX and mail.save_to_sent_items is True and mail.app_only is False
    message = mail.json["message"]
    assert message["toRecipients"] == [{"emailAddress": {"address": "jane@example.org"}}]
    assert message["replyTo"] == [{"emailAddress": {"address": "support@example.test"}}]
    assert message["importance"] == "high" and "Graph mailer" in message["subject"]
    assert message["internetMessageHeaders"] == [{"name": "X-Portal", "value": "help-desk"},
                                                 {"name": "X-Mailer-Check", "value": "yes"}]
    assert message["from"] == {"emailAddress": {"address": MAILBOX, "name": "Help Desk"}}
    assert mail.mime["Subject"] == message["subject"]
    token = payload(app, server.id)["access_token"]
    assert token not in report and token not in sent


def test_app_only_with_admin_consent_sends_and_a_profile_it_may_not_read_is_a_warning(app, admin, authority, graph,
                                                                                     test_ca_file):
    form = graph_form(authority, graph, flow="app", scope="https://graph.microsoft.com/.default", authorize_url="")
    server = save(app, admin, form)
    start = to_the_provider(admin, f"/p/help/servers/{server.id}/oauth/admin-consent")
    back_at_mailroom(admin, at_the_provider(start, test_ca_file, action="accept"))
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report
    assert "the token may not read the mailbox&#39;s profile: that needs User.Read.All" in report
    assert admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.org"},
                      htmx=True).status_code == 200
    [mail] = graph.sent
    assert mail.app_only and mail.client_id == CLIENT_ID
    assert credential(app, server.id).consented_by.startswith("a tenant administrator")


def test_graph_errors_are_said_in_words(app, admin, authority, graph, test_ca_file):
    server = save(app, admin, graph_form(authority, graph, shared_mailbox="nobody@example.test"))
    authorize(admin, server, test_ca_file)
    missing = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "Validation failed at “Mailbox”:" in missing
    assert "Microsoft Graph knows no mailbox nobody@example.test (404 Request_ResourceNotFound)" in missing

    shared = graph_form(authority, graph, shared_mailbox="shared@example.test", client_secret="", version="1")
    assert admin.post(f"/p/help/servers/{server.id}/edit", shared).status_code == 303
    denied = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.org"}, htmx=True).text
    assert "The mail was not sent:" in denied
    assert "the app may not send as shared@example.test (403 ErrorAccessDenied)" in denied
    assert "Mail.Send.Shared" in denied

    mine = graph_form(authority, graph, client_secret="", version="2")
    assert admin.post(f"/p/help/servers/{server.id}/edit", mine).status_code == 303
    graph.throttle(1, retry_after=7)
    throttled = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.org"}, htmx=True).text
    assert "Microsoft Graph is throttling this app (429) for 7 s" in throttled
    assert "try again after 7 s" in throttled


@pytest.mark.parametrize("headers, error", [
    ("Portal: help", "its name starts with X-"),
    ("\n".join(f"X-H{n}: v" for n in range(6)), "at most 5 custom headers; there are 6"),
])
def test_custom_headers_graph_would_refuse_are_refused_beside_the_field(admin, authority, graph, headers, error):
    response = admin.post("/p/help/servers/new", graph_form(authority, graph, headers=headers))
    assert response.status_code == 422
    assert error in re.search(r'<small id="headers-help" class="error">([^<]*)</small>', response.text).group(1)


def test_a_delegated_token_without_mail_send_fails_validate_at_the_token(app, admin, authority, graph, test_ca_file):
    server = save(app, admin, graph_form(authority, graph, scope="User.Read offline_access"))
    assert authorize(admin, server, test_ca_file).status_code == 200
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "Validation failed at “Token”:" in report
    assert "the token may not send mail: it was granted only" in report and "User.Read" in report
    assert "add the delegated permission Mail.Send" in report
    assert not graph.requests


def test_history_words_a_graph_server_as_its_form_does(app, admin, authority, graph):
    save(app, admin, graph_form(authority, graph))
    history = admin.get("/p/help/history").text
    created = history[history.index("Added the server"):]
    assert '<span class="muted">Mailbox:</span>' in created and "Username:" not in created
    assert re.search(r"Flow:</span>\s*Delegated: the mailbox owner consents", created)
    assert "mechanism" not in created.lower()  # OAuth has none
