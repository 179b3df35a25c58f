"""Find settings (autoconfig, RFC 6186 SRV, MX) and the provider presets in the server form, against a DNS
server and an autoconfig HTTPS server on loopback."""
import re
import threading

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.peers.dns import free_loopback_address
from tests.peers.tls import server_context
from webapp.mail import presets
from webapp.mail.deadline import Deadline
from webapp.mail.discover_settings import find
from webapp.mail.dns import Resolver
from webapp import db
from webapp.mail.egress import Network, Policy, parse_rules
from webapp.models import Portal

NEW = "/p/help/servers/new"
AUTOCONFIG = """<?xml version="1.0"?>
<clientConfig version="1.1">
  <emailProvider id="example.test">
    <domain>example.test</domain>
    <displayName>Example Mail</displayName>
    <incomingServer type="imap"><hostname>imap.example.test</hostname><port>993</port>
      <socketType>SSL</socketType><authentication>password-cleartext</authentication>
      <username>%EMAILADDRESS%</username></incomingServer>
    <outgoingServer type="smtp">
      <hostname>smtp.example.test</hostname>
      <port>465</port>
      <socketType>SSL</socketType>
      <authentication>password-cleartext</authentication>
      <username>%EMAILLOCALPART%</username>
    </outgoingServer>
  </emailProvider>
</clientConfig>"""


class AutoconfigServer:
    """Serves Thunderbird autoconfig documents over HTTPS on port 443 of a loopback address, as a
    domain's web server does (wiki.mozilla.org/Thunderbird:Autoconfiguration: the client asks
    https://autoconfig.<domain>/mail/config-v1.1.xml?emailaddress=… and then
    https://<domain>/.well-known/autoconfig/mail/config-v1.1.xml; anything else is 404)."""

    def __init__(self, ca, names):
        self.address = free_loopback_address()
        self.documents: dict[tuple[str, str], str] = {}  # (host, path) -> XML
        self.requests: list[str] = []
        self._server = make_server(self.address, 443, self._app, threaded=True,
                                   ssl_context=server_context(ca, *names))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @Request.application
    def _app(self, request):
        host = request.host.split(":")[0]
        self.requests.append(f"{host}{request.full_path.rstrip('?')}")
        document = self.documents.get((host, request.path))
        if document is None:
            return Response("not found", 404)
        return Response(document, 200, content_type="text/xml")

    def stop(self):
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def web(test_ca):
    server = AutoconfigServer(test_ca, ["autoconfig.example.test", "example.test", "autoconfig.other.test",
                                        "other.test"])
    yield server
    server.stop()


@pytest.fixture
def resolver(dns_zone):
    return Resolver.from_setting(dns_zone.address)


def loopback_network(test_ca_pem, deny=""):
    return Network(Policy(portal_deny=tuple(parse_rules(deny, "the portal's deny list")),
                          global_allow=tuple(parse_rules("127.0.0.0/8", "the global allow list"))),
                   extra_ca_pem=test_ca_pem)


def test_autoconfig_comes_first(dns_zone, web, resolver, test_ca_pem):
    dns_zone.add("autoconfig.example.test", "A", web.address)
    dns_zone.add("_submission._tcp.example.test", "SRV", "0 1 587 srv.example.test.")
    web.documents[("autoconfig.example.test", "/mail/config-v1.1.xml")] = AUTOCONFIG
    found = find("ann@example.test", resolver, loopback_network(test_ca_pem), Deadline(10))
    assert found.values == {"protocol": "smtp", "host": "smtp.example.test", "security": "tls", "port": "465",
                            "auth_type": "basic", "username": "ann"}
    assert found.sources["host"] == ("the autoconfig document at https://autoconfig.example.test/mail/config-v1.1.xml"
                                     " (Example Mail)")
    assert web.requests == ["autoconfig.example.test/mail/config-v1.1.xml?emailaddress=ann@example.test"]
    assert ("_submission._tcp.example.test", "SRV") not in dns_zone.queries


