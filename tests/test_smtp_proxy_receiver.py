"""SMTP through a proxy (the "Proxy" step) and the mail receiver login before sending (POP-before-SMTP),
against real peers: aiosmtpd behind microsocks, Dante and tinyproxy, Dovecot for POP3 and IMAP, and an
SMTP peer that relays only after such a login (tests/peers/dovecot.py)."""
import time
from dataclasses import replace

import pytest

from webapp.mail.auth import NoAuth, PasswordAuth
from webapp.mail.config import Sender, ServerConfig
from webapp.mail.egress import Network, Policy, parse_rules
from webapp.mail.envelope import Envelope
from webapp.mail.message import build_message
from webapp.mail.proxy import Proxy, ProxySettings
from webapp.mail.receiver import Receiver, ReceiverSettings
from webapp.mail.report import DeliveryError, Outcome
from webapp.mail.smtp import Security, SmtpSettings
from webapp.mail.transport import open_connection, transport_for

SENDER = Sender("mailer@example.test", "Portal Mailer")
SMTP = transport_for("smtp")
ALLOW_LOOPBACK = tuple(parse_rules("127.0.0.0/8\n::1", "the tests' allow list"))


def through(peer=None, *, password=None, remote_dns=False, deny="") -> Network:
    policy = Policy(portal_deny=tuple(parse_rules(deny, "the portal's deny list")), global_allow=ALLOW_LOOPBACK)
    if peer is None:
        return Network(policy)
    kind = {"socks5_open": "socks5"}.get(peer.kind, peer.kind)
    return Network(policy, proxy=Proxy(ProxySettings(kind, peer.host, peer.port, peer.username, remote_dns),
                                       peer.password if password is None else password))


def config(smtp, network, *, security=None, receiver=None, timeout=5.0, **settings) -> ServerConfig:
    plain = smtp.kind in ("plain", "pop_before_smtp", "closed")
    security = security or (Security.NONE if plain else Security.TLS if smtp.kind == "tls" else Security.STARTTLS)
    values = dict(host="localhost", port=smtp.port, security=security, ca_cert=smtp.ca_pem, **settings)
    auth = NoAuth() if plain else PasswordAuth(smtp.username, smtp.password)
    return ServerConfig("smtp", SENDER, SmtpSettings(**values), network=network, auth=auth, timeout=timeout,
                        label="Test peer", receiver=receiver)


def envelope(subject="Hello") -> Envelope:
    return Envelope.of(build_message(SENDER, ["to@example.org"], subject, "Body\n"))


def names(report) -> list[str]:
    return [step.name for step in report.steps]


def step(report, name):
    return next(s for s in reversed(report.steps) if s.name == name)


# --- SMTP through the proxy -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["socks5", "socks4", "http"])
def test_validate_goes_through_the_proxy_and_reports_it(kind, proxy_peer, smtp_peer):
    smtp = smtp_peer("starttls")
    peer = proxy_peer(kind)
    report = SMTP.check(config(smtp, through(peer)))
    assert report.ok, report.failure
    assert names(report)[:4] == ["Resolve host", "Proxy", "Greeting", "EHLO"] and "Connect" not in names(report)
    proxied = step(report, "Proxy")
    assert f"tunnel to 127.0.0.1:{smtp.port} established" in proxied.summary
    assert ("Tunnel to", f"127.0.0.1:{smtp.port}") in proxied.details
    assert dict(step(report, "TLS").details)["Verification"].startswith("verified")  # the server's name, inside
    assert step(report, "Authenticate").outcome == Outcome.PASSED
    assert peer.password not in repr(report) if peer.password else True


