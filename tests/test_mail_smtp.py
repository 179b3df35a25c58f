"""The SMTP transport against real aiosmtpd peers on 127.0.0.1 (tests/peers/smtp.py), through the registry."""
import base64
import time
from datetime import datetime, timezone

import pytest

from webapp.mail import transport_for
from webapp.mail.auth import NoAuth, PasswordAuth
from webapp.mail.config import Sender, ServerConfig
from webapp.mail.egress import Network, Policy, parse_rules
from webapp.mail.envelope import Envelope
from webapp.mail.message import build_message, sample_message
from webapp.mail.report import DeliveryError, Outcome, Report
from webapp.mail.smtp import Mechanism, Security, SmtpSettings
from webapp.mail.smtp.failures import explain_reply
from webapp.mail.smtp.session import Rejected

SENDER = Sender("mailer@example.test", "Portal Mailer", reply_to="help@example.test")
SMTP = transport_for("smtp")
LOOPBACK = Network(Policy(global_allow=tuple(parse_rules("127.0.0.0/8\n::1", "the tests' allow list"))))


def config_for(peer, sender: Sender = SENDER, *, timeout=5.0, mechanism=Mechanism.AUTO,
               username=None, password=None, **overrides) -> ServerConfig:
    security = {"tls": Security.TLS}.get(peer.kind, Security.STARTTLS)
    if peer.kind in ("plain", "refuse_sender", "refuse_recipients"):
        security = Security.NONE
    settings = dict(host="localhost", port=peer.port, security=security, ca_cert=peer.ca_pem)
    settings.update(overrides)
    if username is None:
        username = peer.username if peer.kind not in ("plain", "refuse_sender", "refuse_recipients") else ""
    auth = PasswordAuth(username, password or peer.password, mechanism) if username else NoAuth()
    return ServerConfig("smtp", sender, SmtpSettings(**settings), network=LOOPBACK, auth=auth,
                        timeout=timeout, label="Test peer")


def outcomes(report: Report) -> dict[str, Outcome]:
    """Last outcome per step name (EHLO appears twice with STARTTLS)."""
    return {step.name: step.outcome for step in report.steps}


def step(report: Report, name: str):
    return [s for s in report.steps if s.name == name][-1]


def everything(report: Report) -> str:
    return repr(report) + "\n" + "\n".join(report.transcript)


def secret_forms(peer) -> list[str]:
    u, p = peer.username, peer.password
    return [p, base64.b64encode(p.encode()).decode(),
            base64.b64encode(f"\0{u}\0{p}".encode()).decode()]


# --- check(): the happy paths ----------------------------------------------------------

def test_check_starttls_passes_every_step(smtp_peer):
    peer = smtp_peer("starttls")
    report = SMTP.check(config_for(peer))

    assert report.ok, report.failure
    assert [s.name for s in report.steps] == [
        "Resolve host", "Connect", "Greeting", "EHLO", "STARTTLS", "TLS", "EHLO",
        "Authenticate", "MAIL FROM"]
    assert all(s.outcome == Outcome.PASSED for s in report.steps)
    assert "127.0.0.1" in step(report, "Resolve host").summary
    assert f"127.0.0.1:{peer.port}" in step(report, "Connect").summary
    first_ehlo, second_ehlo = [dict(s.details) for s in report.steps if s.name == "EHLO"]
    assert first_ehlo["STARTTLS"] == "yes" and first_ehlo["AUTH"] == "no"
    assert second_ehlo["AUTH"] == "CRAM-MD5 LOGIN PLAIN"
    assert "33554432" in second_ehlo["SIZE"] and second_ehlo["SMTPUTF8"] == "yes"
    assert "C: STARTTLS" in report.transcript
    assert "S: 235 2.7.0 Authentication successful" in report.transcript
    assert report.transcript[-4:] == ["C: rset", "S: 250 OK", "C: quit", "S: 221 Bye"]


