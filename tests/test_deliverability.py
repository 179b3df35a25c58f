"""The Deliverability section of Validate: SPF (pyspf), DKIM, DMARC (checkdmarc) and the addresses' domains,
read from a DNS server on loopback (tests/peers/dns.py); nothing is sent."""
import pytest

from webapp.mail import deliverability, presets
from webapp.mail.deadline import Deadline
from webapp.mail.dns import Resolver
from webapp.mail.report import Outcome

from .test_server_checks import peer_form

OWN = deliverability.Sending("ann@example.com", "smtp", host="relay.example.com")
GRAPH = deliverability.Sending("ann@example.com", "graph", preset=presets.for_server("graph"), label="Microsoft 365")
SENDGRID = deliverability.Sending("ann@example.com", "smtp", host="smtp.sendgrid.net",
                                  preset=presets.for_server("smtp", "smtp.sendgrid.net"), label="SendGrid (Twilio)")
MICROSOFT_SPF = ("v=spf1 ip4:40.92.0.0/15 ip4:40.107.0.0/16 ip4:52.100.0.0/15 ip6:2a01:111:f400::/48 "
                 "ip6:2a01:111:f403::/49 -all")  # the shape of Microsoft's record: ranges, then -all


@pytest.fixture
def zone(dns_zone):
    dns_zone.add("relay.example.com", "A", "198.51.100.7")
    dns_zone.add("spf.protection.outlook.com", "TXT", MICROSOFT_SPF)
    dns_zone.add("sendgrid.net", "TXT", "v=spf1 ip4:167.89.0.0/17 ip4:208.117.48.0/20 ~all")
    return dns_zone


def run(zone, sending=OWN, addresses=(), seconds=10):
    steps = deliverability.check(sending, list(addresses), Resolver.from_setting(zone.address), Deadline(seconds))
    return {step.name: step for step in steps}


@pytest.mark.parametrize("record, verdict, outcome, words", [
    ("v=spf1 ip4:198.51.100.0/24 -all", "pass", Outcome.PASSED, "allows relay.example.com (198.51.100.7): pass"),
    ("v=spf1 a:relay.example.com ~all", "pass", Outcome.PASSED, ": pass"),
    ("v=spf1 ip4:192.0.2.1 -all", "fail", Outcome.WARNING, "(fail, -all): receivers may reject its mail"),
    ("v=spf1 ip4:192.0.2.1 ~all", "softfail", Outcome.WARNING, "(softfail, ~all): its mail is likely to land in spam"),
    ("v=spf1 ip4:192.0.2.1 ?all", "neutral", Outcome.WARNING, "says nothing about relay.example.com"),
    (None, "none", Outcome.WARNING, "example.com has no SPF record"),
    ("v=spf1 ip4:192.0.2.1 moo -all", "permerror", Outcome.WARNING, "is broken (permerror: Unknown mechanism"),
])
def test_spf_verdicts_for_the_servers_address(zone, record, verdict, outcome, words):
    if record:
        zone.add("example.com", "TXT", record)
    zone.add("example.com", "TXT", "google-site-verification=abc")  # other TXT records do not count
    step = run(zone)["SPF"]
    assert step.outcome == outcome and words in step.summary, step.summary
    assert ("Evaluated for", "relay.example.com (198.51.100.7)") in step.details
    if verdict in ("fail", "softfail", "neutral"):
        assert ("Record to publish", f'example.com TXT "{record.rsplit(" ", 1)[0]} ip4:198.51.100.7 '
                                     f'{record.rsplit(" ", 1)[1]}"') in step.details
    if verdict == "none":
        assert ("Record to publish", 'example.com TXT "v=spf1 ip4:198.51.100.7 ~all"') in step.details


def test_spf_with_more_than_ten_lookups_is_a_permerror_with_its_reason(zone):
    for n in range(11):
        zone.add(f"s{n}.example.net", "TXT", f"v=spf1 ip4:203.0.113.{n} -all")
    zone.add("example.com", "TXT", "v=spf1 " + " ".join(f"include:s{n}.example.net" for n in range(11)) + " -all")
    step = run(zone)["SPF"]
    assert step.outcome == Outcome.WARNING
    assert "permerror: more than 10 DNS lookups" in step.summary
    assert "at most 10 DNS lookups (RFC 7208 4.6.4)" in step.hint


