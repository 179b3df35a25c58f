"""The egress policy: what it decides for every kind of address (without connecting anywhere
but loopback), the order of its rules, and how admins meet it in the pages and the CLI."""
import ipaddress
import re

import pytest
from markupsafe import escape
from sqlmodel import select

from tests.conftest import LOOPBACK, Client
from webapp import create_app, db, grants
from webapp.mail.deadline import Deadline
from webapp.mail.egress import EgressRefused, Network, Policy, Protected, parse_rules
from webapp.models import AppSetting, MailServer, Portal

from .delivery_fixtures import outbox, smtp_settings  # noqa: F401 - fixtures
from .test_server_checks import peer_form, saved_server
from .test_gmail import gmail, gmail_form, key  # noqa: F401 - fixtures
from .test_graph import authority, graph, graph_form  # noqa: F401 - fixtures
from .test_server_proxy_receiver import proxied_form

DEFAULT = Policy()


def decide(policy: Policy, host: str, port: int = 25) -> str:
    """"allowed" or the refusal's reason. Numeric hosts resolve without DNS; names in the
    refusal table are refused before any lookup."""
    try:
        Network(policy).resolve(host, port, Deadline(5))
    except EgressRefused as refused:
        return refused.reason
    return "allowed"


@pytest.mark.parametrize("host, words", [
    ("127.0.0.1", "loopback"), ("127.10.20.30", "loopback"), ("::1", "loopback"), ("localhost", "loopback"),
    ("2130706433", "loopback"), ("0x7f000001", "loopback"), ("0177.0.0.1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("169.254.169.254", "cloud metadata address"), ("::ffff:169.254.169.254", "cloud metadata address"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata address"), ("2002:a9fe:a9fe::1", "cloud metadata address"),
    ("100.100.100.200", "cloud metadata address"), ("fd00:ec2::254", "cloud metadata address"),
    ("metadata.google.internal", "cloud metadata service"), ("METADATA.google.internal.", "cloud metadata service"),
    # the other cloud platforms' host addresses (egress.py cites the list)
    ("168.63.129.16", "cloud metadata address"), ("::ffff:168.63.129.16", "cloud metadata address"),
    ("192.0.0.192", "cloud metadata address"), ("fd00:c1::a9fe:a9fe", "cloud metadata address"),
    ("169.254.170.2", "cloud metadata address"), ("169.254.170.23", "cloud metadata address"),
    ("fd00:ec2::23", "cloud metadata address"), ("fd20:ce::254", "cloud metadata address"),
    ("169.254.0.23", "cloud metadata address"), ("64:ff9b::a83f:8110", "cloud metadata address"),
    ("metadata.goog", "cloud metadata service"), ("metadata", "cloud metadata service"),
    ("instance-data", "cloud metadata service"), ("metadata.tencentyun.com", "cloud metadata service"),
    ("metadata.platformequinix.com", "cloud metadata service"), ("rancher-metadata", "cloud metadata service"),
    ("169.254.10.20", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("0.1.2.3", "not an address a server can have"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("255.255.255.255", "not an address a server can have"),
    ("240.0.0.1", "reserved"),
])
def test_what_portal_admins_may_not_reach_by_default(host, words):
    reason = decide(DEFAULT, host)
    assert words in reason and "(built-in rule)" in reason, reason
    assert "“Egress policy” in the top bar for every portal, or the portal's “Settings” for this one" in reason


@pytest.mark.parametrize("host", ["10.1.2.3", "192.168.1.10", "172.16.0.1", "100.64.0.1", "fd12::1",
                                  "8.8.8.8", "2001:db8::1"])
def test_private_and_public_addresses_are_allowed_by_default(host):
    assert decide(DEFAULT, host) == "allowed"


def rules(text: str, where: str) -> tuple:
    return tuple(parse_rules(text, where))


def test_portal_rules_come_first_then_global_deny_before_allow():
    policy = Policy(portal_allow=rules("10.9.9.9\n127.0.0.1 25", "the portal's allow list"),
                    portal_deny=rules("10.9.9.10", "the portal's deny list"),
                    global_deny=rules("10.0.0.0/8", "the global deny list"),
                    global_allow=rules("10.0.0.0/8\n*.intranet.example", "the global allow list"))
    assert decide(policy, "10.9.9.9") == "allowed"  # the portal allows it: before the global deny
    assert decide(policy, "10.9.9.10") == ("“10.9.9.10” in the portal's deny list, line 1 refuses it; a super-admin "
                                           "can change that list: the portal's “Settings”")
    assert decide(policy, "10.1.1.1") == ("“10.0.0.0/8” in the global deny list, line 1 refuses it; a super-admin can "
                                          "allow it in the portal's “Settings” for this portal, or change that list: "
                                          "“Egress policy” in the top bar")
    assert decide(policy, "127.0.0.1", 25) == "allowed"
    assert "loopback" in decide(policy, "127.0.0.1", 2525)  # the allow rule names port 25 only


def test_host_patterns_are_decided_before_any_lookup():
    policy = Policy(global_deny=rules("*.corp.example 25,587", "the global deny list"))
    assert decide(policy, "smtp.corp.example", 587).startswith(
        "“*.corp.example 25,587” in the global deny list, line 1 refuses it; a super-admin can allow it")


def test_the_apps_own_database_and_redis_are_always_refused():
    protected = (Protected("the app's own Redis", frozenset({ipaddress.ip_address("127.0.0.1")}), 6379),)
    policy = Policy(global_allow=rules("*", "the global allow list"), protected=protected)
    assert decide(policy, "127.0.0.1", 6379) == "that is the app's own Redis (always refused)"
    assert decide(policy, "::ffff:127.0.0.1", 6379) == "that is the app's own Redis (always refused)"
    assert decide(policy, "127.0.0.1", 6380) == "allowed"


@pytest.mark.parametrize("text, error", [
    ("10.0.0.0/8 25 587", "write a network or host, then optionally ports"),
    ("smtp.example.com 0", "ports go from 1 to 65535"),
    ("smtp.example.com 25-x", "is not a port or a range"),
    ("http://smtp.example.com", "not a network"),
])
def test_a_bad_rule_names_its_line(text, error):
    with pytest.raises(ValueError, match=error) as caught:
        parse_rules(f"# comment\n10.0.0.0/8\n{text}", "x")
    assert str(caught.value).startswith("line 3 ")


# --- in the pages ---------------------------------------------------------------------------------

@pytest.fixture
def default_policy(app):
    """No global allow list: loopback is refused, as on a new installation."""
    with app.app_context():
        db.session().get(AppSetting, "egress").value = {"allow": "", "deny": ""}
        db.session().commit()


def test_a_portal_admin_pointing_validate_at_loopback_is_refused_before_any_connection(app, admin, listener,
                                                                                      default_policy):
    target = listener()
    form = peer_form(target, host="127.0.0.1", security="none", auth_type="none")
    report = admin.post("/p/help/servers/new/validate", form, htmx=True).text
    assert "Validation failed at “Resolve host”:" in report
    assert "127.0.0.1 is a loopback address (this machine) (built-in rule)" in report
    metadata = admin.post("/p/help/servers/new/validate", {**form, "host": "169.254.169.254"}, htmx=True).text
    assert "169.254.169.254 is a cloud metadata address" in metadata
    assert target.connections == 0


def test_a_superadmin_allows_a_loopback_relay_for_a_portal(app, make, admin, smtp_peer, default_policy):
    peer = smtp_peer("plain")
    form = peer_form(peer, host="127.0.0.1", security="none", auth_type="none")
    assert "loopback" in admin.post("/p/help/servers/new/validate", form, htmx=True).text
    assert admin.post("/p/help/egress", {"allow": "127.0.0.1", "deny": ""}).status_code == 403  # portal admins
    make.user("root@example.com", superadmin=True)
    root = Client(app).login("root@example.com")
    bad = root.post("/p/help/egress", {"allow": "127.0.0.1 25 587", "deny": ""})
    assert bad.status_code == 422 and "line 1 “127.0.0.1 25 587”" in bad.text
    assert root.post("/p/help/egress", {"allow": f"127.0.0.1 {peer.port}", "deny": ""}).status_code == 303
    assert "All checks passed." in admin.post("/p/help/servers/new/validate", form, htmx=True).text
    settings_page = admin.get("/p/help/settings").text
    assert f"127.0.0.1 {peer.port}" in settings_page and "A super-admin changes these lists." in settings_page
    assert "Changed the egress policy of “Help Desk”" in admin.get("/p/help/history").text


def test_the_global_policy_page_and_its_probe(app, make, default_policy):
    make.user("root@example.com", superadmin=True)
    root = Client(app).login("root@example.com")
    assert root.post("/settings/egress", {"allow": "127.0.0.1 2525", "deny": "10.66.0.0/16"}).status_code == 303
    with app.app_context():
        assert db.session().get(AppSetting, "egress").value == {"allow": "127.0.0.1 2525", "deny": "10.66.0.0/16"}
    allowed = root.post("/settings/egress/probe", {"host": "127.0.0.1", "port": "2525"})
    assert "Allowed: 127.0.0.1 port 2525 (127.0.0.1)" in allowed.text
    refused = root.post("/settings/egress/probe", {"host": "10.66.1.1", "port": "25"})
    assert "Refused: the egress policy refuses 10.66.1.1 port 25: “10.66.0.0/16” in the global deny list" in refused.text
    make.member(make.portal(slug="other", name="Other"), "a@example.com", "admin")
    assert Client(app).login("a@example.com").get("/settings/egress").status_code == 403  # portal admins


def test_the_command_line_edits_and_explains_the_policy(app, make, default_policy):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["egress", "allow", "127.0.0.1 25"]).exit_code == 0
    assert runner.invoke(args=["egress", "deny", "*.lab.example"]).exit_code == 0
    shown = runner.invoke(args=["egress", "show"]).output
    assert "allow:\n  127.0.0.1 25\ndeny:\n  *.lab.example" in shown
    assert runner.invoke(args=["egress", "check", "127.0.0.1", "25"]).output.startswith("Allowed")
    assert "loopback" in runner.invoke(args=["egress", "check", "127.0.0.1", "26"]).output
    bad = runner.invoke(args=["egress", "allow", "not a rule at all"])
    assert bad.exit_code != 0 and "Not a rule" in bad.output
    make.portal(slug="help")
    assert runner.invoke(args=["egress", "allow", "10.0.0.5", "--portal", "help"]).exit_code == 0
    with app.app_context():
        assert db.session().exec(select(Portal)).one().egress_allow == "10.0.0.5"


def test_the_apps_own_redis_is_refused_even_when_loopback_is_allowed(app, make, portal):
    redis_app = create_app({**app.config, "REDIS_URL": "redis://127.0.0.1:6379/15"}, instance_path=app.instance_path)
    make.member(portal, "boss@example.com", "admin")
    boss = Client(redis_app).login("boss@example.com")
    form = peer_form(type("P", (), {"host": "127.0.0.1", "port": 6379, "username": "u", "password": "p",
                                    "ca_pem": ""})(), security="none", auth_type="none")
    report = boss.post("/p/help/servers/new/validate", form, htmx=True).text
    assert "that is the app&#39;s own Redis (always refused)" in report


def test_a_peer_that_does_not_speak_smtp_is_named_so_and_not_echoed(app, admin, banner_peer):
    peer = banner_peer("SSH-2.0-OpenSSH_9.6p1 Debian-3")
    form = peer_form(peer, host="127.0.0.1", security="none", auth_type="none")
    report = admin.post("/p/help/servers/new/validate", form, htmx=True).text
    assert "Validation failed at “Greeting”:" in report
    assert f"127.0.0.1:{peer.port} does not speak SMTP: its first line is not an SMTP greeting" in report
    assert "OpenSSH" not in report and "SSH-2.0" not in report


def test_a_superadmin_allows_a_refused_destination_from_the_report(app, make, portal, smtp_peer, default_policy):
    peer = smtp_peer("plain")
    make.user("root@example.com", superadmin=True)
    root = Client(app).login("root@example.com")
    form = peer_form(peer, host="127.0.0.1", security="none", auth_type="none")
    refused = root.post("/p/help/servers/new/validate", form, htmx=True).text
    assert f'<input type="hidden" name="rule" value="127.0.0.1 {peer.port}">' in refused
    assert f"Allow 127.0.0.1 {peer.port} for this portal" in refused
    allowed = root.post("/p/help/egress/allow", {"rule": f"127.0.0.1 {peer.port}"}, htmx=True)
    assert allowed.status_code == 200 and "This portal may now connect to 127.0.0.1" in allowed.text
    assert "All checks passed." in root.post("/p/help/servers/new/validate", form, htmx=True).text
    make.member(portal, "boss@example.com", "admin")
    boss = Client(app).login("boss@example.com")
    blocked = boss.post("/p/help/servers/new/validate", {**form, "port": "2"}, htmx=True).text
    assert "loopback" in blocked and "for this portal</button>" not in blocked  # portal admins: no button
    assert boss.post("/p/help/egress/allow", {"rule": "127.0.0.1 2"}).status_code == 403


def test_one_validate_names_every_refused_destination_and_one_allow_covers_them(app, make, portal, smtp_peer,
                                                                               proxy_peer, default_policy):
    smtp, proxy = smtp_peer("plain"), proxy_peer("socks5")
    make.user("root@example.com", superadmin=True)
    root = Client(app).login("root@example.com")
    form = proxied_form(smtp, proxy)
    refused = root.post("/p/help/servers/new/validate", form, htmx=True).text
    assert "Validation failed at “Egress policy”:" in refused
    assert "the egress policy refuses 2 destinations of these settings; nothing was sent to any of them" in refused
    assert f"127.0.0.1 port {proxy.port}: 127.0.0.1 is a loopback address" in refused  # the proxy's reason
    assert f"127.0.0.1 port {smtp.port}: 127.0.0.1 is a loopback address" in refused  # the server's, behind it
    rules = [f"127.0.0.1 {proxy.port}", f"127.0.0.1 {smtp.port}"]
    assert all(f'<input type="hidden" name="rule" value="{rule}">' in refused for rule in rules)
    assert f"Allow {rules[0]} and {rules[1]} for this portal" in refused
    assert "connected to" not in proxy.log() and smtp.sessions == 0  # neither was connected to
    allowed = root.post("/p/help/egress/allow", {"rule": rules}, htmx=True)
    assert allowed.status_code == 200 and f"This portal may now connect to {rules[0]} and {rules[1]}." in allowed.text
    with app.app_context():
        assert db.session().get(Portal, portal.id).egress_allow.splitlines() == rules
    assert "All checks passed." in root.post("/p/help/servers/new/validate", form, htmx=True).text
    assert f"connected to 127.0.0.1:{smtp.port}" in proxy.log()  # what the proxy notes of a tunnel


def test_one_refused_destination_among_several_fails_the_step_that_meets_it(app, admin, portal, smtp_peer,
                                                                          proxy_peer, default_policy):
    smtp, proxy = smtp_peer("plain"), proxy_peer("socks5")
    with app.app_context():
        db.session().get(Portal, portal.id).egress_allow = f"127.0.0.1 {proxy.port}"
        db.session().commit()
    refused = admin.post("/p/help/servers/new/validate", proxied_form(smtp, proxy), htmx=True).text
    assert "Validation failed at “Resolve host”:" in refused, refused
    assert f"the egress policy refuses 127.0.0.1 port {smtp.port}: 127.0.0.1 is a loopback address" in refused


def test_an_oauth_server_names_its_token_endpoint_and_its_api_at_once(app, make, portal, authority, graph,
                                                                     default_policy):
    make.user("root@example.com", superadmin=True)
    root = Client(app).login("root@example.com")
    form = graph_form(authority, graph, flow="app", scope="https://graph.microsoft.com/.default", authorize_url="")
    refused = root.post("/p/help/servers/new/validate", form, htmx=True).text
    assert "Validation failed at “Egress policy”:" in refused and "refuses 2 destinations" in refused
    rules = [f"127.0.0.1 {graph.url.rpartition(':')[2]}", f"127.0.0.1 {authority.issuer.rpartition(':')[2]}"]
    assert f"Allow {rules[0]} and {rules[1]} for this portal" in refused
    assert graph.sent == [] and "✔ Token" not in refused and "✘ Token" not in refused  # no token was asked for
    root.post("/p/help/egress/allow", {"rule": rules}, htmx=True)
    after = root.post("/p/help/servers/new/validate", form, htmx=True).text
    assert "Validation failed at “Mailbox”:" in after and "✔ Token" in after  # both reached; no admin consent yet


# --- the sample mail, and the token endpoint of every OAuth kind -------------------------------------------

def test_a_sample_mail_names_every_refused_destination_and_connects_to_none(app, make, portal, smtp_peer, proxy_peer,
                                                                           default_policy):
    smtp, proxy = smtp_peer("plain"), proxy_peer("socks5")
    make.user("root@example.com", superadmin=True)
    root = Client(app).login("root@example.com")
    server = saved_server(app, root, proxied_form(smtp, proxy))
    sent = root.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "The mail was not sent:</strong> Egress policy: the egress policy refuses 2 destinations of these " \
           "settings; nothing was sent to any of them" in sent
    assert f"127.0.0.1 port {proxy.port}: 127.0.0.1 is a loopback address" in sent
    assert f"127.0.0.1 port {smtp.port}: 127.0.0.1 is a loopback address" in sent
    rules = [f"127.0.0.1 {proxy.port}", f"127.0.0.1 {smtp.port}"]
    assert f"Allow {rules[0]} and {rules[1]} for this portal" in sent
    assert "<details open><summary>Every step</summary>" in sent  # the button in sight
    assert "connected to" not in proxy.log() and smtp.sessions == 0 and smtp.messages == []
    allowed = root.post("/p/help/egress/allow", {"rule": rules, "again": "sample"}, htmx=True).text
    assert f"This portal may now connect to {rules[0]} and {rules[1]}. Send the sample mail again." in allowed
    sent = root.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent and len(smtp.messages) == 1


def test_a_sample_mail_of_an_oauth_server_names_its_token_endpoint_and_its_api(app, make, portal, authority, graph,
                                                                              default_policy):
    make.user("root@example.com", superadmin=True)
    root = Client(app).login("root@example.com")
    server = saved_server(app, root, graph_form(authority, graph, flow="app",
                                                scope="https://graph.microsoft.com/.default", authorize_url=""))
    sent = root.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Egress policy: the egress policy refuses 2 destinations" in sent
    rules = [f"127.0.0.1 {graph.url.rpartition(':')[2]}", f"127.0.0.1 {authority.issuer.rpartition(':')[2]}"]
    assert f"Allow {rules[0]} and {rules[1]} for this portal" in sent
    assert authority.requests == [] and graph.sent == []  # no token was asked for, nothing sent


def test_validate_names_a_service_accounts_token_uri_with_the_gmail_api(app, make, portal, oauth_server, gmail, key,
                                                                       default_policy):
    make.user("root@example.com", superadmin=True)
    root = Client(app).login("root@example.com")
    rules = [f"127.0.0.1 {gmail.url.rpartition(':')[2]}", f"127.0.0.1 {oauth_server.issuer.rpartition(':')[2]}"]
    draft = root.post("/p/help/servers/new/validate", gmail_form(gmail, key), htmx=True).text  # the key not saved
    assert "Validation failed at “Egress policy”:" in draft and "refuses 2 destinations" in draft
    assert f"Token endpoint</dt><dd>127.0.0.1 port {rules[1].split()[1]}: " in draft  # the key's token_uri
    assert f"Allow {rules[0]} and {rules[1]} for this portal" in draft
    server = saved_server(app, root, gmail_form(gmail, key))
    report = root.post(f"/p/help/servers/{server.id}/check", htmx=True).text  # the stored key's token_uri
    assert "Validation failed at “Egress policy”:" in report and f"Allow {rules[0]} and {rules[1]} for" in report
    sent = root.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Egress policy: the egress policy refuses 2 destinations" in sent and f"Allow {rules[0]} and" in sent
    assert oauth_server.requests == [] and gmail.sent == []
    root.post("/p/help/egress/allow", {"rule": rules}, htmx=True)
    assert "All checks passed." in root.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert [r["grant_type"] for r in oauth_server.requests] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]


