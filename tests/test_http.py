"""Plain http:// for a server on this machine only (a local OAuth or API server without TLS),
never off it: the addresses a form accepts, and the connection the HTTP layer refuses before
connecting when a name resolves elsewhere."""
import base64
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from webapp.mail import http, oauth
from webapp.mail.deadline import Deadline
from webapp.mail.egress import EgressRefused, Network, Policy, parse_rules

LOOPBACK_ALLOWED = Policy(global_allow=tuple(parse_rules("127.0.0.0/8\n::1", "the global allow list")))


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/token", "http://localhost/realms/test", "http://[::1]:9000/t",
                                 "http://auth.localhost:8080/token", "http://127.10.0.1/token", "https://login.example.com/t"])
def test_an_address_on_this_machine_may_be_plain_http(url):
    assert http.url_problem(url) == ""


@pytest.mark.parametrize("url", ["http://login.example.com/token", "http://10.0.0.5/token", "http://127.0.0.1.nip.io/t",
                                 "http://localhost.example.com/t", "http://[::ffff:10.0.0.5]/t", "http://2130706433/t"])
def test_plain_http_anywhere_else_is_refused(url):
    assert http.url_problem(url) == ("the address must start with https:// (http:// only for this machine: localhost, "
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
