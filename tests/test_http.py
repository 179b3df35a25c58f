"""The HTTP layer every portal's connection goes through (mail/http.py):

- plain http:// for a server on this machine only (a local OAuth or API server without TLS),
  never off it: the addresses a form accepts, and the connection the HTTP layer refuses before
  connecting when a name resolves elsewhere;
- every answer read up to a limit: an endless, cut-off, over-announced, compressed or deeply
  nested answer (tests/peers/hostile.py) is a failed step in words for each kind of caller
  (the Graph transport, EWS through exchangelib, a token endpoint, discovery, the Validate
  page), and memory stays within a few times the limit.
"""
import base64
import json
import socket
import threading
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.peers.hostile import HostilePeer, bomb
from tests.peers.tls import server_context
from webapp.mail import http, oauth
from webapp.mail.auth import AccessToken, BearerAuth, PasswordAuth
from webapp.mail.config import Sender, ServerConfig
from webapp.mail.deadline import Deadline
from webapp.mail.egress import EgressRefused, Network, Policy, parse_rules
from webapp.mail.ews import EwsSettings, EwsTransport
from webapp.mail.graph import GraphTransport
from webapp.mail.graph_protocol import GraphSettings
from webapp.mail.report import Outcome
from webapp.mail.urls import url_problem

LOOPBACK_ALLOWED = Policy(global_allow=tuple(parse_rules("127.0.0.0/8\n::1", "the global allow list")))


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/token", "http://localhost/realms/test", "http://[::1]:9000/t",
                                 "http://auth.localhost:8080/token", "http://127.10.0.1/token", "https://login.example.com/t"])
def test_an_address_on_this_machine_may_be_plain_http(url):
    assert url_problem(url) == ""


@pytest.mark.parametrize("url", ["http://login.example.com/token", "http://10.0.0.5/token", "http://127.0.0.1.nip.io/t",
                                 "http://localhost.example.com/t", "http://[::ffff:10.0.0.5]/t", "http://2130706433/t"])
def test_plain_http_anywhere_else_is_refused(url):
    assert url_problem(url) == ("the address must start with https:// (http:// only for this machine: localhost, "
                                     "127.0.0.1, [::1])")


class TokenEndpoint(BaseHTTPRequestHandler):
    """A token endpoint without TLS, as a local test authorization server may be; it accepts the
    client's secret in the ways listed in `accepts` ("basic": the Authorization header, "post":
    the form), as real servers are configured to."""
    seen: list[tuple[str, str]] = []  # (Authorization header, form) of each request
    accepts = {"basic", "post"}

    def do_POST(self):
        form = self.rfile.read(int(self.headers["Content-Length"])).decode()
        authorization = self.headers.get("Authorization", "")
        TokenEndpoint.seen.append((authorization, form))
        basic = authorization == "Basic " + base64.b64encode(b"app%3A1:local%2Fsecret%3A").decode()
        posted = "client_id=app%3A1" in form and "client_secret=local%2Fsecret%3A" in form
        if ("basic" in self.accepts and basic) or ("post" in self.accepts and posted):
            self._answer(200, {"access_token": "local-access-token", "token_type": "Bearer", "expires_in": 3600,
                               "scope": "mail.send"})
        else:
            self._answer(401, {"error": "invalid_client", "error_description": "client authentication failed"})

    def _answer(self, status: int, answer: dict):
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def plain_token_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    TokenEndpoint.seen, TokenEndpoint.accepts = [], {"basic", "post"}
    yield f"http://127.0.0.1:{server.server_port}/token"
    server.shutdown()
    server.server_close()


def app_client(token_url: str, provider: str = "other") -> oauth.Client:
    return oauth.Client(provider=provider, client_id="app:1", client_secret="local/secret:", authorize_url="",
                        token_url=token_url, scope="mail.send")


def test_a_token_endpoint_on_this_machine_answers_over_plain_http(plain_token_endpoint):
    tokens = oauth.client_credentials(app_client(plain_token_endpoint), Network(LOOPBACK_ALLOWED), Deadline(5))
    assert tokens.access_token == "local-access-token" and tokens.scope == "mail.send"
    [(authorization, form)] = TokenEndpoint.seen
    assert authorization.startswith("Basic ") and form == "grant_type=client_credentials&scope=mail.send"