def test_the_well_known_address_when_there_is_no_autoconfig_host(dns_zone, web, resolver, test_ca_pem):
    dns_zone.add("example.test", "A", web.address)
    web.documents[("example.test", "/.well-known/autoconfig/mail/config-v1.1.xml")] = AUTOCONFIG
    found = find("ann@example.test", resolver, loopback_network(test_ca_pem), Deadline(10))
    assert found.values["host"] == "smtp.example.test"
    assert "/.well-known/autoconfig/mail/config-v1.1.xml" in found.sources["host"]
    assert found.looked[0] == "https://autoconfig.example.test/mail/config-v1.1.xml: no answer " \
                              "(autoconfig.example.test has no address in DNS)"


def test_srv_submissions_before_submission(dns_zone, resolver, test_ca_pem):
    dns_zone.add("_submission._tcp.example.test", "SRV", "0 1 587 plain.example.test.")
    dns_zone.add("_submissions._tcp.example.test", "SRV", "10 1 465 tls2.example.test.")
    dns_zone.add("_submissions._tcp.example.test", "SRV", "0 1 465 tls.example.test.")
    found = find("ann@example.test", resolver, loopback_network(test_ca_pem), Deadline(10))
    assert found.values == {"protocol": "smtp", "host": "tls.example.test", "port": "465", "security": "tls",
                            "auth_type": "basic", "username": "ann@example.test"}
    assert found.sources["host"] == "the SRV record _submissions._tcp.example.test"
    names = [name for name, _ in dns_zone.queries]
    assert names.index("autoconfig.example.test") < names.index("_submissions._tcp.example.test")
    assert "_submission._tcp.example.test" not in names


def test_srv_submission_with_starttls_and_a_dot_that_says_not_offered(dns_zone, resolver, test_ca_pem):
    dns_zone.add("_submissions._tcp.example.test", "SRV", "0 0 0 .")
    dns_zone.add("_submission._tcp.example.test", "SRV", "0 1 587 mail.example.test.")
    found = find("ann@example.test", resolver, loopback_network(test_ca_pem), Deadline(10))
    assert (found.values["host"], found.values["port"], found.values["security"]) == ("mail.example.test", "587",
                                                                                      "starttls")
    assert "_submissions._tcp.example.test: says the service is not offered (target “.”)" in found.looked


@pytest.mark.parametrize("mx, key, protocol", [
    ("0 example-test.mail.protection.outlook.com.", "microsoft365-graph-global", "graph"),
    ("1 aspmx.l.google.com.", "google-smtp", "smtp"),
    ("10 smtp.google.com.", "google-smtp", "smtp"),
    ("10 mx.zoho.eu.", "zoho-eu", "smtp"),
])
def test_mx_at_a_known_service_gives_its_preset(dns_zone, resolver, test_ca_pem, mx, key, protocol):
    dns_zone.add("example.test", "MX", mx)
    found = find("ann@example.test", resolver, loopback_network(test_ca_pem), Deadline(10))
    assert found.preset is presets.BY_KEY[key]
    assert found.values["protocol"] == protocol
    assert "the MX of example.test is" in found.sources["protocol"]


def test_mx_elsewhere_finds_nothing_and_says_what_it_looked_at(dns_zone, resolver, test_ca_pem):
    dns_zone.add("example.test", "MX", "10 mx.example.test.")
    found = find("ann@example.test", resolver, loopback_network(test_ca_pem), Deadline(10))
    assert found.values == {} and found.preset is None
    assert found.looked[-1] == "example.test: MX mx.example.test, not a service Mailroom knows"


def test_autoconfig_refused_by_the_egress_policy_goes_on_to_srv(dns_zone, web, resolver, test_ca_pem):
    dns_zone.add("autoconfig.example.test", "A", web.address)
    dns_zone.add("_submission._tcp.example.test", "SRV", "0 1 587 mail.example.test.")
    web.documents[("autoconfig.example.test", "/mail/config-v1.1.xml")] = AUTOCONFIG
    found = find("ann@example.test", resolver, loopback_network(test_ca_pem, deny="autoconfig.example.test"),
                 Deadline(10))
    assert web.requests == []
    assert found.refused is not None and "autoconfig.example.test" in found.looked[0]
    assert found.values["host"] == "mail.example.test"


