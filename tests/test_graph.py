"""Microsoft Graph as a protocol, against a Graph endpoint on loopback (tests/peers/graph.py) that
checks each bearer token with the real authorization server (tests/peers/oauth.py) and holds
Exchange's permission model; mail goes in Graph's MIME form, the stored bytes as they are."""
import re
import time
from email.message import EmailMessage

import pytest

from webapp import checks, db
from webapp.mail.envelope import Envelope
from webapp.mail.options import CustomHeader, Importance, MessageOptions, apply
from webapp.mail.report import DeliveryError
from webapp.mail.transport import open_connection, send_message
from webapp.models import MailServer, Portal

from .test_oauth import (CLIENT_ID, CLIENT_SECRET, MAILBOX, OWNER_PASSWORD, REDIRECT_URI, TENANT, at_the_provider,
                         authorize, back_at_mailroom, credential, payload, save, to_the_provider)

GRAPH_SCOPE = "Mail.Send offline_access"  # the default
GRAPH_READ_SCOPE = "Mail.Send User.Read offline_access"
SERVER_HEADERS = b"Importance: High\r\nX-Portal: help-desk\r\nX-Mailer-Check: yes\r\n"


@pytest.fixture
def authority(oauth_server):
    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI], app_roles={"Mail.Send"})
    return oauth_server


@pytest.fixture
def graph(authority, graph_peer):
    return graph_peer(authority, users={
        MAILBOX: {"id": "5f0c8a2e-7b1d-4c3e-9a6f-2d8e1b4c7a90", "displayName": "Sender"},
        "shared@example.test": {"id": "0aa1", "displayName": "Shared"},
        "desk@example.test": {"displayName": "Desk", "send_as": [MAILBOX]}})


def graph_form(authority, graph, **overrides) -> dict:
    form = {
        "description": "Graph mailer", "protocol": "graph", "graph_endpoint": graph.url, "importance": "high",
        "headers-0-name": "X-Portal", "headers-0-value": "help-desk", "headers-1-name": "X-Mailer-Check",
        "headers-1-value": "yes", "timeout": "10",
        "auth_type": "oauth", "provider": "microsoft", "cloud": "global", "tenant": TENANT, "flow": "delegated",
        "username": MAILBOX, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "authorize_url": f"{authority.issuer}/{TENANT}/oauth2/v2.0/authorize",
        "token_url": f"{authority.issuer}/{TENANT}/oauth2/v2.0/token", "scope": GRAPH_READ_SCOPE,
        "from_address": MAILBOX, "sender_name": "Help Desk", "reply_to": "support@example.test",
        "max_connections": "5", "enabled": "y", "_shown": ["graph", "oauth", "microsoft"],
    }
    return {**form, **overrides}


def send(app, server_id: int, envelope: Envelope):
    """The transport, with the saved settings and message options, as the delivery queue calls it."""
    with app.app_context():
        server = db.session().get(MailServer, server_id)
        config = checks.config_for(db.session().get(Portal, server.portal_id), server)
        return send_message(config, envelope)


def rich_envelope(sender=f"Help Desk <{MAILBOX}>", size: int = 0) -> Envelope:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "jane@example.org"
    message["Bcc"] = "hidden@example.org"
    message["Subject"] = "Invoice ✓"
    message["X-Portal"] = "the message's own"
    message.set_content("Plain text")
    message.add_alternative("<p>An <b>HTML</b> part</p>", subtype="html")
    message.add_attachment(b"%PDF-1.4 " + b"x" * size, maintype="application", subtype="pdf", filename="invoice.pdf")
    return Envelope.of(message)


def test_graph_offers_oauth_only_and_fills_in_its_defaults(admin):
    form = admin.post("/p/help/servers/new", {"protocol": "graph", "auth_type": "basic", "_action": "refresh"},
                      htmx=True).text
    assert '<select id="auth_type" name="auth_type"' in form
    assert re.search(r'<select id="auth_type"[^>]*><option value="oauth" selected>OAuth 2.0</option></select>', form)
    assert 'name="password"' not in form and 'name="host"' not in form and 'name="save_to_sent"' not in form
    assert 'value="https://graph.microsoft.com"' in form and f'value="{GRAPH_SCOPE}"' in form
    china = admin.post("/p/help/servers/new/section/endpoints",
                       {"protocol": "graph", "auth_type": "oauth", "provider": "microsoft", "cloud": "china",
                        "flow": "app", "graph_endpoint": "https://graph.microsoft.com",
                        "_shown": ["graph", "oauth", "microsoft"]}, htmx=True, headers={"HX-Trigger-Name": "cloud"})
    assert 'value="https://microsoftgraph.chinacloudapi.cn/.default"' in china.text
    assert '<fieldset id="section-graph" hx-swap-oob="true">' in china.text
    assert 'value="https://microsoftgraph.chinacloudapi.cn"' in china.text
    us = admin.post("/p/help/servers/new/section/endpoints",
                    {"protocol": "graph", "auth_type": "oauth", "provider": "microsoft", "cloud": "gcc_high",
                     "flow": "delegated", "graph_endpoint": "https://graph.microsoft.com", "scope": GRAPH_SCOPE,
                     "_shown": ["graph", "oauth", "microsoft"]}, htmx=True, headers={"HX-Trigger-Name": "cloud"})
    assert 'value="https://graph.microsoft.us/Mail.Send offline_access"' in us.text