def test_the_token_endpoint_named_is_the_one_each_oauth_kind_posts_to(app, portal, oauth_server, service_account_key):
    """grants.token_endpoint decides for the stored grants; the drafts' grants say the same."""
    key = {**service_account_key(oauth_server), "token_uri": f"{oauth_server.issuer}/elsewhere/token"}
    client = grants.client_for({"token_url": oauth_server.token_url}, {"client_secret": "s"})
    assert grants.token_endpoint("service_account", {"token_url": "https://ignored.example/token"}, {"key": key}) \
        == f"{oauth_server.issuer}/elsewhere/token"
    assert grants.token_endpoint("oauth_app", {"token_url": oauth_server.token_url}, {}) == oauth_server.token_url
    assert grants.token_endpoint("oauth_delegated", {"token_url": oauth_server.token_url}, {}) == oauth_server.token_url
    assert grants.DraftServiceAccountGrant(key, "a@example.test", "s", None).endpoint() == key["token_uri"]
    assert grants.DraftAppGrant(client, None).endpoint() == oauth_server.token_url
    assert grants.NotAuthorized("").endpoint() == ""


def test_validate_of_unsaved_delegated_settings_names_the_token_endpoint_consent_will_use(app, make, portal,
                                                                                        authority, graph,
                                                                                        default_policy):
    make.user("root@example.com", superadmin=True)
    root = Client(app).login("root@example.com")
    refused = root.post("/p/help/servers/new/validate", graph_form(authority, graph), htmx=True).text
    assert "Validation failed at “Egress policy”:" in refused and "refuses 2 destinations" in refused
    assert f"Token endpoint</dt><dd>127.0.0.1 port {authority.issuer.rpartition(':')[2]}: " in refused
    assert authority.requests == [] and graph.sent == []