@pytest.mark.parametrize("document, words", [
    ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><clientConfig>&a;</clientConfig>', "DTDs"),
    ("<html><body>Welcome</body></html>", "its root is <html>"),
    ("<clientConfig><emailProvider/></clientConfig>", "names no outgoing SMTP server"),
])
def test_a_document_that_is_not_usable_is_said_and_skipped(dns_zone, web, resolver, test_ca_pem, document, words):
    dns_zone.add("autoconfig.example.test", "A", web.address)
    web.documents[("autoconfig.example.test", "/mail/config-v1.1.xml")] = document
    found = find("ann@example.test", resolver, loopback_network(test_ca_pem), Deadline(10))
    assert words in found.looked[0] and found.values == {}


def test_a_silent_resolver_ends_the_search_in_time(dns_zone, resolver, test_ca_pem):
    dns_zone.resolver.silent.update({"autoconfig.example.test", "example.test", "_submissions._tcp.example.test"})
    found = find("ann@example.test", resolver, loopback_network(test_ca_pem), Deadline(3))
    assert found.values == {}
    assert found.looked[0].endswith("no answer in time (no answer from the name resolver)")
    assert found.looked[-1] == "stopped: no time was left for the DNS lookups"


# -- in the server form -------------------------------------------------------------------

def field_value(page: str, name: str) -> str | None:
    """The value an input shows, or the selected option of a select (None: no such field)."""
    select = re.search(rf'<select[^>]*name="{name}"[^>]*>(.*?)</select>', page, re.S)
    if select:
        chosen = re.search(r'<option value="([^"]*)" selected>', select.group(1))
        return chosen.group(1) if chosen else None
    field = re.search(rf'<input[^>]*name="{name}"[^>]*value="([^"]*)"', page)
    return field.group(1) if field else None


FORM = {"protocol": "smtp", "description": "Mine", "host": "old.example.test", "security": "starttls",
        "port": "587", "auth_type": "none", "from_address": "ann@example.test", "sender_name": "Ann",
        "timeout": "10", "max_connections": "5", "_shown": ["general", "smtp", "port", "tls", "auth", "sender",
                                                             "limits"]}


@pytest.mark.parametrize("key", [p.key for p in presets.PRESETS])
def test_each_preset_fills_what_it_knows(admin, portal, key):
    preset = presets.BY_KEY[key]
    response = admin.post(NEW, {**FORM, "_action": "preset", "preset": key}, htmx=True)
    assert response.status_code == 200
    page = response.text
    for name, value in preset.values("ann@example.test").items():
        assert field_value(page, name) == value, name
    if not preset.host and preset.protocol == "smtp":
        assert field_value(page, "host") == "old.example.test"  # what the preset does not know stays
    assert field_value(page, "description") == "Mine" and field_value(page, "sender_name") == "Ann"
    assert preset.docs.replace("&", "&amp;") in page and f'<option value="{key}" selected>' in page
    if preset.oauth:
        assert field_value(page, "scope")  # the provider's default scope follows
        assert "https://" in field_value(page, "token_url")
    assert admin.get("/p/help/servers/").text.count("/edit") == 0  # nothing saved


def test_sendgrid_username_is_the_literal_apikey(admin, portal):
    page = admin.post(NEW, {**FORM, "_action": "preset", "preset": "sendgrid"}, htmx=True).text
    assert field_value(page, "username") == "apikey"
    assert field_value(page, "host") == "smtp.sendgrid.net" and field_value(page, "port") == "587"


def test_find_settings_fills_the_form_and_says_where_each_value_came_from(admin, portal, dns_zone):
    dns_zone.add("_submissions._tcp.example.test", "SRV", "0 1 465 mail.example.test.")
    response = admin.post(NEW, {**FORM, "_action": "find_settings"}, htmx=True)
    assert response.status_code == 200
    page = response.text
    assert (field_value(page, "host"), field_value(page, "port"), field_value(page, "security")) == \
        ("mail.example.test", "465", "tls")
    assert field_value(page, "auth_type") == "basic" and field_value(page, "username") == "ann@example.test"
    assert "Found settings for example.test" in page
    assert "<td>Server name / IP address</td><td>mail.example.test</td><td>the SRV record " \
           "_submissions._tcp.example.test</td>" in page
    assert field_value(page, "description") == "Mine"