def test_delegated_consent_validate_and_a_sample_mail_in_mime(app, admin, staff, authority, graph, test_ca_file):
    server = save(app, admin, graph_form(authority, graph))
    assert authorize(admin, server, test_ca_file).status_code == 200
    report = staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report and "Microsoft Graph accepts the token and knows the mailbox." in report
    assert f"the mailbox {MAILBOX} exists" in report and "“From”" not in report
    assert f"C: GET {graph.url}/v1.0/users/{MAILBOX} (read the mailbox)" in report
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent and "202 Accepted" in sent
    [mail] = graph.sent
    assert mail.json is None and mail.mailbox == MAILBOX and mail.app_only is False
    assert mail.save_to_sent_items is True  # Graph saves every MIME message
    assert mail.raw.startswith(SERVER_HEADERS)  # the server's Importance and headers, in front of the stored bytes
    assert mail.properties["importance"] == "high"  # Exchange reads the Importance header
    assert (mail.mime["From"], mail.mime["Reply-To"]) == (f"Help Desk <{MAILBOX}>", "support@example.test")
    assert mail.mime["To"] == "jane@example.org" and "Graph mailer" in mail.mime["Subject"]
    assert mail.recipients == ["jane@example.org"]
    token = payload(app, server.id)["access_token"]
    assert token not in report and token not in sent


def test_the_stored_bytes_go_out_html_attachments_bcc_and_all(app, admin, authority, graph, test_ca_file):
    server = save(app, admin, graph_form(authority, graph))
    authorize(admin, server, test_ca_file)
    envelope = rich_envelope()
    first, second = send(app, server.id, envelope), send(app, server.id, envelope)
    assert first.reply == second.reply == "202 Accepted"
    expected = apply(envelope.raw, MessageOptions(importance=Importance.HIGH, headers=(
        CustomHeader("X-Portal", "help-desk"), CustomHeader("X-Mailer-Check", "yes"))))
    assert graph.sent[0].raw == graph.sent[1].raw == expected  # the same bytes on every attempt
    assert expected.endswith(envelope.raw) and expected.startswith(b"Importance: High\r\nX-Mailer-Check: yes\r\n")
    mail = graph.sent[0].mime
    assert mail.get_all("X-Portal") == ["the message's own"]  # the message's header wins over the server's
    assert mail.get_body(("html",)).get_content().strip() == "<p>An <b>HTML</b> part</p>"
    assert [part.get_filename() for part in mail.iter_attachments()] == ["invoice.pdf"]
    assert graph.sent[0].recipients == ["jane@example.org", "hidden@example.org"]
    assert [r.address for r in first.recipients] == ["jane@example.org", "hidden@example.org"]


def test_consecutive_messages_share_one_kept_connection(app, admin, authority, graph, test_ca_file):
    """As SMTP keeps its session, a worker's messages to one Graph server go over one HTTPS
    connection (keep-alive), each under its own deadline; after a failed message the next one
    starts on a new connection."""
    server = save(app, admin, graph_form(authority, graph, timeout="2"))
    authorize(admin, server, test_ca_file)
    with app.app_context():
        config = checks.config_for(db.session().get(Portal, server.portal_id), db.session().get(MailServer, server.id))
        connection = open_connection(config)
        try:
            assert connection.send(rich_envelope()).reply == "202 Accepted"
            assert connection.send(rich_envelope()).reply == "202 Accepted"
            time.sleep(2.2)  # the first message's deadline is over: the kept connection serves the next one's
            assert connection.send(rich_envelope()).reply == "202 Accepted"
            graph.throttle(1, retry_after=3)
            with pytest.raises(DeliveryError):
                connection.send(rich_envelope())
            assert connection.send(rich_envelope()).reply == "202 Accepted"
        finally:
            connection.close()
    sends = [r for r in graph.requests if r.path.endswith("/sendMail")]
    assert [r.status for r in sends] == [202, 202, 202, 429, 202]
    assert len({r.client for r in sends[:2]}) == 1  # one connection for consecutive messages
    assert sends[4].client != sends[3].client  # a new one after the failure
    assert len(graph.sent) == 4


def test_a_message_graph_cannot_carry_is_refused_before_sending(app, admin, authority, graph, test_ca_file):
    server = save(app, admin, graph_form(authority, graph))
    authorize(admin, server, test_ca_file)
    with pytest.raises(DeliveryError) as refused:
        send(app, server.id, rich_envelope(size=3_200_000))
    assert refused.value.step == "Message" and refused.value.temporary is False
    assert "Microsoft Graph takes at most 4 MB in one request" in str(refused.value)
    assert [r.path for r in graph.requests if r.path.endswith("sendMail")] == []


