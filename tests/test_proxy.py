"""Connections through a proxy (mail/proxy.py, and HTTP through it in mail/http.py), against real
proxies on loopback (tests/peers/proxies.py: microsocks, Dante, tinyproxy) and real servers behind
them: what gets through, each refusal in words, and what the egress policy checks."""
import socket
import threading
import time

import pytest
import requests

from tests.peers.https import HttpsPeer
from tests.peers.tls import server_context
from webapp.mail import http, proxy
from webapp.mail.deadline import Deadline, DeadlineExceeded
from webapp.mail.egress import EgressRefused, Network, Policy, parse_rules
from webapp.mail.proxy import Proxy, ProxyFailed, ProxyKind, ProxySettings

ALLOW_LOOPBACK = tuple(parse_rules("127.0.0.0/8\n::1", "the tests' allow list"))


def network(peer=None, *, password=None, username=None, remote_dns=False, deny="", kind=None) -> Network:
    policy = Policy(portal_deny=tuple(parse_rules(deny, "the portal's deny list")), global_allow=ALLOW_LOOPBACK)
    if peer is None:
        return Network(policy)
    settings = ProxySettings(kind or {"socks5_open": "socks5"}.get(peer.kind, peer.kind), peer.host, peer.port,
                             peer.username if username is None else username, remote_dns)
    return Network(policy, proxy=Proxy(settings, peer.password if password is None else password))


def greeting(connection: proxy.Connection) -> bytes:
    connection.sock.settimeout(5)
    with connection.sock:
        return connection.sock.recv(200)