def test_check_reports_tls_details(smtp_peer):
    peer = smtp_peer("starttls")
    details = dict(step(SMTP.check(config_for(peer)), "TLS").details)

    assert details["TLS version"].startswith("TLSv1.")
    assert "bits" in details["Cipher"]
    assert "trustme" in details["Certificate subject"]
    assert details["Certificate names"] == "localhost, 127.0.0.1"
    assert "Testing CA" in details["Issuer"]
    assert details["Expires"].startswith("3000-01-01")
    assert details["Verification"].startswith("verified")


def test_check_implicit_tls(smtp_peer):
    peer = smtp_peer("tls")
    report = SMTP.check(config_for(peer))

    assert report.ok, report.failure
    names = [s.name for s in report.steps]
    assert names[:4] == ["Resolve host", "Connect", "TLS", "Greeting"]
    assert "STARTTLS" not in names
    assert "with PLAIN" in step(report, "Authenticate").summary


@pytest.mark.parametrize("mechanism", [Mechanism.PLAIN, Mechanism.LOGIN,
                                       Mechanism.CRAM_MD5, Mechanism.AUTO])
def test_check_each_mechanism(smtp_peer, mechanism):
    peer = smtp_peer("starttls")
    report = SMTP.check(config_for(peer, mechanism=mechanism))

    assert report.ok, report.failure
    expected = "CRAM-MD5" if mechanism == Mechanism.AUTO else mechanism.value
    assert dict(step(report, "Authenticate").details)["Mechanism"] == expected
    assert f"C: AUTH {expected}" in "\n".join(report.transcript)


def test_auto_security_upgrades_with_starttls(smtp_peer):
    peer = smtp_peer("starttls")
    report = SMTP.check(config_for(peer, security=Security.AUTO))

    assert report.ok, report.failure
    assert outcomes(report)["STARTTLS"] == Outcome.PASSED
    assert outcomes(report)["TLS"] == Outcome.PASSED


def test_auto_security_without_starttls_warns_and_goes_on(smtp_peer):
    peer = smtp_peer("plain")
    report = SMTP.check(config_for(peer, security=Security.AUTO))

    assert report.ok, report.failure
    warning = step(report, "STARTTLS")
    assert warning.outcome == Outcome.WARNING
    assert "unencrypted" in warning.summary
    assert outcomes(report)["Authenticate"] == Outcome.SKIPPED
    assert outcomes(report)["MAIL FROM"] == Outcome.PASSED


def test_unverified_certificate_is_a_warning(smtp_peer):
    peer = smtp_peer("untrusted")
    report = SMTP.check(config_for(peer, verify_cert=False, ca_cert=""))

    assert report.ok, report.failure
    tls = step(report, "TLS")
    assert tls.outcome == Outcome.WARNING
    assert dict(tls.details)["Verification"] == "not verified (disabled)"
    assert "Testing CA" in dict(tls.details)["Issuer"]


# --- check(): failures explained ----------------------------------------------------------

def test_untrusted_certificate_asks_for_the_ca(smtp_peer):
    peer = smtp_peer("untrusted")
    report = SMTP.check(config_for(peer))

    failure = report.failure
    assert failure.name == "TLS"
    assert "unknown authority" in failure.summary
    assert "add your CA certificate" in failure.summary
    assert "CA certificate" in failure.hint
    assert outcomes(report).get("Authenticate") is None  # nothing after the failed step


def test_certificate_for_another_name(smtp_peer):
    peer = smtp_peer("wrong_name")
    failure = SMTP.check(config_for(peer, host="127.0.0.1")).failure

    assert failure.name == "TLS"
    assert "the certificate is for mail.example.test, not for 127.0.0.1" in failure.summary


def test_expired_certificate_says_when(smtp_peer):
    peer = smtp_peer("expired")
    failure = SMTP.check(config_for(peer)).failure

    assert failure.name == "TLS"
    assert "expired on 2020-01-31" in failure.summary