def test_find_settings_for_a_microsoft_365_domain_gives_graph(admin, portal, dns_zone):
    dns_zone.add("example.test", "MX", "0 example-test.mail.protection.outlook.com.")
    page = admin.post(NEW, {**FORM, "_action": "find_settings"}, htmx=True).text
    assert field_value(page, "protocol") == "graph" and field_value(page, "auth_type") == "oauth"
    assert field_value(page, "provider") == "microsoft" and field_value(page, "tenant") == "example.test"
    assert field_value(page, "token_url") == "https://login.microsoftonline.com/example.test/oauth2/v2.0/token"
    assert "the MX of example.test is example-test.mail.protection.outlook.com, Microsoft 365&#39;s" in page


def test_find_settings_with_nothing_found_says_what_it_looked_at(admin, portal, dns_zone):
    page = admin.post(NEW, {**FORM, "_action": "find_settings"}, htmx=True).text
    assert "No settings found for example.test" in page
    assert "_submission._tcp.example.test: no SRV record" in page
    assert field_value(page, "host") == "old.example.test"


@pytest.mark.parametrize("address", ["", "not an address"])
def test_find_settings_needs_the_from_address(admin, portal, address):
    response = admin.post(NEW, {**FORM, "from_address": address, "_action": "find_settings"}, htmx=True)
    assert response.status_code == 422
    assert "Type the From address first" in response.text
    assert 'aria-invalid="true"' in response.text


def test_find_settings_and_presets_are_for_admins(staff, portal):
    for action in ("find_settings", "preset"):
        assert staff.post(NEW, {**FORM, "_action": action, "preset": "sendgrid"}).status_code == 403


def test_find_settings_without_javascript_answers_the_whole_page(admin, portal, dns_zone):
    dns_zone.add("_submission._tcp.example.test", "SRV", "0 1 587 mail.example.test.")
    response = admin.post(NEW, {**FORM, "_action": "find_settings"})
    assert response.status_code == 200 and "<html" in response.text
    assert field_value(response.text, "host") == "mail.example.test"


def test_find_settings_says_where_the_egress_policy_stopped_it_and_a_super_admin_can_allow(
        app, make, client, portal, dns_zone, web):
    dns_zone.add("autoconfig.example.test", "A", web.address)
    dns_zone.add("_submission._tcp.example.test", "SRV", "0 1 587 mail.example.test.")
    web.documents[("autoconfig.example.test", "/mail/config-v1.1.xml")] = AUTOCONFIG
    with app.app_context():
        stored = db.session().get(Portal, portal.id)
        stored.egress_deny = web.address
        db.session().commit()
    make.user("root@example.com", superadmin=True)
    root = client.login("root@example.com")
    response = root.post(NEW, {**FORM, "_action": "find_settings"}, htmx=True)
    assert response.status_code == 200 and web.requests == []
    assert field_value(response.text, "host") == "mail.example.test"  # SRV still found it
    report = response.text[response.text.index('<section id="report" hx-swap-oob="innerHTML">'):]
    assert "Find settings could not fetch the domain&#39;s autoconfig document:" in report
    assert f'name="rule" value="{web.address} 443"' in report and f"Allow {web.address} 443 for this portal" in report
    whole = root.post(NEW, {**FORM, "_action": "find_settings"}).text
    assert "Find settings could not fetch" in whole and f"Allow {web.address} 443" in whole


def test_an_admin_sees_the_refusal_without_the_allow_button(app, admin, portal, dns_zone, web):
    dns_zone.add("autoconfig.example.test", "A", web.address)
    with app.app_context():
        db.session().get(Portal, portal.id).egress_deny = web.address
        db.session().commit()
    page = admin.post(NEW, {**FORM, "_action": "find_settings"}, htmx=True).text
    assert "Find settings could not fetch" in page and "the egress policy refuses" in page
    assert 'name="rule"' not in page