@pytest.mark.parametrize("kind", ["socks5", "socks5_open", "socks4", "http"])
def test_a_tunnel_reaches_the_server_through_each_kind_of_proxy(kind, proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer(kind)
    connection = proxy.connect(network(peer), "127.0.0.1", smtp.port, Deadline(5))
    assert greeting(connection).startswith(b"220 ")
    assert connection.proxy_address == f"127.0.0.1:{peer.port}" and connection.target == f"127.0.0.1:{smtp.port}"
    step = connection.step()
    assert "tunnel to 127.0.0.1" in step.summary and ("Names", "resolved by Mailroom: the egress policy checked "
                                                               "every address") in step.details


def test_the_proxy_is_handed_the_checked_address_not_the_name(proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer("http")
    connection = proxy.connect(network(peer), "localhost", smtp.port, Deadline(5))
    greeting(connection)
    asked = [line for line in peer.log().splitlines() if "Request" in line and "CONNECT" in line]
    assert asked and all("localhost" not in line for line in asked), asked  # the address it resolves to


def test_socks5_with_names_resolved_at_the_proxy_hands_over_the_name(proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer("socks5")
    connection = proxy.connect(network(peer, remote_dns=True), "localhost", smtp.port, Deadline(5))
    assert greeting(connection).startswith(b"220 ")
    assert connection.peer is None and connection.target == f"localhost:{smtp.port}"
    assert ("Names", "resolved by the proxy: the egress policy checked the name and port only") in \
        connection.step().details


def test_names_resolved_at_the_proxy_are_checked_by_name_only(proxy_peer, smtp_peer):
    """What the policy can and cannot check when the proxy resolves: a rule on the name holds, a
    rule on the address cannot (the address is never known here)."""
    smtp = smtp_peer("plain")
    peer = proxy_peer("socks5")
    with pytest.raises(EgressRefused, match="localhost"):
        proxy.connect(network(peer, remote_dns=True, deny="localhost"), "localhost", smtp.port, Deadline(5))
    address_rule = f"127.0.0.1/32 {smtp.port}"
    with pytest.raises(EgressRefused):  # resolved here (the default), the address rule holds
        proxy.connect(network(peer, deny=address_rule), "localhost", smtp.port, Deadline(5))
    assert greeting(proxy.connect(network(peer, remote_dns=True, deny=address_rule), "localhost", smtp.port,
                                  Deadline(5))).startswith(b"220 ")


def test_remote_names_are_only_for_socks5():
    assert ProxySettings("http", "proxy.example", remote_dns=True).remote_dns is False
    assert ProxySettings("socks4", "proxy.example", remote_dns=True).remote_dns is False
    assert ProxySettings("socks5", "proxy.example", remote_dns=True).remote_dns is True


def test_the_egress_policy_checks_the_proxys_own_address(proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer("socks5")
    with pytest.raises(EgressRefused) as refused:
        proxy.connect(network(peer, deny=f"127.0.0.1 {peer.port}"), "127.0.0.1", smtp.port, Deadline(5))
    assert refused.value.port == peer.port


def test_a_target_the_policy_refuses_is_never_asked_of_the_proxy(proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer("http")
    with pytest.raises(EgressRefused) as refused:
        proxy.connect(network(peer, deny=f"127.0.0.1 {smtp.port}"), "127.0.0.1", smtp.port, Deadline(5))
    assert refused.value.port == smtp.port
    assert "Request (file descriptor" not in peer.log()  # tinyproxy logs each request it reads so


def test_a_wrong_socks5_password_is_said_as_such(proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer("socks5")
    with pytest.raises(ProxyFailed) as failed:
        proxy.connect(network(peer, password="wrong"), "127.0.0.1", smtp.port, Deadline(5))
    assert failed.value.summary == f"the SOCKS5 proxy 127.0.0.1:{peer.port} refused the username or password"
    assert failed.value.credentials and "username and password" in failed.value.hint


def test_a_socks5_proxy_that_wants_a_password_says_so(proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer("socks5")
    with pytest.raises(ProxyFailed, match="wants a username and password"):
        proxy.connect(network(peer, username="", password=""), "127.0.0.1", smtp.port, Deadline(5))


def test_an_http_proxy_refuses_without_the_right_password(proxy_peer, smtp_peer):
    """tinyproxy answers 407 without credentials and 401 to wrong ones; both are the proxy's sign-in."""
    smtp = smtp_peer("plain")
    peer = proxy_peer("http")
    with pytest.raises(ProxyFailed) as wrong:
        proxy.connect(network(peer, password="wrong"), "127.0.0.1", smtp.port, Deadline(5))
    assert wrong.value.summary == (f"the HTTP proxy 127.0.0.1:{peer.port} refused the username or password "
                                   "(401 Unauthorized)")
    assert wrong.value.code == 401 and wrong.value.credentials
    with pytest.raises(ProxyFailed, match=r"wants a username and password \(407"):
        proxy.connect(network(peer, username="", password=""), "127.0.0.1", smtp.port, Deadline(5))


def test_an_http_proxy_that_allows_other_ports_only_answers_403(proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer("http", connect_ports=[443])
    with pytest.raises(ProxyFailed) as refused:
        proxy.connect(network(peer), "127.0.0.1", smtp.port, Deadline(5))
    assert refused.value.summary == (f"the HTTP proxy 127.0.0.1:{peer.port} does not allow a tunnel to "
                                     f"127.0.0.1:{smtp.port} (403 Forbidden)")
    assert "port 443" in refused.value.hint


@pytest.mark.parametrize("kind, words", [
    ("socks5_open", "does not allow a connection to 127.0.0.1:{port} (not allowed by its rules, code 2)"),
    ("socks4", "rejected the connection to 127.0.0.1:{port} or could not make it (request rejected or failed, "
               "code 91)"),
])
def test_a_socks_proxy_whose_rules_refuse_the_target(kind, words, proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer(kind, refused_port=smtp.port)
    with pytest.raises(ProxyFailed) as refused:
        proxy.connect(network(peer), "127.0.0.1", smtp.port, Deadline(5))
    assert words.format(port=smtp.port) in refused.value.summary


def test_a_closed_target_behind_the_proxy(proxy_peer, smtp_peer):
    closed = smtp_peer("closed")
    peer = proxy_peer("socks5")
    with pytest.raises(ProxyFailed, match=r"nothing listens there \(connection refused, code 5\)"):
        proxy.connect(network(peer), "127.0.0.1", closed.port, Deadline(5))


def test_a_proxy_that_is_down(proxy_peer, smtp_peer):
    smtp = smtp_peer("plain")
    peer = proxy_peer("socks5")
    peer.stop()
    with pytest.raises(ProxyFailed) as down:
        proxy.connect(network(peer), "127.0.0.1", smtp.port, Deadline(5))
    assert down.value.summary == f"nothing listens on the proxy 127.0.0.1:{peer.port} (connection refused)"


def test_the_wrong_kind_of_proxy_on_the_port(proxy_peer, smtp_peer):
    """An HTTP CONNECT sent to a SOCKS5 proxy: microsocks closes the connection at once."""
    smtp = smtp_peer("plain")
    peer = proxy_peer("socks5")
    with pytest.raises(ProxyFailed) as wrong:
        proxy.connect(network(peer, kind="http"), "127.0.0.1", smtp.port, Deadline(5))
    assert "is it an HTTP proxy?" in wrong.value.hint


@pytest.fixture
def silent_listener():
    """Accepts connections and never answers: a proxy that hangs."""
    server = socket.create_server(("127.0.0.1", 0))
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for sock in held:
        sock.close()
    server.close()


def test_a_silent_proxy_is_given_up_on_at_the_deadline(silent_listener, smtp_peer):
    smtp = smtp_peer("plain")
    net = Network(Policy(global_allow=ALLOW_LOOPBACK),
                  proxy=Proxy(ProxySettings("socks5", "127.0.0.1", silent_listener, "someone"), "pw"))
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        proxy.connect(net, "127.0.0.1", smtp.port, Deadline(1))
    assert time.monotonic() - started < 5  # a hang guard, with slack


# --- HTTP through the proxy (mail/http.py) ---------------------------------------------------------

def _hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"hello over {environ['wsgi.url_scheme']}".encode()]


@pytest.fixture
def https_server(test_ca):
    server = HttpsPeer(_hello, server_context(test_ca))
    yield server
    server.stop()


@pytest.mark.parametrize("kind", ["socks5", "http"])
def test_https_goes_through_the_proxy_with_the_targets_certificate_verified(kind, proxy_peer, https_server,
                                                                           test_ca_pem):
    peer = proxy_peer(kind)
    net = network(peer)
    net.extra_ca_pem = test_ca_pem
    response = http.session(net, Deadline(5)).get(f"{https_server.url}/hello")
    assert response.status_code == 200 and response.text == "hello over https"
    if kind == "http":
        assert f"CONNECT 127.0.0.1:{https_server.port}" in peer.log()


def test_an_http_proxy_refusal_is_a_connection_error_in_words(proxy_peer, https_server, test_ca_pem):
    peer = proxy_peer("http")
    net = network(peer, password="wrong")
    net.extra_ca_pem = test_ca_pem
    with pytest.raises(requests.ConnectionError) as refused:
        http.session(net, Deadline(5)).get(f"{https_server.url}/hello")
    assert http.reason(refused.value) == (f"the HTTP proxy 127.0.0.1:{peer.port} refused the username or password "
                                          "(401 Unauthorized); check the proxy's username and password")
    assert peer.password not in str(refused.value)


def test_without_a_proxy_http_connects_directly(https_server, test_ca_pem):
    net = network()
    net.extra_ca_pem = test_ca_pem
    assert http.session(net, Deadline(5)).get(f"{https_server.url}/x").text == "hello over https"


def test_settings_round_trip_and_bind_the_password_to_the_proxy():
    settings = ProxySettings.from_dict({"kind": "http", "host": "Proxy.Example ", "port": None, "username": "u"})
    assert settings.port == 8080 and ProxySettings.from_dict(settings.to_dict()) == settings
    assert settings.destination() == {"kind": "http", "host": "proxy.example", "port": 8080}
    assert ProxySettings.from_dict({}).kind == ProxyKind.NONE and ProxySettings().to_dict() == {}
    assert ProxySettings("socks5", "p", 1080).destination() != ProxySettings("socks5", "p", 1081).destination()