@pytest.mark.parametrize("accepts, provider, tried", [
    ({"basic"}, "other", ["basic"]),           # RFC 6749: every server takes HTTP Basic
    ({"post"}, "other", ["basic", "post"]),    # a server configured for the form only: once more, the form
    ({"post"}, "microsoft", ["post"]),         # Microsoft and Google: the form, as they document it
    ({"post"}, "google", ["post"]),
])
def test_the_client_secret_goes_the_way_the_server_takes_it(plain_token_endpoint, accepts, provider, tried):
    TokenEndpoint.accepts = accepts
    tokens = oauth.client_credentials(app_client(plain_token_endpoint, provider), Network(LOOPBACK_ALLOWED),
                                      Deadline(5))
    assert tokens.access_token == "local-access-token"
    assert ["basic" if authorization else "post" for authorization, _ in TokenEndpoint.seen] == tried
    for authorization, form in TokenEndpoint.seen:  # never both at once (some servers refuse that)
        assert not (authorization and "client_secret" in form)


def test_a_refused_secret_is_refused_both_ways_and_said_once(plain_token_endpoint):
    TokenEndpoint.accepts = set()
    with pytest.raises(oauth.OAuthFailure) as failure:
        oauth.client_credentials(app_client(plain_token_endpoint), Network(LOOPBACK_ALLOWED), Deadline(5))
    assert failure.value.error == "invalid_client" and failure.value.status == 401
    assert len(TokenEndpoint.seen) == 2


def test_plain_http_to_a_name_that_resolves_off_this_machine_is_refused_before_connecting(monkeypatch):
    connected = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: connected.append(address))

    def resolver(name, port, *args):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]

    network = Network(Policy(), resolver=resolver)  # private ranges are allowed: the scheme is what refuses
    with pytest.raises(EgressRefused) as refused:
        http.session(network, Deadline(5)).post("http://tokens.intranet.example/token", data={"a": "b"})
    assert "plain http:// is used only on this machine (loopback): use https://" in str(refused.value)
    assert connected == []


def test_an_ews_address_is_https_even_on_this_machine(admin):
    from tests.test_ews import ews_form

    class Peer:  # the form's values only: nothing is contacted
        url, ca_pem = "http://127.0.0.1:8443/EWS/Exchange.asmx", ""

    answer = admin.post("/p/help/servers/new", ews_form(Peer()))
    assert answer.status_code == 422
    assert "Enter an https:// address: this protocol is used over TLS only." in answer.text


# -- every answer is read up to a limit ------------------------------------------------------------------

@pytest.fixture
def hostile(test_ca):
    started = []

    def start(mode: str, tls: bool = False, redirect_to: str = "") -> HostilePeer:
        peer = HostilePeer(mode, server_context(test_ca) if tls else None, redirect_to)
        started.append(peer)
        return peer
    yield start
    for peer in started:
        peer.stop()


TOO_LARGE = "is larger than 1024 KB, more than Mailroom reads"
CUT_OFF = "was cut off before its end"
UNREADABLE = [("endless", TOO_LARGE), ("endless-chunked", TOO_LARGE), ("huge-length", TOO_LARGE),
              ("gzip-bomb", TOO_LARGE), ("cut-off", CUT_OFF)]


@pytest.mark.parametrize("mode,says", UNREADABLE)
def test_an_answer_is_read_only_up_to_the_limit_and_memory_stays_bounded(hostile, mode, says):
    bomb()  # the peer's own 100 MB are made before measuring
    peer = hostile(mode)
    tracemalloc.start()
    try:
        with pytest.raises(http.AnswerRefused) as refused:
            http.session(Network(LOOPBACK_ALLOWED), Deadline(20)).get(peer.url + "/v1.0/me")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert says in str(refused.value) and f"127.0.0.1:{peer.port}" in str(refused.value)
    assert peak < 8 * http.ANSWER_LIMIT, f"{peak / 2**20:.0f} MB held for one answer"


