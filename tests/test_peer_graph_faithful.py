"""The Graph peer holds what Microsoft Graph holds (tests/peers/graph.py cites each): its cloud's
audience, User.Read for one's own profile, Exchange's Send As / Send on Behalf / FullAccess model
(ErrorSendAsDenied), an app token without permissions, and the MIME form (Bcc, Sent Items)."""
import base64
from email.message import EmailMessage

import pytest

from .test_peer_graph_gmail import (GRAPH_APP_ID, SENDER, SHARED, DictVerifier, call, claims,  # noqa: F401
                                    graph_error, message_json)

BOSS = "boss@example.test"
USERS = {SENDER: {"displayName": "Sender"},
         SHARED: {"displayName": "Shared", "send_as": [SENDER]},
         BOSS: {"displayName": "Boss", "send_on_behalf": [SENDER]},
         "locked@example.test": {"full_access": [SENDER]}}
TOKENS = {
    "send": claims(SENDER, "Mail.Send"),
    "shared": claims(SENDER, "Mail.Send.Shared"),
    "send.me": claims(SENDER, "Mail.Send User.Read"),
    "app": {**claims("app-1", roles=["Mail.Send"], client_id="app-1"), "grant_type": "client_credentials"},
    "app.unconsented": {**claims("app-1", scope="https://graph.microsoft.com/.default", client_id="app-1"),
                        "grant_type": "client_credentials"},
    "us": claims(SENDER, "Mail.Send User.Read", aud="https://graph.microsoft.us"),
    "no.aud": claims(SENDER, "Mail.Send User.Read", aud=None),
    "exchange": claims(SENDER, "Mail.Send User.Read", aud="https://outlook.office365.com"),
    "global": claims(SENDER, "Mail.Send User.Read", aud="https://graph.microsoft.com"),
}


@pytest.fixture
def graph(graph_peer):
    return graph_peer(DictVerifier(TOKENS), users=USERS)


def mime(sender: str, bcc: str = "") -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "to@example.org"
    if bcc:
        message["Bcc"] = bcc
    message["Subject"] = "Hello"
    message["X-Custom"] = "kept"
    message.set_content("Hi")
    return base64.b64encode(message.as_bytes())


def send_mime(graph, call, token, mailbox=SENDER, sender=SENDER, bcc=""):  # noqa: F811
    return call(graph, "POST", f"/v1.0/users/{mailbox}/sendMail", token, data=mime(sender, bcc),
                headers={"Content-Type": "text/plain"})


@pytest.mark.parametrize("token, message", [
    ("us", "Invalid audience."), ("no.aud", "Invalid audience."), ("exchange", "Invalid audience.")])
def test_a_token_for_another_cloud_or_service_is_refused(graph, call, token, message):  # noqa: F811
    graph_error(call(graph, "GET", "/v1.0/me", token), 401, "InvalidAuthenticationToken", message)


def test_each_cloud_takes_its_own_graph_tokens(graph_peer, call):  # noqa: F811
    us = graph_peer(DictVerifier(TOKENS), users=USERS, cloud="gcc_high")
    assert call(us, "GET", "/v1.0/me", "us").status_code == 200
    graph_error(call(us, "GET", "/v1.0/me", "global"), 401, "InvalidAuthenticationToken", "Invalid audience.")
    assert call(us, "GET", "/v1.0/me", "send.me").status_code == 200  # Graph's application ID: any cloud's


def test_an_app_token_without_roles_is_refused_as_graph_does(graph, call):  # noqa: F811
    response = call(graph, "POST", f"/v1.0/users/{SENDER}/sendMail", "app.unconsented", json=message_json())
    graph_error(response, 401, "AccessDenied", "Either scp or roles claim need to be present in the token.")


def test_reading_ones_own_profile_needs_user_read(graph, call):  # noqa: F811
    graph_error(call(graph, "GET", "/v1.0/me", "send"), 403, "Authorization_RequestDenied")
    assert call(graph, "GET", "/v1.0/me", "send.me").json()["userPrincipalName"] == SENDER


@pytest.mark.parametrize("token, mailbox, sender, status, code", [
    ("send", SENDER, SENDER, 202, None),
    ("send", SENDER, SHARED, 202, None),                     # Send As on the shared mailbox
    ("send", SENDER, "stranger@example.org", 403, "ErrorSendAsDenied"),
    ("send", SENDER, "locked@example.test", 403, "ErrorSendAsDenied"),  # FullAccess is not Send As
    ("shared", SHARED, SHARED, 202, None),                   # Mail.Send.Shared and Send As
    ("send", SHARED, SHARED, 403, "ErrorAccessDenied"),      # Mail.Send alone: one's own mailbox only
    ("shared", "locked@example.test", SENDER, 202, None),   # FullAccess lets one send from it, as oneself
    ("app", SHARED, SHARED, 202, None),                      # app-only acts as the mailbox in the URL
    ("app", SHARED, BOSS, 403, "ErrorSendAsDenied"),
])
def test_the_mailbox_permission_model(graph, call, token, mailbox, sender, status, code):  # noqa: F811
    response = send_mime(graph, call, token, mailbox, sender)
    if status == 202:
        assert response.status_code == 202, response.text
        assert graph.sent[-1].mime["From"] == sender
    else:
        graph_error(response, status, code)
        assert graph.sent == []


def test_send_on_behalf_sets_the_sender(graph, call):  # noqa: F811
    assert send_mime(graph, call, "send", sender=BOSS).status_code == 202
    [sent] = graph.sent
    assert (sent.mime["From"], sent.sender) == (BOSS, SENDER)


def test_send_as_denied_is_worded_as_graph_words_it(graph, call):  # noqa: F811
    error = graph_error(send_mime(graph, call, "send", sender="stranger@example.org"), 403, "ErrorSendAsDenied")
    assert error["message"] == ("The user account which was used to submit this request does not have the right to "
                                "send mail on behalf of the specified sending account., Cannot submit message.")


def test_a_json_from_is_checked_the_same_way(graph, call):  # noqa: F811
    body = message_json(**{"from": {"emailAddress": {"address": "stranger@example.org"}}})
    graph_error(call(graph, "POST", "/v1.0/me/sendMail", "send", json=body), 403, "ErrorSendAsDenied")


def test_mime_bcc_recipients_get_it_and_a_copy_is_always_saved(graph, call):  # noqa: F811
    assert send_mime(graph, call, "send", bcc="hidden@example.org").status_code == 202
    [sent] = graph.sent
    assert sent.recipients == ["to@example.org", "hidden@example.org"]
    assert sent.save_to_sent_items is True and sent.mime["X-Custom"] == "kept"