def test_wrong_password_is_535(smtp_peer):
    peer = smtp_peer("reject")
    failure = SMTP.check(config_for(peer)).failure

    assert failure.name == "Authenticate"
    assert failure.summary.startswith("535: the server rejected the username or password")
    assert "535 5.7.8 Authentication credentials invalid" in failure.summary
    assert "password" in failure.hint


def test_mechanism_not_offered(smtp_peer):
    peer = smtp_peer("tls")  # offers LOGIN PLAIN only
    failure = SMTP.check(config_for(peer, mechanism=Mechanism.CRAM_MD5)).failure

    assert failure.name == "Authenticate"
    assert failure.summary == "the server does not offer CRAM-MD5; it offers LOGIN PLAIN"


def test_credentials_never_cross_an_unencrypted_connection_unless_allowed(smtp_peer):
    peer = smtp_peer("starttls")
    report = SMTP.check(config_for(peer, security=Security.NONE))

    assert report.failure.name == "Authenticate"
    assert report.failure.summary == "Mailroom does not send credentials over an unencrypted connection"
    assert "Allow sign-in without encryption" in report.failure.hint
    assert not any(line.startswith("C: AUTH") for line in report.transcript)


def test_username_but_no_auth_before_starttls(smtp_peer):
    peer = smtp_peer("starttls")
    failure = SMTP.check(config_for(peer, security=Security.NONE, plaintext_auth=True)).failure

    assert failure.name == "Authenticate"
    assert "offers no authentication" in failure.summary
    assert "only offer AUTH after STARTTLS" in failure.hint


def test_starttls_required_but_not_offered(smtp_peer):
    peer = smtp_peer("plain")
    failure = SMTP.check(config_for(peer, security=Security.STARTTLS)).failure

    assert failure.name == "STARTTLS"
    assert failure.summary == "the server does not offer STARTTLS"
    assert "SSL/TLS" in failure.hint


# Elapsed-time bounds below only catch a conversation that waits per operation or forever; they
# leave generous room for a loaded machine. bench/ measures the real figure (timeout + 1 s).
SLACK = 10.0


def test_silent_server_fails_within_the_timeout(smtp_peer):
    peer = smtp_peer("silent")
    started = time.monotonic()
    report = SMTP.check(config_for(peer, timeout=2.0))
    elapsed = time.monotonic() - started

    assert elapsed < 2.0 + SLACK
    assert report.failure.name == "Greeting"
    assert "no answer within 2 s" in report.failure.summary


@pytest.mark.parametrize("security, label", [(Security.STARTTLS, "STARTTLS"), (Security.NONE, "None"),
                                             (Security.AUTO, "Automatic")])
def test_an_implicit_tls_port_is_recognised_long_before_the_timeout(smtp_peer, security, label):
    peer = smtp_peer("tls")
    failure = SMTP.check(config_for(peer, security=security, timeout=30.0)).failure

    # Only the probe on a second connection words it so; the timeout would say "no answer within 30 s".
    assert failure.name == "Greeting"
    assert failure.summary == (f"port {peer.port} expects TLS from the start (implicit TLS, like 465) "
                               f"and sends no greeting before it; you chose {label}")
    assert failure.hint == "choose SSL/TLS as security for this port"


def test_a_short_timeout_on_the_implicit_tls_port_still_gets_the_hint(smtp_peer):
    peer = smtp_peer("tls")
    failure = SMTP.check(config_for(peer, security=Security.STARTTLS, timeout=1.0)).failure

    assert failure.name == "Greeting"
    assert "implicit TLS" in failure.summary + failure.hint
    assert "you chose STARTTLS" in failure.summary + failure.hint


