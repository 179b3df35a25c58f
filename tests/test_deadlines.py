"""Every conversation ends with its deadline, even against a peer that never stops sending.

A trickling peer (tests/peers/trickle.py) answers a byte every 0.2 s and never finishes, or stalls a
TLS handshake: each read gets something, so socket timeouts alone would wait for as long as it
trickles (a minute here, forever in the wild). Each test gives the conversation a 2 s timeout and
asserts that it ended well before the trickle would have (FINISHED_BY, a correctness bound, not a
benchmark: the machine may be loaded), that the failure says no answer came in time, and that no
thread of the conversation is left behind.
"""
import threading
import time

import pytest

from tests.peers.tls import server_context
from tests.peers.trickle import TricklePeer
from webapp.mail import receiver, transport_for
from webapp.mail.auth import NoAuth, PasswordAuth
from webapp.mail.config import Sender, ServerConfig
from webapp.mail.deadline import Deadline
from webapp.mail.egress import Network, Policy, parse_rules
from webapp.mail.envelope import Envelope
from webapp.mail.message import build_message
from webapp.mail.proxy import Proxy, ProxySettings
from webapp.mail.receiver import Receiver, ReceiverSettings
from webapp.mail.report import DeliveryError, Outcome, StepFailed
from webapp.mail.smtp import Security, SmtpSettings

TIMEOUT = 2.0
FINISHED_BY = 20.0  # seconds: the trickles last 60 s
LOOPBACK = Network(Policy(global_allow=tuple(parse_rules("127.0.0.0/8\n::1", "the tests' allow list"))))
SENDER = Sender("mailer@example.test", "Portal Mailer")


@pytest.fixture
def trickler(test_ca):
    started: list[TricklePeer] = []

    def start(script: list[tuple], **options) -> TricklePeer:
        peer = TricklePeer(script, server_context(test_ca), **options)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


def ours(before: set) -> list[threading.Thread]:
    """Threads started since `before` that are not the peers'."""
    return [t for t in threading.enumerate() if t not in before and t.is_alive()
            and not t.name.startswith(("trickle-peer", "hostile"))]


def assert_ended_in_time(started: float, peer: TricklePeer, before: set) -> None:
    elapsed = time.monotonic() - started
    assert peer.trickling.is_set(), "the peer never got to trickle: the script does not fit the conversation"
    assert peer.lasts >= 3 * FINISHED_BY and elapsed < FINISHED_BY, f"{elapsed:.1f} s"
    assert_no_thread_left(before)


def assert_no_thread_left(before: set) -> None:
    """Every thread the conversation started (watchdogs, name resolution) has ended."""
    waited_until = time.monotonic() + 5
    while ours(before) and time.monotonic() < waited_until:
        time.sleep(0.05)
    assert not ours(before), f"left behind: {ours(before)}"


# -- SMTP -------------------------------------------------------------------------------------------------

GREETING = b"220 mx.trickle.test ESMTP\r\n"
EHLO_PLAIN = b"250-mx.trickle.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
EHLO_TLS = b"250-mx.trickle.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
OK = b"250 2.0.0 OK\r\n"
IMPLICIT = [("tls",), ("send", GREETING), ("line",), ("send", EHLO_TLS)]
STARTTLS = [("send", GREETING), ("line",), ("send", EHLO_PLAIN), ("line",), ("send", b"220 2.0.0 Ready\r\n")]
TRANSACTION = [("line",), ("send", b"235 2.7.0 OK\r\n"), ("line",), ("send", OK), ("line",), ("send", OK),
               ("line",), ("send", b"354 Go ahead\r\n"), ("data",)]

