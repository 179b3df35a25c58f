"""Every conversation ends with its deadline, even against a peer that never stops sending.

A trickling peer (tests/peers/trickle.py) answers a byte every 0.2 s and never finishes, or stalls a
TLS handshake: each read gets something, so socket timeouts alone would wait for as long as it
trickles (a minute here, forever in the wild). Each test gives the conversation a 2 s timeout and
asserts that it ended well before the trickle would have (FINISHED_BY, a correctness bound, not a
benchmark: the machine may be loaded), that the failure says no answer came in time, and that no
thread of the conversation is left behind.
"""
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.peers.hostile import HostilePeer
from tests.peers.tls import server_context
from tests.peers.trickle import TricklePeer
from webapp.mail import oauth, receiver, transport_for
from webapp.mail.auth import AccessToken, BearerAuth, NoAuth, PasswordAuth
from webapp.mail.config import Sender, ServerConfig
from webapp.mail.deadline import WATCHDOG_THREAD, Deadline, DeadlineExceeded, Watchdog
from webapp.mail.dns import Resolver
from webapp.mail.egress import Network, Policy, parse_rules
from webapp.mail.envelope import Envelope
from webapp.mail.ews import EwsTransport
from webapp.mail.ews_protocol import EwsSettings
from webapp.mail.graph import GraphTransport
from webapp.mail.graph_protocol import GraphSettings
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
    """Threads started since `before` that are not the peers', nor the process's one watchdog thread (it
    watches every connection of the process and lives as long as it: assert_no_thread_left counts it)."""
    return [t for t in threading.enumerate() if t not in before and t.is_alive()
            and not t.name.startswith(("trickle-peer", "hostile")) and t.name != WATCHDOG_THREAD]


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WATCHDOG_THREAD and t.is_alive()]


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
    assert len(watchdog_threads()) <= 1, watchdog_threads()


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


# -- EWS: Validate's Connect step (its own TLS handshake) and exchangelib's requests ---------------------

def ews_config(url: str, ca_pem: str) -> ServerConfig:
    settings = EwsSettings(ews_url=url + "/EWS/Exchange.asmx", ews_version="Exchange2016", ews_ca_cert=ca_pem)
    return ServerConfig("ews", SENDER, settings, LOOPBACK, PasswordAuth("EXAMPLE\\mailer", "Ews-Pass-7wq"), TIMEOUT)


@pytest.mark.parametrize("script", [[("stall_tls",)], [("trickle_tls",)]], ids=["stalled", "trickled"])
def test_ews_validate_s_tls_handshake_ends_with_the_deadline_and_says_so(trickler, test_ca_pem, script):
    before = set(threading.enumerate())
    peer = trickler(script)
    started = time.monotonic()
    report = EwsTransport().check(ews_config(f"https://127.0.0.1:{peer.port}", test_ca_pem))
    assert_ended_in_time(started, peer, before)
    failure = report.failure
    assert failure.name == "Connect", [(s.name, s.summary) for s in report.steps]
    assert failure.summary == (f"no answer within {TIMEOUT:g} s: 127.0.0.1 port {peer.port} accepted the connection "
                               "but did not finish the TLS handshake")  # not "the TLS handshake failed"
    assert "firewall" in failure.hint


def test_ews_validate_s_sign_in_ends_with_the_deadline_when_the_answer_trickles(test_ca, test_ca_pem):
    before = set(threading.enumerate())
    peer = HostilePeer("trickle", server_context(test_ca))  # a byte every 0.2 s for 120 s
    try:
        started = time.monotonic()
        report = EwsTransport().check(ews_config(peer.url, test_ca_pem))
        elapsed = time.monotonic() - started
    finally:
        peer.stop()
    assert elapsed < FINISHED_BY, f"{elapsed:.1f} s"
    failure = report.failure
    assert failure.name == "Sign in" and f"no answer within {TIMEOUT:g} s" in failure.summary, failure.summary
    assert_no_thread_left(before)


# -- OAuth: a token endpoint over https that trickles its answer ------------------------------------------