class FixedToken:
    def token(self, deadline):
        return AccessToken("fixed-access-token", datetime.now(UTC) + timedelta(hours=1), ("Mail.Send",))


def graph_config(url: str, timeout: float = 20, ca_pem: str = "") -> ServerConfig:
    return ServerConfig("graph", Sender("sender@example.test"), GraphSettings(graph_endpoint=url),
                        Network(LOOPBACK_ALLOWED, extra_ca_pem=ca_pem), BearerAuth("sender@example.test", FixedToken()),
                        timeout)


@pytest.mark.parametrize("mode,says,timeout,tls", [
    *[(mode, says, 20, False) for mode, says in UNREADABLE],
    ("nested", "is JSON nested too deeply to read", 20, False),
    ("trickle", "no answer within 2 s", 2, False),  # the watchdog ends it: a body cut by it is no whole answer
    ("trickle", "no answer within 2 s", 2, True),  # over TLS too (the watchdog closes the TLS socket)
])
def test_graph_says_what_is_wrong_with_an_answer(hostile, test_ca_pem, mode, says, timeout, tls):
    peer = hostile(mode, tls=tls)
    started = time.monotonic()
    report = GraphTransport().check(graph_config(peer.url, timeout, test_ca_pem))
    assert time.monotonic() - started < timeout + 5
    token, mailbox = report.steps
    assert token.outcome == Outcome.PASSED
    assert mailbox.name == "Mailbox" and mailbox.outcome == Outcome.FAILED, mailbox.summary
    assert says in mailbox.summary and mailbox.hint


@pytest.mark.parametrize("mode,says", [*UNREADABLE, ("nested", "did not answer with OAuth JSON")])
def test_a_token_endpoint_s_unreadable_answer_is_an_oauth_failure_in_words(hostile, mode, says):
    peer = hostile(mode)
    with pytest.raises(oauth.OAuthFailure) as failure:
        oauth.client_credentials(app_client(peer.url + "/token"), Network(LOOPBACK_ALLOWED), Deadline(20))
    assert says in str(failure.value) and failure.value.hint


@pytest.mark.parametrize("mode,says", [*UNREADABLE, ("nested", "the answer is not JSON")])
def test_discovery_of_an_unreadable_metadata_document_is_an_oauth_failure_in_words(hostile, mode, says):
    peer = hostile(mode)
    with pytest.raises(oauth.OAuthFailure) as failure:
        oauth.discover(peer.url, Network(LOOPBACK_ALLOWED), Deadline(20))
    assert says in str(failure.value)


@pytest.mark.parametrize("mode,says", UNREADABLE)
def test_ews_through_exchangelib_says_what_is_wrong_with_an_answer(hostile, test_ca_pem, mode, says):
    peer = hostile(mode, tls=True)
    settings = EwsSettings(ews_url=peer.url + "/EWS/Exchange.asmx", ews_version="Exchange2016", ews_ca_cert=test_ca_pem)
    config = ServerConfig("ews", Sender("sender@example.test"), settings, Network(LOOPBACK_ALLOWED),
                          PasswordAuth("EXAMPLE\\mailer", "Ews-Pass-7wq"), 20)
    report = EwsTransport().check(config)
    failed = [step for step in report.steps if step.outcome == Outcome.FAILED]
    assert len(failed) == 1 and says in failed[0].summary, [(s.name, s.summary) for s in report.steps]


def test_validate_of_a_server_that_never_stops_answering_is_a_failed_step_not_a_500(admin, hostile):
    from tests.test_ews import ews_form

    class Peer:
        url = hostile("endless", tls=True).url + "/EWS/Exchange.asmx"

    answer = admin.post("/p/help/servers/new/validate", ews_form(Peer(), ews_version="Exchange2016"), htmx=True)
    assert answer.status_code == 200
    assert "Validation failed at" in answer.text and TOO_LARGE in answer.text


# -- a redirect is never followed: a secret goes only where it was saved for ----------------------------

REDIRECTS = ["redirect-302", "redirect-307"]