def test_two_spf_records_are_a_permerror(zone):
    zone.add("example.com", "TXT", "v=spf1 ip4:198.51.100.7 -all").add("example.com", "TXT", "v=spf1 -all")
    step = run(zone)["SPF"]
    assert "more than one SPF record" in step.summary and "merge the SPF records into one" in step.hint


def test_spf_for_a_service_is_evaluated_for_an_address_it_sends_from(zone):
    zone.add("example.com", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    step = run(zone, GRAPH)["SPF"]
    assert step.outcome == Outcome.WARNING and "does not allow Microsoft 365" in step.summary
    assert ("Evaluated for", "40.92.0.1 (Microsoft 365, one of the addresses in spf.protection.outlook.com)") \
        in step.details
    assert ("Record to publish", 'example.com TXT "v=spf1 ip4:192.0.2.1 include:spf.protection.outlook.com -all"') \
        in step.details
    zone.clear()
    zone.add("spf.protection.outlook.com", "TXT", MICROSOFT_SPF)
    zone.add("example.com", "TXT", "v=spf1 include:spf.protection.outlook.com -all")
    assert run(zone, GRAPH)["SPF"].outcome == Outcome.PASSED


def test_spf_is_not_evaluated_for_a_private_address(zone):
    zone.add("relay.example.com", "A", "10.1.2.3")
    zone.resolver.records = [r for r in zone.resolver.records if str(r.rdata) != "198.51.100.7"]
    step = run(zone)["SPF"]
    assert step.outcome == Outcome.SKIPPED and "10.1.2.3, not a public address" in step.summary


def test_spf_lookups_that_time_out_say_so(zone):
    zone.resolver.silent.add("example.com")
    steps = run(zone, seconds=2)
    assert "DNS" in steps and "did not answer" in steps["DNS"].summary


def test_dkim_found_at_the_services_selector_through_its_cname(zone):
    zone.add("selector1._domainkey.example.com", "CNAME", "selector1-example-com._domainkey.contoso.onmicrosoft.com.")
    zone.add("selector1-example-com._domainkey.contoso.onmicrosoft.com", "TXT", "v=DKIM1; k=rsa; p=MIGfMA0GCSqG")
    step = run(zone, GRAPH)["DKIM"]
    assert step.outcome == Outcome.PASSED and "selector1._domainkey.example.com" in step.summary


def test_dkim_missing_at_the_services_selectors(zone):
    step = run(zone, GRAPH)["DKIM"]
    assert step.outcome == Outcome.WARNING
    assert "selector1._domainkey.example.com, selector2._domainkey.example.com" in step.summary
    assert "turn on DKIM for example.com at Microsoft 365" in step.hint
    # the page that says how (Microsoft's DKIM set-up), not the preset's page on sending through Graph
    assert "https://learn.microsoft.com/en-us/defender-office-365/email-authentication-dkim-configure" in step.hint
    assert "user-sendmail" not in step.hint
    assert run(zone)["DKIM"].outcome == Outcome.SKIPPED  # an own server: no selector to know


def test_no_dmarc_record_gets_the_record_to_publish(zone):
    step = run(zone)["DMARC"]
    assert step.outcome == Outcome.WARNING and "example.com has no DMARC record" in step.summary
    assert ("Record to publish", '_dmarc.example.com TXT "v=DMARC1; p=none; rua=mailto:postmaster@example.com"') \
        in step.details


def test_dmarc_reject_without_alignment_fails_the_section(zone):
    zone.add("example.com", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    step = run(zone)["DMARC"]
    assert step.outcome == Outcome.FAILED
    assert "policy is reject: receivers reject mail that does not align" in step.summary


def test_dmarc_none_without_alignment_is_a_warning(zone):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none")
    assert run(zone)["DMARC"].outcome == Outcome.WARNING


def test_dmarc_aligns_through_spf_of_the_envelope_sender(zone):
    zone.add("example.com", "TXT", "v=spf1 ip4:198.51.100.7 -all")
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=quarantine; adkim=s; aspf=s")
    step = run(zone)["DMARC"]
    assert step.outcome == Outcome.PASSED
    assert step.summary == ("the From address would align (SPF pass for the envelope sender ann@example.com); "
                            "policy quarantine")


def test_a_service_with_its_own_bounce_address_aligns_only_through_dkim(zone):
    zone.add("example.com", "TXT", "v=spf1 include:sendgrid.net -all")
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    steps = run(zone, SENDGRID)
    assert steps["SPF"].outcome == Outcome.PASSED
    assert steps["DMARC"].outcome == Outcome.FAILED
    assert "SendGrid (Twilio) sends with a bounce address of its own" in steps["DMARC"].summary
    zone.add("s1._domainkey.example.com", "TXT", "k=rsa; p=MIGfMA0GCSqG")
    assert run(zone, SENDGRID)["DMARC"].outcome == Outcome.PASSED


def test_dmarc_of_the_organizational_domain_and_its_subdomain_policy(dns_zone):
    dns_zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none; sp=reject")
    sending = deliverability.Sending("ann@mail.example.com", "smtp", host="203.0.113.5")
    steps = deliverability.check(sending, [], Resolver.from_setting(dns_zone.address), Deadline(10))
    step = next(s for s in steps if s.name == "DMARC")
    assert step.outcome == Outcome.FAILED and ("Policy", "p=reject at example.com") in step.details


@pytest.mark.parametrize(("domain", "base"), [
    ("example.com", "example.com"), ("github.io", "github.io"), ("localhost", "localhost"), ("co.uk", "co.uk"),
    ("mail.example.co.uk", "example.co.uk"), ("a.b.example.com", "example.com"), ("ann.github.io", "ann.github.io"),
])
def test_the_organizational_domain_reads_the_public_suffix_list_only_for_names_of_three_labels_or_more(domain, base):
    deliverability._public_suffixes.cache_clear()
    assert deliverability.base_domain(domain) == base
    assert deliverability._public_suffixes.cache_info().currsize == (domain.count(".") >= 2)
    assert (deliverability._public_suffixes().privatesuffix(domain) or domain) == base  # what the list says


def test_a_broken_dmarc_record_is_said(zone):
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=maybe")
    step = run(zone)["DMARC"]
    assert step.outcome == Outcome.WARNING and "cannot be read" in step.summary


@pytest.mark.parametrize("records, outcome, words", [
    ([("MX", "10 mx.example.org.")], Outcome.PASSED, "example.org receives mail (MX mx.example.org)"),
    ([("MX", "0 .")], Outcome.WARNING, "says it receives no mail (null MX, RFC 7505)"),
    ([("A", "198.51.100.9")], Outcome.PASSED, "has no MX record; mail goes to its address 198.51.100.9"),
    ([], Outcome.WARNING, "example.org does not exist in DNS"),
])
def test_each_address_gets_a_domain_check(zone, records, outcome, words):
    for rtype, data in records:
        zone.add("example.org", rtype, data)
    step = run(zone, addresses=[("Reply-to address", "help@example.org", "")])["Reply-to address"]
    assert step.outcome == outcome and words in step.summary


def test_a_check_asks_each_question_once(zone):
    """From, Reply-To and the admin address in one domain: its MX (and addresses) are asked once."""
    zone.add("example.com", "TXT", "v=spf1 ip4:198.51.100.0/24 -all")
    addresses = [(label, f"{name}@example.com", "") for label, name in
                 (("From address", "ann"), ("Reply-to address", "help"), ("Admin mail address", "admin"))]
    steps = run(zone, addresses=addresses)
    assert all(steps[label].outcome == Outcome.WARNING for label, _, _ in addresses)  # no MX, no address
    asked = [query for query in zone.queries if query[0] == "example.com"]
    assert sorted(asked) == [("example.com", "A"), ("example.com", "AAAA"), ("example.com", "MX"),
                             ("example.com", "TXT")]


def test_an_address_that_is_not_one_fails_its_check(zone):
    step = run(zone, addresses=[("Admin mail address", "admin@@example.org", "bad @")])["Admin mail address"]
    assert step.outcome == Outcome.FAILED and "“admin@@example.org” is not an email address: bad @" in step.summary


def test_validate_shows_the_deliverability_section_with_the_record_to_add(admin, portal, smtp_peer, dns_zone, app):
    """The SMTP peer listens on this machine; the test's DNS gives "localhost" the public address a relay's
    name would have, so SPF is evaluated for it as for any relay."""
    dns_zone.add("localhost", "A", "198.51.100.7")
    dns_zone.add("example.com", "MX", "10 mx.example.com.")
    with app.app_context():
        from webapp import db
        portal = db.session().merge(portal)
        portal.admin_address = "alerts@nowhere.example"
        db.session().commit()
    peer = smtp_peer("starttls")
    report = admin.post("/p/help/servers/new/validate", peer_form(peer, host="localhost", from_address="helpdesk@example.com",
                                                                  reply_to="replies@example.com"), htmx=True).text
    assert "All checks passed" in report  # deliverability advises; it does not fail Validate
    assert "<h3>Deliverability</h3>" in report
    assert "example.com has no SPF record" in report
    assert "example.com TXT &#34;v=spf1 ip4:198.51.100.7 ~all&#34;" in report
    assert "_dmarc.example.com TXT" in report
    assert "helpdesk@example.com: example.com receives mail (MX mx.example.com)" in report
    assert "Reply-to address" in report and "Admin mail address" in report
    assert "nowhere.example does not exist in DNS" in report
    assert ("example.com", "TXT") in dns_zone.queries


def test_a_resolver_setting_that_is_not_an_address_stops_the_start(tmp_path):
    from webapp import create_app
    with pytest.raises(ValueError, match="DNS_RESOLVER: “dns.example.com” is not a resolver address"):
        create_app({"DNS_RESOLVER": "dns.example.com", "SECRET_KEY": "k"}, instance_path=str(tmp_path))


def test_the_network_guard_refuses_a_dns_query_beyond_this_machine():
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(OSError, match="test network guard"):
            sock.sendto(b"\x00" * 12, ("192.0.2.53", 53))


def test_mail_check_on_the_command_line_prints_the_section(app, make, portal, dns_zone):
    server = make.server(portal, from_address="helpdesk@example.com", settings={"port": 1})
    output = app.test_cli_runner().invoke(args=["mail", "check", "help", str(server.id)]).output
    assert "\nDeliverability\n" in output
    assert 'record to publish: _dmarc.example.com TXT "v=DMARC1; p=none; rua=mailto:postmaster@example.com"' \
        in output


def test_validate_checks_the_alternative_sender_ids_too(admin, portal, smtp_peer, dns_zone, app):
    """eG's Validate skips the alternative sender IDs; Mailroom's looks up their domains (the first ten)."""
    from webapp import db
    from webapp.checks import SENDER_IDS_CHECKED
    from webapp.models import SenderId

    dns_zone.add("example.com", "MX", "10 mx.example.com.")
    dns_zone.add("alerts.example.com", "MX", "10 mx.example.com.")
    with app.app_context():
        db.session().add(SenderId(portal_id=portal.id, address="desk@alerts.example.com"))
        db.session().add(SenderId(portal_id=portal.id, address="desk@gone.example"))
        db.session().add_all(SenderId(portal_id=portal.id, address=f"z{n:02}@example.com") for n in range(12))
        db.session().commit()
    report = admin.post("/p/help/servers/new/validate",
                        peer_form(smtp_peer("starttls"), from_address="helpdesk@example.com"), htmx=True).text
    assert "desk@alerts.example.com: alerts.example.com receives mail" in report
    assert "gone.example does not exist in DNS" in report
    assert report.count("Alternative sender ID") == SENDER_IDS_CHECKED
    assert "z07@example.com" in report and "z08@example.com" not in report  # ordered by address, ten of them