def test_tls_on_a_plain_port(smtp_peer):
    peer = smtp_peer("plain")
    failure = SMTP.check(config_for(peer, security=Security.TLS)).failure

    assert failure.name == "TLS"
    assert failure.summary == (f"the server answered in plain text: port {peer.port} expects "
                               "STARTTLS (or None), you chose SSL/TLS")


def test_connection_refused(smtp_peer):
    peer = smtp_peer("closed")
    failure = SMTP.check(config_for(peer)).failure

    assert failure.name == "Connect"
    assert failure.summary == f"nothing listens on localhost:{peer.port} (connection refused)"
    assert "port" in failure.hint


def test_unresolvable_host():
    config = ServerConfig("smtp", SENDER, SmtpSettings(host="no-such-host.invalid", port=587),
                          network=LOOPBACK, timeout=3.0)
    started = time.monotonic()
    report = SMTP.check(config)

    assert time.monotonic() - started < 3.0 + SLACK
    assert [s.name for s in report.steps] == ["Resolve host"]
    assert "the host name no-such-host.invalid could not be resolved" in report.failure.summary
    assert "spelling" in report.failure.hint or "DNS" in report.failure.hint


def test_refused_sender_is_explained(smtp_peer):
    peer = smtp_peer("refuse_sender")
    failure = SMTP.check(config_for(peer)).failure

    assert failure.name == "MAIL FROM"
    assert "550 5.7.1 Sender not allowed" in failure.summary
    assert "permanent" in failure.summary
    assert "not be allowed to send as mailer@example.test" in failure.hint


# --- secrets --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["starttls", "reject"])
@pytest.mark.parametrize("mechanism", [Mechanism.PLAIN, Mechanism.LOGIN,
                                       Mechanism.CRAM_MD5])
def test_password_never_in_report(smtp_peer, kind, mechanism):
    peer = smtp_peer(kind)
    report = SMTP.check(config_for(peer, mechanism=mechanism))
    text = everything(report)

    assert report.ok == (kind == "starttls")
    assert f"C: AUTH {mechanism.value}" in text
    for secret in secret_forms(peer):
        assert secret not in text
    auth_lines = [line for line in report.transcript if line.startswith("C: AUTH")]
    assert auth_lines and all(line.split()[3:] in ([], ["********"]) for line in auth_lines)


def test_password_never_in_delivery_error(smtp_peer):
    peer = smtp_peer("reject")
    message = build_message(SENDER, ["someone@example.org"], "Hi", "Hello")
    with pytest.raises(DeliveryError) as caught:
        SMTP.send(config_for(peer, mechanism=Mechanism.PLAIN), Envelope.of(message))

    for secret in secret_forms(peer):
        assert secret not in str(caught.value)
        assert secret not in everything(caught.value.report)
    assert "535" in str(caught.value)


# --- send() ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["starttls", "tls", "plain"])
def test_send_delivers(smtp_peer, kind):
    peer = smtp_peer(kind)
    message = build_message(SENDER, ["Ann <ann@example.org>"], "Quarterly report",
                            "Hello Ann,\nsee you.\n", cc=["bob@example.org"],
                            bcc=["hidden@example.org"])

    receipt = SMTP.send(config_for(peer), Envelope.of(message))

    assert receipt.reply.startswith("250 2.0.0 Ok: queued as ")
    assert receipt.message_id == message["Message-ID"]
    assert receipt.report.ok
    [mail] = peer.messages
    assert mail.mail_from == "mailer@example.test"
    assert mail.rcpt_tos == ["ann@example.org", "bob@example.org", "hidden@example.org"]
    got = mail.message
    assert got["From"] == "Portal Mailer <mailer@example.test>"
    assert got["Reply-To"] == "help@example.test"
    assert got["Subject"] == "Quarterly report"
    assert got["To"] == "Ann <ann@example.org>"
    assert got["Cc"] == "bob@example.org"
    assert got["Message-ID"] == receipt.message_id
    assert got["Bcc"] is None and b"hidden@example.org" not in mail.data
    assert got.get_content().replace("\r\n", "\n") == "Hello Ann,\nsee you.\n"
    assert message["Bcc"] == "hidden@example.org"  # the caller's message is left alone