def test_a_token_request_ends_with_the_deadline_when_the_answer_trickles(test_ca, test_ca_pem):
    before = set(threading.enumerate())
    peer = HostilePeer("trickle", server_context(test_ca))
    client = oauth.Client(provider="other", client_id="app:1", client_secret="local/secret:", authorize_url="",
                          token_url=peer.url + "/token", scope="mail.send")
    try:
        started = time.monotonic()
        with pytest.raises((oauth.OAuthFailure, DeadlineExceeded)) as failed:
            tokens = oauth.client_credentials(client, Network(LOOPBACK.policy, extra_ca_pem=test_ca_pem),
                                              Deadline(TIMEOUT))
            tokens.access_token  # noqa: B018
        elapsed = time.monotonic() - started
    finally:
        peer.stop()
    assert elapsed < FINISHED_BY, f"{elapsed:.1f} s"
    failure = oauth.as_failure(failed.value, "other")
    assert failure.error == "timeout" and "did not answer in time" in str(failure) and failure.hint
    assert_no_thread_left(before)


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


# -- DNS: dnspython's lifetime is the time left -----------------------------------------------------------

def test_a_dnspython_resolver_asks_for_no_longer_than_the_time_left():
    deadline = Deadline(TIMEOUT)
    resolver = Resolver((("127.0.0.1", 53),)).dnspython(deadline)
    assert 0 < resolver.lifetime <= TIMEOUT and resolver.timeout <= resolver.lifetime


# -- HTTP (Graph, Gmail, EWS, token endpoints): a TLS handshake that stalls or trickles ------------------
# These held before the watchdogs: the socket timeout set before a handshake (the time left) bounds the
# whole handshake in Python's ssl, not each read. They guard that the adapter keeps setting it.

class FixedToken:
    def token(self, deadline):
        return AccessToken("fixed-access-token", datetime.now(UTC) + timedelta(hours=1), ("Mail.Send",))


@pytest.mark.parametrize("script", [[("stall_tls",)], [("trickle_tls",)]], ids=["stalled", "trickled"])
def test_an_https_request_s_tls_handshake_ends_with_the_deadline(trickler, test_ca_pem, script):
    before = set(threading.enumerate())
    peer = trickler(script)
    config = ServerConfig("graph", SENDER, GraphSettings(graph_endpoint=f"https://127.0.0.1:{peer.port}"),
                          Network(LOOPBACK.policy, extra_ca_pem=test_ca_pem),
                          BearerAuth("sender@example.test", FixedToken()), TIMEOUT)
    started = time.monotonic()
    report = GraphTransport().check(config)
    assert_ended_in_time(started, peer, before)
    failure = report.failure
    assert failure.name == "Mailbox", [(s.name, s.summary) for s in report.steps]
    assert f"no answer within {TIMEOUT:g} s" in failure.summary and failure.hint  # not "certificate not verified"


def test_a_token_request_s_trickled_tls_handshake_ends_with_the_deadline(trickler, test_ca_pem):
    before = set(threading.enumerate())
    peer = trickler([("trickle_tls",)])
    client = oauth.Client(provider="other", client_id="app:1", client_secret="local/secret:", authorize_url="",
                          token_url=f"https://127.0.0.1:{peer.port}/token", scope="mail.send")
    started = time.monotonic()
    with pytest.raises((oauth.OAuthFailure, DeadlineExceeded)) as failed:
        oauth.client_credentials(client, Network(LOOPBACK.policy, extra_ca_pem=test_ca_pem), Deadline(TIMEOUT))
    assert_ended_in_time(started, peer, before)
    assert oauth.as_failure(failed.value, "other").error == "timeout"


# -- the process's one watchdog thread -------------------------------------------------------------------
# Real connections (socket pairs), the Watchdog as its callers use it.

def open_descriptors() -> int | None:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None