# (security, script, the step it ends). The handshake cases held before the client's watchdog too: Python's
# ssl applies the socket timeout set before a handshake (the time left) to the whole handshake.
SMTP_TRICKLES = {
    "implicit TLS: handshake stalled": (Security.TLS, [("stall_tls",)], "TLS"),
    "implicit TLS: handshake trickled": (Security.TLS, [("trickle_tls",)], "TLS"),
    "implicit TLS: greeting": (Security.TLS, [("tls",), ("trickle", b"220 ")], "Greeting"),
    "implicit TLS: EHLO answer": (Security.TLS, [("tls",), ("send", GREETING), ("line",), ("trickle", b"250-")],
                                  "EHLO"),
    "implicit TLS: AUTH answer": (Security.TLS, [*IMPLICIT, ("line",), ("trickle", b"235 ")], "Authenticate"),
    "STARTTLS: greeting": (Security.STARTTLS, [("trickle", b"220 ")], "Greeting"),
    "STARTTLS: answer to STARTTLS": (Security.STARTTLS, [*STARTTLS[:-1], ("trickle", b"220 ")], "STARTTLS"),
    "STARTTLS: handshake stalled": (Security.STARTTLS, [*STARTTLS, ("stall_tls",)], "TLS"),
    "STARTTLS: handshake trickled": (Security.STARTTLS, [*STARTTLS, ("trickle_tls",)], "TLS"),
    "STARTTLS: EHLO answer over TLS": (Security.STARTTLS, [*STARTTLS, ("tls",), ("line",), ("trickle", b"250-")],
                                       "EHLO"),
    "STARTTLS: AUTH answer": (Security.STARTTLS, [*STARTTLS, ("tls",), ("line",), ("send", EHLO_TLS), ("line",),
                                                  ("trickle", b"235 ")], "Authenticate"),
}


def smtp_config(peer: TricklePeer, security: Security, ca_pem: str) -> ServerConfig:
    settings = SmtpSettings(host="127.0.0.1", port=peer.port, security=security, ca_cert=ca_pem)
    return ServerConfig("smtp", SENDER, settings, network=LOOPBACK, auth=PasswordAuth("mailer", "Trickle-Pass-4"),
                        timeout=TIMEOUT, label="Trickling peer")


@pytest.mark.parametrize("case", SMTP_TRICKLES)
def test_an_smtp_check_ends_with_its_deadline_whatever_trickles(trickler, test_ca_pem, case):
    security, script, ended = SMTP_TRICKLES[case]
    before = set(threading.enumerate())
    peer = trickler(script)
    started = time.monotonic()
    report = transport_for("smtp").check(smtp_config(peer, security, test_ca_pem))
    assert_ended_in_time(started, peer, before)
    failure = report.failure
    assert failure is not None and failure.name == ended, [(s.name, s.summary) for s in report.steps]
    assert f"no answer within {TIMEOUT:g} s" in failure.summary and failure.hint
    if ended == "Greeting":  # it began one: no hint that the port may want something else
        assert "began its greeting but did not finish it" in failure.summary


@pytest.mark.parametrize("security,script", [
    (Security.NONE, [("send", GREETING), ("line",), ("send", b"250 mx.trickle.test\r\n"), ("line",), ("send", OK),
                     ("line",), ("send", OK), ("line",), ("send", b"354 Go ahead\r\n"), ("data",),
                     ("trickle", b"250 ")]),
    (Security.TLS, [*IMPLICIT, *TRANSACTION, ("trickle", b"250 ")]),
], ids=["plain", "implicit TLS"])
def test_an_smtp_send_ends_with_its_deadline_when_the_answer_to_data_trickles(trickler, test_ca_pem, security,
                                                                              script):
    before = set(threading.enumerate())
    peer = trickler(script)
    config = smtp_config(peer, security, test_ca_pem)
    if security == Security.NONE:
        config = ServerConfig("smtp", SENDER, config.settings, network=LOOPBACK, auth=NoAuth(), timeout=TIMEOUT)
    message = build_message(SENDER, ["someone@example.test"], "Trickle", "Hello")
    started = time.monotonic()
    with pytest.raises(DeliveryError) as failed:
        transport_for("smtp").send(config, Envelope.of(message))
    assert_ended_in_time(started, peer, before)
    failure = failed.value.report.failure
    assert failure.name == "DATA" and failure.outcome == Outcome.FAILED
    assert f"no answer within {TIMEOUT:g} s" in failure.summary and failure.hint


# -- proxies: a proxy that trickles its answer to CONNECT or SOCKS5 ---------------------------------------