def test_a_from_the_mailbox_may_not_send_as(app, admin, authority, graph, test_ca_file):
    server = save(app, admin, graph_form(authority, graph, from_address="noreply@example.org"))
    authorize(admin, server, test_ca_file)
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report
    assert (f"mail goes out From noreply@example.org: Graph sends it only if {MAILBOX} has “Send As” or “Send on "
            "Behalf” permission on noreply@example.org") in report
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.org"}, htmx=True).text
    assert f"{MAILBOX} may not send as noreply@example.org (403 ErrorSendAsDenied)" in sent
    assert f"gives {MAILBOX} “Send As” (or “Send on Behalf”) permission on noreply@example.org" in sent
    with pytest.raises(DeliveryError) as held:
        send(app, server.id, rich_envelope(sender="noreply@example.org"))
    assert held.value.credentials is True and held.value.code == 403


def test_the_configured_from_goes_out_when_the_mailbox_may_send_as_it(app, admin, authority, graph, test_ca_file):
    server = save(app, admin, graph_form(authority, graph, from_address="desk@example.test", sender_name=""))
    authorize(admin, server, test_ca_file)
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent
    assert graph.sent[0].mime["From"] == "desk@example.test" and graph.sent[0].mailbox == MAILBOX


def test_app_only_before_and_after_admin_consent(app, admin, authority, graph, test_ca_file):
    form = graph_form(authority, graph, flow="app", scope="https://graph.microsoft.com/.default", authorize_url="")
    server = save(app, admin, form)
    before = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "Validation failed at “Mailbox”:" in before
    assert "Microsoft Graph refused the app&#39;s token: it carries no permission, so nobody has granted admin " \
           "consent yet (401 AccessDenied)" in before
    assert "a tenant administrator grants admin consent" in before

    start = to_the_provider(admin, f"/p/help/servers/{server.id}/oauth/admin-consent")
    back_at_mailroom(admin, at_the_provider(start, test_ca_file, action="accept"))
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report
    assert "the token may not read the mailbox&#39;s profile: that needs the application permission User.Read.All" \
           in report
    assert admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.org"},
                      htmx=True).status_code == 200
    [mail] = graph.sent
    assert mail.app_only and mail.client_id == CLIENT_ID
    assert credential(app, server.id).consented_by.startswith("a tenant administrator")


def test_validate_of_the_form_is_remembered_only_with_the_saved_oauth_settings(app, admin, authority, graph,
                                                                                 test_ca_file):
    form = graph_form(authority, graph, flow="app", scope="https://graph.microsoft.com/.default", authorize_url="")
    server = save(app, admin, form)
    start = to_the_provider(admin, f"/p/help/servers/{server.id}/oauth/admin-consent")
    back_at_mailroom(admin, at_the_provider(start, test_ca_file, action="accept"))
    saved = {**form, "client_secret": "", "version": str(server.version)}
    assert "All checks passed." in admin.post(f"/p/help/servers/{server.id}/validate", saved, htmx=True).text
    with app.app_context():
        remembered = db.session().get(MailServer, server.id).last_check_at
    assert remembered is not None

    other_scope = {**saved, "scope": "https://graph.microsoft.com/Mail.Send"}  # the token endpoint refuses it
    report = admin.post(f"/p/help/servers/{server.id}/validate", other_scope, htmx=True).text
    assert "Validation failed at “Token”" in report and "/.default" in report  # a new token was asked for
    with app.app_context():
        row = db.session().get(MailServer, server.id)
        assert (row.last_check_at, row.last_check_ok, row.last_check_summary) == (remembered, True,
                                                                                   "All checks passed")


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
    assert f"the token may not send mail from shared@example.test (403 ErrorAccessDenied)" not in denied
    assert f"{MAILBOX} may not send from shared@example.test (403 ErrorAccessDenied)" in denied
    assert "Mail.Send.Shared" in denied

    mine = graph_form(authority, graph, client_secret="", version="2")
    assert admin.post(f"/p/help/servers/{server.id}/edit", mine).status_code == 303
    graph.throttle(1, retry_after=7)
    throttled = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.org"}, htmx=True).text
    assert "Microsoft Graph is throttling this app (429) for 7 s" in throttled
    assert "try again after 7 s" in throttled


def test_the_default_scope_cannot_read_the_mailbox_and_says_which_permission_would(app, admin, authority, graph,
                                                                                   test_ca_file):
    server = save(app, admin, graph_form(authority, graph, scope=GRAPH_SCOPE))
    authorize(admin, server, test_ca_file)
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report
    assert "that needs the delegated permission User.Read in the scope" in report


def test_a_token_for_another_cloud_is_said_as_such(app, admin, oauth_server, graph_peer, test_ca_file):
    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI], app_roles={"Mail.Send"})
    oauth_server.grant_admin_consent(CLIENT_ID)
    us_graph = graph_peer(oauth_server, users={MAILBOX: {}}, cloud="gcc_high")
    form = graph_form(oauth_server, us_graph, flow="app", scope="https://graph.microsoft.com/.default",
                      authorize_url="")
    report = admin.post("/p/help/servers/new/validate", form, htmx=True).text
    assert "Microsoft Graph refused the token: it is for another service or cloud (401 " \
           "InvalidAuthenticationToken)" in report
    assert "the Graph endpoint must be the Graph of the chosen Cloud" in report


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