def still_talks(ours_end: socket.socket, peer_end: socket.socket) -> bool:
    """Both ways: the connection was not shut down."""
    ours_end.sendall(b"x")
    peer_end.sendall(b"y")
    peer_end.settimeout(5)
    ours_end.settimeout(5)
    return peer_end.recv(1) == b"x" and ours_end.recv(1) == b"y"


def test_many_watchdogs_run_on_one_thread_and_leave_no_thread_nor_descriptor_behind():
    before, descriptors = set(threading.enumerate()), open_descriptors()
    pairs = [socket.socketpair() for _ in range(40)]
    watchdogs = [Watchdog(a, Deadline(60)) for a, _ in pairs]
    assert len(watchdog_threads()) == 1 and not ours(before)  # forty armed: one thread, and no other
    for watchdog in watchdogs:
        watchdog.cancel()
    for _ in range(500):  # a kept session: armed and cancelled again for every message
        Watchdog(pairs[0][0], Deadline(60)).cancel()
    assert len(watchdog_threads()) == 1 and not ours(before)
    assert not any(w.fired for w in watchdogs) and all(still_talks(a, b) for a, b in pairs)
    for a, b in pairs:
        a.close(), b.close()
    assert open_descriptors() == descriptors  # every duplicate closed by cancel()


def test_a_watchdog_armed_after_a_later_one_fires_at_its_own_deadline():
    late, soon = socket.socketpair(), socket.socketpair()
    try:
        waiting = Watchdog(late[0], Deadline(60))  # the thread sleeps until this one's time...
        started = time.monotonic()
        firing = Watchdog(soon[0], Deadline(0.2))  # ...and is woken for an earlier one
        soon[0].settimeout(FINISHED_BY)
        assert soon[0].recv(1) == b""  # shut down: the read ends
        assert firing.fired and time.monotonic() - started < FINISHED_BY
        assert not waiting.fired and still_talks(*late)
        waiting.cancel(), firing.cancel()
    finally:
        for s in (*late, *soon):
            s.close()


def test_a_cancelled_watchdog_never_shuts_its_connection_down_even_once_its_deadline_is_over():
    a, b = socket.socketpair()
    try:
        watchdog = Watchdog(a, Deadline(0.2))
        watchdog.cancel()
        time.sleep(0.6)  # well past the deadline: the thread has been there
        assert not watchdog.fired and still_talks(a, b)
    finally:
        a.close(), b.close()


def test_cancel_and_deadline_racing_either_fired_and_shut_down_or_neither():
    """A deadline over while cancel() runs: once cancel() returns, `fired` is final and says whether the
    connection was shut down; a duplicate descriptor is closed either way, never shut down after cancel."""
    descriptors = open_descriptors()
    for n in range(300):
        a, b = socket.socketpair()
        try:
            watchdog = Watchdog(a, Deadline(0.0002 * (n % 10)))
            if n % 3:
                time.sleep(0.0001 * (n % 7))
            watchdog.cancel()
            time.sleep(0.002)  # anything still due would be done by now (it is not: cancelled)
            a.setblocking(False)
            try:
                shut = a.recv(1) == b""
            except BlockingIOError:
                shut = False
            assert shut == watchdog.fired, n
        finally:
            a.close(), b.close()
    assert open_descriptors() == descriptors


def test_a_forked_child_does_not_end_its_parent_s_conversations_and_watches_its_own():
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    parent_side, peer_side = socket.socketpair()
    child_side, child_peer = socket.socketpair()
    try:
        watchdog = Watchdog(parent_side, Deadline(0.3))  # armed when the child is forked
        pid = os.fork()
        if pid == 0:  # the child: its own watchdog fires on its own (new) thread; the parent's is not its own
            code = 1
            try:
                own = Watchdog(child_side, Deadline(0.1))
                child_side.settimeout(10)
                if child_side.recv(1) == b"" and own.fired:
                    time.sleep(0.6)  # past the parent's deadline
                    code = 0
            finally:
                os._exit(code)
        watchdog.cancel()  # in the parent only
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not watchdog.fired and still_talks(parent_side, peer_side)
    finally:
        for s in (parent_side, peer_side, child_side, child_peer):
            s.close()
