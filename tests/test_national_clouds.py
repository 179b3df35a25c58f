"""Microsoft's national clouds (GCC High, DoD, China): SMTP and EWS ask for their cloud's Exchange,
as Graph asks for its cloud's Graph; an authorization server of that cloud refuses the global one
(tests/peers/oauth.py: `cloud`), and so do its Exchange (XOAUTH2 and EWS peers)."""
import re

import pytest

from .test_ews import oauth_ews_form
from .test_oauth import (CLIENT_ID, CLIENT_SECRET, MAILBOX, OWNER_PASSWORD, REDIRECT_URI, TENANT, at_the_provider,
                         authorize, back_at_mailroom, oauth_form, save, to_the_provider)


def default_scope(admin, protocol: str, cloud: str, flow: str = "delegated") -> str:
    """The scope the form fills in when the admin chooses the cloud."""
    shown = {"smtp": ["oauth", "microsoft"], "ews": ["ews", "oauth", "microsoft"]}[protocol]
    swapped = admin.post("/p/help/servers/new/section/endpoints",
                         {"protocol": protocol, "auth_type": "oauth", "provider": "microsoft", "cloud": cloud,
                          "tenant": TENANT, "flow": flow, "scope": "", "_shown": shown},
                         htmx=True, headers={"HX-Trigger-Name": "cloud"}).text
    return re.search(r'<input type="text" id="scope" name="scope" value="([^"]*)"', swapped).group(1)


@pytest.mark.parametrize("protocol, flow, cloud, scope", [
    ("smtp", "delegated", "global", "https://outlook.office.com/SMTP.Send offline_access"),
    ("smtp", "delegated", "gcc_high", "https://outlook.office365.us/SMTP.Send offline_access"),
    ("smtp", "app", "dod", "https://outlook-dod.office365.us/.default"),
    ("ews", "delegated", "china", "https://partner.outlook.cn/EWS.AccessAsUser.All offline_access"),
    ("ews", "app", "gcc_high", "https://outlook.office365.us/.default"),
])
def test_smtp_and_ews_scopes_follow_the_cloud(admin, protocol, flow, cloud, scope):
    assert default_scope(admin, protocol, cloud, flow) == scope


@pytest.fixture
def gcc_high(oauth_server):
    oauth_server.cloud = "gcc_high"
    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI],
                                 app_roles={"SMTP.SendAsApp", "full_access_as_app"})
    return oauth_server


def test_smtp_in_gcc_high_consents_and_signs_in_with_its_exchange(app, admin, gcc_high, xoauth2_peer, test_ca_file):
    relay = xoauth2_peer(gcc_high, required_scope="https://outlook.office365.us/SMTP.Send")
    scope = default_scope(admin, "smtp", "gcc_high")
    server = save(app, admin, oauth_form(gcc_high, relay, cloud="gcc_high", scope=scope))
    assert authorize(admin, server, test_ca_file).status_code == 200  # the global scope: invalid_resource here
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report and f"signed in as {MAILBOX} with XOAUTH2" in report


def test_ews_app_only_in_dod_gets_a_token_its_exchange_takes(app, admin, gcc_high, ews_peer, test_ca_file):
    peer = ews_peer(mailboxes={MAILBOX: {"name": "Sender"}}, verifier=gcc_high)
    peer.audiences = {"https://outlook-dod.office365.us"}
    scope = default_scope(admin, "ews", "dod", flow="app")
    server = save(app, admin, oauth_ews_form(gcc_high, peer, cloud="dod", flow="app", scope=scope, authorize_url=""))
    start = to_the_provider(admin, f"/p/help/servers/{server.id}/oauth/admin-consent")
    back_at_mailroom(admin, at_the_provider(start, test_ca_file, action="accept"))
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in report and "app-only, impersonating the mailbox" in report


@pytest.mark.parametrize("host", ["outlook-dod.office365.us", "webmail.apps.mil", "outlook.office365.us"])
def test_dods_exchange_hosts_are_exchange_online(admin, host):
    warning = admin.post("/p/help/servers/new/section/ews",
                         {"protocol": "ews", "ews_url": f"https://{host}/EWS/Exchange.asmx", "_shown": ["ews"]},
                         htmx=True, headers={"HX-Trigger-Name": "ews_url"}).text
    assert "Microsoft has been blocking EWS there since October 2026" in warning