def redirecting(hostile, mode: str, tls: bool = False) -> tuple[HostilePeer, HostilePeer]:
    """A server that redirects every request to another port of this machine, where a recorder listens."""
    elsewhere = hostile("cut-off", tls=tls)  # it records what reaches it before answering anything
    return hostile(mode, tls=tls, redirect_to=elsewhere.url + "/collect?x=1"), elsewhere


def says_redirect(text: str, peer: HostilePeer, elsewhere: HostilePeer) -> bool:
    return (f"127.0.0.1:{peer.port} redirects to {elsewhere.url}/collect" in text
            and "Mailroom does not follow redirects" in text)


@pytest.mark.parametrize("mode", REDIRECTS)
@pytest.mark.parametrize("provider", ["other", "microsoft"])  # the secret as HTTP Basic, or in the form
def test_a_token_endpoint_that_redirects_gets_the_secret_once_and_its_target_nothing(hostile, mode, provider):
    peer, elsewhere = redirecting(hostile, mode)
    with pytest.raises(oauth.OAuthFailure) as failure:
        oauth.client_credentials(app_client(peer.url + "/token", provider), Network(LOOPBACK_ALLOWED), Deadline(10))
    assert says_redirect(str(failure.value), peer, elsewhere), str(failure.value)
    assert len(peer.requests) == 1 and elsewhere.requests == []


@pytest.mark.parametrize("mode", REDIRECTS)
def test_an_api_that_redirects_never_sees_the_token_go_elsewhere(hostile, mode):
    peer, elsewhere = redirecting(hostile, mode)
    report = GraphTransport().check(graph_config(peer.url))
    mailbox = report.steps[-1]
    assert mailbox.name == "Mailbox" and mailbox.outcome == Outcome.FAILED
    assert says_redirect(mailbox.summary, peer, elsewhere) and "saved for" in mailbox.hint
    [(_, _, headers, _)] = peer.requests
    assert headers["authorization"] == "Bearer fixed-access-token"
    assert elsewhere.requests == []


@pytest.mark.parametrize("mode", REDIRECTS)
def test_ews_that_redirects_sends_the_password_nowhere_else(hostile, test_ca_pem, mode):
    peer, elsewhere = redirecting(hostile, mode, tls=True)
    settings = EwsSettings(ews_url=peer.url + "/EWS/Exchange.asmx", ews_version="Exchange2016", ews_ca_cert=test_ca_pem)
    config = ServerConfig("ews", Sender("sender@example.test"), settings, Network(LOOPBACK_ALLOWED),
                          PasswordAuth("EXAMPLE\\mailer", "Ews-Pass-7wq"), 10)
    report = EwsTransport().check(config)
    [failed] = [step for step in report.steps if step.outcome == Outcome.FAILED]
    assert says_redirect(failed.summary, peer, elsewhere), failed.summary
    assert elsewhere.requests == []


def test_discovery_does_not_follow_a_redirect_either(hostile):
    peer, elsewhere = redirecting(hostile, "redirect-302")
    with pytest.raises(oauth.OAuthFailure) as failure:
        oauth.discover(peer.url, Network(LOOPBACK_ALLOWED), Deadline(10))
    assert "Mailroom does not follow redirects" in str(failure.value)
    assert elsewhere.requests == []


# -- the connection's own socket options ------------------------------------------------------------


def _hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


@pytest.mark.parametrize("tls", [False, True])
def test_a_connection_sends_without_waiting_for_the_servers_delayed_ack(test_ca, test_ca_pem, tls):
    """urllib3 sets TCP_NODELAY on the sockets it makes; the egress-checked connection is made by
    Mailroom instead, and must set it too: a request's body, written after its headers, would
    otherwise wait for the server's delayed ACK (about 40 ms a request on Linux)."""
    from tests.peers.https import HttpsPeer

    peer = HttpsPeer(_hello, server_context(test_ca) if tls else None, keep_alive=True)
    try:
        session = http.session(Network(LOOPBACK_ALLOWED, extra_ca_pem=test_ca_pem), Deadline(10))
        answer = session.post(peer.url + "/", data=b"x" * 100, stream=True)
        sock = answer.raw._connection.sock  # the connection the answer is read from
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert answer.content == b"hello"
        session.close()
    finally:
        peer.stop()
