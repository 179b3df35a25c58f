"""The EWS peer holds Exchange's mailbox permissions (tests/peers/ews.py cites them): an account or a delegated
token acts only on its own mailbox or one it has Full Access to; an application access policy limits an app;
an app token without any role (Entra's before admin consent) is refused with Exchange's diagnostics."""
import pytest
import requests
from exchangelib.errors import ErrorAccessDenied

from .test_peer_ews import (SENDER, DictVerifier, app_account, basic_account, claims, delegated_account,  # noqa: F401
                             note, trusted)

BOSS = "boss@example.test"
MAILBOXES = {SENDER: {"name": "Sender", "access": ["EXAMPLE\\mailer", "user-1"]}, BOSS: {"name": "Boss"}}


@pytest.fixture
def peer(ews_peer):
    verifier = DictVerifier({
        "user-1": claims(scope="EWS.AccessAsUser.All"),
        "boss": claims(sub=BOSS, scope="EWS.AccessAsUser.All"),
        "app": claims(sub="app-1", roles=["full_access_as_app"], grant_type="client_credentials"),
        "app.unconsented": claims(sub="app-1", scope="https://outlook.office365.com/.default",
                                  grant_type="client_credentials"),
    })
    return ews_peer(mailboxes=MAILBOXES, verifier=verifier)


def test_an_account_acts_on_its_own_mailbox_or_one_with_full_access(peer, trusted):
    note(basic_account(peer)).send_and_save()  # EXAMPLE\mailer has Full Access to sender@
    with pytest.raises(ErrorAccessDenied, match="Access is denied"):
        note(basic_account(peer, address=BOSS)).send_and_save()
    assert [s.mailbox for s in peer.sent] == [SENDER]


def test_a_delegated_token_acts_on_its_users_mailbox_only(peer, trusted):
    note(delegated_account(peer, "user-1")).send_and_save()
    with pytest.raises(ErrorAccessDenied):
        note(delegated_account(peer, "boss")).send_and_save()  # boss's token, sender's mailbox: no access
    assert len(peer.sent) == 1


def test_an_application_access_policy_limits_the_app(peer, trusted):
    note(app_account(peer, "app", address=BOSS)).send(save_copy=False)
    peer.app_mailboxes = {"app-1": {SENDER}}
    with pytest.raises(ErrorAccessDenied):
        note(app_account(peer, "app", address=BOSS)).send(save_copy=False)
    note(app_account(peer, "app")).send(save_copy=False)
    assert [s.mailbox for s in peer.sent] == [BOSS, SENDER]


def test_an_app_token_without_roles_is_refused_with_exchanges_reason(peer, trusted):
    envelope = ('<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
                '<m:ResolveNames xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"/>'
                '</s:Body></s:Envelope>')
    response = requests.post(peer.url, data=envelope, verify=trusted, timeout=5,
                             headers={"Authorization": "Bearer app.unconsented", "Content-Type": "text/xml"})
    assert response.status_code == 401
    assert response.headers["x-ms-diagnostics"].startswith(
        '2000008;reason="The token contains no permissions, or permissions can not be understood."')