PROXY_TRICKLES = {
    "http": [("head",), ("trickle", b"HTTP/1.1 200 ")],
    "socks5": [("read", 3), ("send", b"\x05\x00"), ("read", 10), ("trickle", b"\x05\x00\x00\x03\xff")],
}


@pytest.mark.parametrize("kind", PROXY_TRICKLES)
def test_an_smtp_check_through_a_trickling_proxy_ends_with_the_deadline(trickler, test_ca_pem, kind):
    before = set(threading.enumerate())
    peer = trickler(PROXY_TRICKLES[kind])
    network = Network(LOOPBACK.policy, proxy=Proxy(ProxySettings(kind=kind, host="127.0.0.1", port=peer.port)))
    settings = SmtpSettings(host="127.0.0.1", port=25, security=Security.STARTTLS, ca_cert=test_ca_pem)
    started = time.monotonic()
    report = transport_for("smtp").check(ServerConfig("smtp", SENDER, settings, network=network, auth=NoAuth(),
                                                      timeout=TIMEOUT))
    assert_ended_in_time(started, peer, before)
    failure = report.failure
    assert failure.name == "Proxy", [(s.name, s.summary) for s in report.steps]
    assert failure.summary == f"no answer from the proxy within {TIMEOUT:g} s" and failure.hint


# -- the mail receiver login (POP3, IMAP) over TLS --------------------------------------------------------

POP3_READY = b"+OK Dovecot ready.\r\n"
IMAP_READY = b"* OK Dovecot ready.\r\n"
RECEIVER_TRICKLES = {  # (protocol, security, script)
    "POP3 implicit TLS: handshake stalled": ("pop3", "tls", [("stall_tls",)]),
    "POP3 implicit TLS: handshake trickled": ("pop3", "tls", [("trickle_tls",)]),
    "POP3 implicit TLS: greeting": ("pop3", "tls", [("tls",), ("trickle", b"+OK ")]),
    "POP3 implicit TLS: answer to PASS": ("pop3", "tls", [("tls",), ("send", POP3_READY), ("line",),
                                                          ("send", b"+OK\r\n"), ("line",), ("trickle", b"+OK ")]),
    "POP3 STLS: handshake trickled": ("pop3", "starttls", [
        ("send", POP3_READY), ("line",), ("send", b"+OK\r\nUSER\r\nSTLS\r\n.\r\n"), ("line",),
        ("send", b"+OK Begin TLS negotiation now.\r\n"), ("trickle_tls",)]),
    "IMAP implicit TLS: greeting": ("imap", "tls", [("tls",), ("trickle", b"* OK ")]),
    "IMAP implicit TLS: CAPABILITY answer": ("imap", "tls", [("tls",), ("send", IMAP_READY), ("line",),
                                                             ("trickle", b"* CAPABILITY ")]),
    "IMAP STARTTLS: handshake trickled": ("imap", "starttls", [
        ("send", IMAP_READY), ("line",), ("tagged", b"* CAPABILITY IMAP4rev1 STARTTLS\r\n", b"OK done"), ("line",),
        ("tagged", b"", b"OK Begin TLS negotiation now"), ("trickle_tls",)]),
}


@pytest.mark.parametrize("case", RECEIVER_TRICKLES)
def test_the_mail_receiver_login_ends_with_the_deadline_whatever_trickles(trickler, test_ca_pem, case):
    protocol, security, script = RECEIVER_TRICKLES[case]
    before = set(threading.enumerate())
    peer = trickler(script)
    settings = ReceiverSettings(protocol=protocol, host="127.0.0.1", port=peer.port, security=security,
                                username="mailer")
    started = time.monotonic()
    with pytest.raises(StepFailed) as failed:
        receiver.login(Receiver(settings, "Receiver-Pass-3", test_ca_pem), LOOPBACK, Deadline(TIMEOUT))
    assert_ended_in_time(started, peer, before)
    assert failed.value.summary == f"no answer from the mail receiver 127.0.0.1:{peer.port} within {TIMEOUT:g} s"
    assert failed.value.hint