def test_send_sample_message_with_non_ascii(smtp_peer):
    peer = smtp_peer("starttls")
    sender = Sender("admin@bücher.example", "Jörg Müller")
    now = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    message = sample_message(sender, "Zoë <zoe@example.org>", "Städtische Bühne", "Mailhost", now)

    receipt = SMTP.send(config_for(peer, sender), Envelope.of(message))

    [mail] = peer.messages
    assert receipt.reply.startswith("250")
    assert mail.mail_from == "admin@xn--bcher-kva.example"
    assert mail.rcpt_tos == ["zoe@example.org"]
    assert mail.message["From"] == "Jörg Müller <admin@xn--bcher-kva.example>"
    assert mail.message["Subject"] == "Mailroom sample mail from Städtische Bühne via Mailhost"
    assert "2024-05-06 07:08:09 UTC" in mail.message.get_content()
    assert mail.data.isascii()


def test_send_transcript_hides_the_message_body(smtp_peer):
    peer = smtp_peer("plain")
    message = build_message(SENDER, ["ann@example.org"], "Hi", "a body nobody should log\n")
    receipt = SMTP.send(config_for(peer), Envelope.of(message))

    transcript = "\n".join(receipt.report.transcript)
    assert "C: rcpt TO:<ann@example.org>" in transcript
    assert "C: data" in transcript and "S: 354" in transcript
    assert "a body nobody should log" not in transcript
    assert [s.name for s in receipt.report.steps][-3:] == ["MAIL FROM", "RCPT TO", "DATA"]


def test_send_refused_sender_raises(smtp_peer):
    peer = smtp_peer("refuse_sender")
    message = build_message(SENDER, ["ann@example.org"], "Hi", "Hello")

    with pytest.raises(DeliveryError) as caught:
        SMTP.send(config_for(peer), Envelope.of(message))

    error = caught.value
    assert str(error).startswith("MAIL FROM: 550: the server refused the sender")
    assert "550 5.7.1 Sender not allowed" in str(error)
    assert "not be allowed to send as mailer@example.test" in error.hint
    assert peer.messages == []


def test_send_without_recipients_fails_before_connecting(smtp_peer):
    peer = smtp_peer("plain")
    message = build_message(SENDER, [], "Hi", "Hello")

    with pytest.raises(DeliveryError) as caught:
        SMTP.send(config_for(peer), Envelope.of(message))

    assert [s.name for s in caught.value.report.steps] == ["Message"]
    assert caught.value.report.transcript == []


def test_send_to_silent_server_raises_within_the_timeout(smtp_peer):
    peer = smtp_peer("silent")
    message = build_message(SENDER, ["ann@example.org"], "Hi", "Hello")
    started = time.monotonic()

    with pytest.raises(DeliveryError) as caught:
        SMTP.send(config_for(peer, timeout=1.0), Envelope.of(message))

    assert time.monotonic() - started < 1.0 + SLACK
    assert "no answer within 1 s" in str(caught.value)


# --- guard rails ------------------------------------------------------------------------------

def test_network_guard_keeps_tests_off_the_network():
    config = ServerConfig("smtp", SENDER, SmtpSettings(host="192.0.2.1", port=587), network=LOOPBACK,
                          timeout=3.0)
    report = SMTP.check(config)

    assert report.failure.name == "Connect"
    assert "test network guard" in report.failure.summary


def test_exchange_online_basic_auth_points_to_oauth():
    rejected = Rejected(
        550, "5.7.30 Basic authentication is not supported for Client Submission")
    explained = explain_reply("MAIL FROM", rejected)

    assert explained.summary.startswith("550: Exchange Online")
    assert "OAuth 2.0" in explained.hint