def test_a_sample_mail_names_the_mail_receiver_with_the_server(app, make, portal, smtp_peer, dovecot, default_policy):
    smtp = smtp_peer("plain")
    make.user("root@example.com", superadmin=True)
    root = Client(app).login("root@example.com")
    server = saved_server(app, root, proxied_form(smtp, dovecot=dovecot))
    sent = root.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Egress policy: the egress policy refuses 2 destinations" in sent
    assert f"Mail server</dt><dd>127.0.0.1 port {smtp.port}: " in sent
    assert f"Mail receiver</dt><dd>localhost " in sent and f" port {dovecot.ports['pop3s']}: " in sent
    assert smtp.sessions == 0
    rules = re.findall(r'<input type="hidden" name="rule" value="([^"]+)">', sent)
    assert rules[0] == f"127.0.0.1 {smtp.port}" and rules[1].endswith(f" {dovecot.ports['pop3s']}")
    root.post("/p/help/egress/allow", {"rule": rules, "again": "sample"}, htmx=True)
    sent = root.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent and len(smtp.messages) == 1


# --- delivery: the queue says which destination the policy refuses, and where a super-admin allows it --------

def test_a_queued_message_refused_by_a_deny_rule_says_where_to_allow_it(app, outbox, make, portal, admin, smtp_peer):
    smtp = smtp_peer("plain")
    server = make.server(portal, settings=smtp_settings(smtp))
    with app.app_context():  # the global allow list lets the peers in (conftest.LOOPBACK); a deny rule comes first
        db.session().get(AppSetting, "egress").value = {"allow": LOOPBACK, "deny": f"127.0.0.1 {smtp.port}"}
        db.session().commit()
    mail_id = outbox.queue(portal)
    outbox.run(mail_id)
    mail = outbox.mail(mail_id)
    refused = (f"Resolve host: the egress policy refuses 127.0.0.1 port {smtp.port}: “127.0.0.1 {smtp.port}” in the "
               "global deny list, line 1 refuses it; a super-admin can allow it in the portal's “Settings” for this "
               "portal, or change that list: “Egress policy” in the top bar")
    assert mail.state == "queued" and mail.last_error == refused and smtp.sessions == 0
    assert escape(refused) in admin.get(f"/p/help/queue/{mail_id}").text
    assert [a.reply for a in outbox.attempts(mail_id)] == [refused]
    with app.app_context():  # what the words say: the portal's allow list comes before the global deny list
        db.session().get(Portal, portal.id).egress_allow = f"127.0.0.1 {smtp.port}"
        server_row = db.session().get(MailServer, server.id)
        server_row.failing_since = None  # not waiting for the probe of a failing server (tested on its own)
        db.session().commit()
    outbox.make_due(mail_id)
    outbox.run(mail_id)
    assert outbox.mail(mail_id).state == "sent" and len(smtp.messages) == 1


def test_a_queued_message_refused_by_the_portals_deny_list_says_where_to_change_it(app, outbox, make, portal, admin,
                                                                                  smtp_peer):
    smtp = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(smtp))
    with app.app_context():
        db.session().get(Portal, portal.id).egress_deny = f"127.0.0.1 {smtp.port}"
        db.session().commit()
    mail_id = outbox.queue(portal)
    outbox.run(mail_id)
    assert outbox.mail(mail_id).last_error == (
        f"Resolve host: the egress policy refuses 127.0.0.1 port {smtp.port}: “127.0.0.1 {smtp.port}” in the portal's "
        "deny list, line 1 refuses it; a super-admin can change that list: the portal's “Settings”")
    assert smtp.sessions == 0