def test_a_message_goes_through_socks5_resolved_at_the_proxy(proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer("socks5")
    receipt = SMTP.send(config(smtp, through(peer, remote_dns=True)), envelope())
    assert [m.message["Subject"] for m in smtp.messages] == ["Hello"]
    resolved = step(receipt.report, "Resolve host")
    assert resolved.outcome == Outcome.SKIPPED and "the proxy resolves localhost" in resolved.summary
    assert ("Tunnel to", f"localhost:{smtp.port}") in step(receipt.report, "Proxy").details


def test_a_refused_proxy_password_fails_the_proxy_step_in_words(proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer("socks5")
    with pytest.raises(DeliveryError) as failed:
        SMTP.send(config(smtp, through(peer, password="not-the-password")), envelope())
    failure = failed.value.report.failure
    assert failure.name == "Proxy" and "refused the username or password" in failure.summary
    assert failed.value.credentials  # held until an admin fixes it, not retried
    assert "not-the-password" not in repr(failed.value.report)
    assert smtp.sessions == 0


def test_a_proxy_the_policy_refuses_is_not_connected_to(proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer("http")
    report = SMTP.check(config(smtp, through(peer, deny=f"127.0.0.1 {peer.port}")))
    failure = report.failure
    assert failure.name == "Proxy" and f"port {peer.port}" in failure.summary and "egress policy" in failure.summary
    assert ("Refused destination", f"127.0.0.1 {peer.port}") in failure.details
    assert "Request (file descriptor" not in peer.log()


def test_a_proxy_that_cannot_reach_the_server(proxy_peer, smtp_peer):
    closed = smtp_peer("closed")
    peer = proxy_peer("socks5")
    report = SMTP.check(config(closed, through(peer)))
    assert report.failure.name == "Proxy"
    assert "nothing listens there (connection refused, code 5)" in report.failure.summary


def test_implicit_tls_is_recognised_through_the_proxy(proxy_peer, smtp_peer):
    smtp = smtp_peer("tls")
    peer = proxy_peer("socks5")
    report = SMTP.check(config(smtp, through(peer), security=Security.STARTTLS))
    assert report.failure.name == "Greeting" and "expects TLS from the start" in report.failure.summary


def test_an_unverified_certificate_is_shown_through_the_proxy(proxy_peer, smtp_peer):
    smtp = smtp_peer("untrusted")
    peer = proxy_peer("http")
    report = SMTP.check(config(smtp, through(peer)))
    assert report.failure.name == "TLS" and "unknown authority" in report.failure.summary
    assert dict(report.failure.details).get("Certificate names") == "localhost, 127.0.0.1"  # fetched again, tunnelled


def test_a_reused_connection_keeps_its_tunnel(proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer("http")
    connection = open_connection(config(smtp, through(peer)))
    try:
        receipts = [connection.send(envelope(f"Message {n}")) for n in range(2)]
    finally:
        connection.close()
    assert len(smtp.messages) == 2 and smtp.sessions == 1
    assert "Proxy" in names(receipts[0].report) and "Proxy" not in names(receipts[1].report)
    assert peer.log().count("Request (file descriptor") == 1  # one CONNECT for both


# --- the mail receiver login ---------------------------------------------------------------------------------

def receiver_for(dovecot, protocol="pop3", security="tls", password=None, **values) -> Receiver:
    port = dovecot.ports[{("pop3", "tls"): "pop3s", ("imap", "tls"): "imaps"}.get((protocol, security), protocol)]
    settings = ReceiverSettings(protocol, "localhost", port, security, dovecot.username, **values)
    return Receiver(settings, dovecot.password if password is None else password)


@pytest.mark.parametrize("protocol, security", [("pop3", "tls"), ("pop3", "starttls"), ("pop3", "none"),
                                                ("imap", "tls"), ("imap", "starttls"), ("imap", "none")])
def test_the_receiver_login_comes_before_the_smtp_session(protocol, security, dovecot, pop_before_smtp,
                                                          test_ca_pem):
    smtp = pop_before_smtp()
    receiver = replace(receiver_for(dovecot, protocol, security), ca_pem=test_ca_pem)
    receipt = SMTP.send(config(smtp, through(), receiver=receiver), envelope())
    assert names(receipt.report)[:3] == ["Message", "Mail receiver login", "Resolve host"]
    login = step(receipt.report, "Mail receiver login")
    assert f"as {dovecot.username}" in login.summary
    assert ("over TLS" in login.summary) == (security != "none")
    if security != "none":
        assert dict(login.details)["Verification"].startswith("verified")
    assert len(smtp.messages) == 1 and smtp.handler.refused == 0
    assert dovecot.password not in repr(receipt.report)


def test_without_the_login_the_server_does_not_relay(dovecot, pop_before_smtp):
    smtp = pop_before_smtp()
    with pytest.raises(DeliveryError) as refused:
        SMTP.send(config(smtp, through()), envelope())
    assert refused.value.code == 554 and "Relay access denied" in refused.value.report.failure.summary


def test_a_wrong_receiver_password_fails_its_step_in_words(dovecot, pop_before_smtp, test_ca_pem):
    smtp = pop_before_smtp()
    for protocol in ("pop3", "imap"):
        receiver = replace(receiver_for(dovecot, protocol, password="wrong-one"), ca_pem=test_ca_pem)
        report = SMTP.check(config(smtp, through(), receiver=receiver))
        failure = report.failure
        assert failure.name == "Mail receiver login" and "rejected the login or password" in failure.summary
        assert "Authentication failed" in failure.summary and failure.credentials
        assert "wrong-one" not in repr(report)
    assert smtp.sessions == 0  # nothing was tried on the SMTP server


def test_a_receiver_certificate_from_an_unknown_authority(dovecot, pop_before_smtp):
    smtp = pop_before_smtp()
    report = SMTP.check(config(smtp, through(), receiver=receiver_for(dovecot, "imap", "tls")))
    assert report.failure.name == "Mail receiver login" and "could not be verified" in report.failure.summary


def test_implicit_tls_on_a_plain_receiver_port_is_said(dovecot, pop_before_smtp, test_ca_pem):
    smtp = pop_before_smtp()
    settings = ReceiverSettings("pop3", "localhost", dovecot.ports["pop3"], "tls", dovecot.username)
    report = SMTP.check(config(smtp, through(), receiver=Receiver(settings, dovecot.password, test_ca_pem)))
    assert "answered in plain text" in report.failure.summary


def test_a_receiver_that_is_down(dovecot, smtp_peer, pop_before_smtp):
    smtp = pop_before_smtp()
    closed = smtp_peer("closed")
    settings = ReceiverSettings("pop3", "127.0.0.1", closed.port, "tls", dovecot.username)
    report = SMTP.check(config(smtp, through(), receiver=Receiver(settings, dovecot.password)))
    assert report.failure.summary == f"nothing listens on the mail receiver 127.0.0.1:{closed.port} (connection refused)"


def test_the_receiver_login_goes_through_the_proxy_and_the_policy(dovecot, pop_before_smtp, proxy_peer,
                                                                  test_ca_pem):
    smtp = pop_before_smtp()
    peer = proxy_peer("http")
    receiver = replace(receiver_for(dovecot, "imap", "tls"), ca_pem=test_ca_pem)
    receipt = SMTP.send(config(smtp, through(peer), receiver=receiver), envelope())
    assert ("Through", f"HTTP proxy 127.0.0.1:{peer.port}") in step(receipt.report, "Mail receiver login").details
    assert f"CONNECT 127.0.0.1:{dovecot.ports['imaps']}" in peer.log()
    refused = SMTP.check(config(smtp, through(deny=f"127.0.0.1 {dovecot.ports['imaps']}"), receiver=receiver))
    assert refused.failure.name == "Mail receiver login" and "egress policy refuses" in refused.failure.summary


def test_a_reused_connection_logs_in_before_its_session_only(dovecot, pop_before_smtp, test_ca_pem):
    smtp = pop_before_smtp()
    receiver = replace(receiver_for(dovecot), ca_pem=test_ca_pem)
    before = dovecot.logins()
    connection = open_connection(config(smtp, through(), receiver=receiver))
    try:
        receipts = [connection.send(envelope(f"Message {n}")) for n in range(2)]
    finally:
        connection.close()
    assert "Mail receiver login" in names(receipts[0].report)
    assert "Mail receiver login" not in names(receipts[1].report)
    assert len(smtp.messages) == 2 and smtp.sessions == 1
    end = time.monotonic() + 5  # Dovecot's log process writes the line a moment later (hang guard)
    while dovecot.logins() < before + 1 and time.monotonic() < end:
        time.sleep(0.05)
    assert dovecot.logins() == before + 1
    again = open_connection(config(smtp, through(), receiver=receiver))  # a new session logs in again
    try:
        again.send(envelope("Message 3"))
    finally:
        again.close()
    assert len(smtp.messages) == 3 and smtp.handler.refused == 0
