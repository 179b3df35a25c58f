"""The proxy and the mail receiver login in the server form: the sections that follow their choices,
the sealed passwords bound to where they were saved for, Validate's steps, sample mails through the
saved proxy, and Microsoft Graph (token endpoint and API) through an HTTP proxy."""
import re

import pytest

from sqlmodel import select

from webapp import db
from webapp.credentials import unseal
from webapp.models import AuditEvent, MailServer, ServerSecret

from .test_graph import authority, graph, graph_form  # noqa: F401 - fixtures
from .test_oauth import authorize, save
from .test_server_form import VALID

SHOWN = ["smtp", "port", "tls", "plaintext", "proxy_server", "proxy_password", "proxy_dns", "receiver_server"]


def proxied_form(smtp, proxy=None, dovecot=None, **overrides) -> dict:
    form = {**VALID, "host": "127.0.0.1", "port": str(smtp.port), "security": "none", "auth_type": "none",
            "_shown": SHOWN}
    if proxy is not None:
        form.update(proxy_kind={"socks5_open": "socks5"}.get(proxy.kind, proxy.kind), proxy_host=proxy.host,
                    proxy_port=str(proxy.port), proxy_username=proxy.username, proxy_password=proxy.password)
    if dovecot is not None:
        form.update(receiver_protocol="pop3", receiver_host="localhost", receiver_security="tls",
                    receiver_port=str(dovecot.ports["pop3s"]), receiver_username=dovecot.username,
                    receiver_password=dovecot.password, receiver_verify_cert="y")
    return {**form, **overrides}


def only_server(app) -> MailServer:
    with app.app_context():
        server = db.session().exec(select(MailServer)).unique().one()
        server.secrets  # noqa: B018 - loaded while the session is open
        return server


# --- the form -----------------------------------------------------------------------------------------------

def test_the_form_offers_a_proxy_and_a_receiver_login(admin):
    page = admin.get("/p/help/servers/new").text
    assert "Proxy / firewall" in page and '<option value="socks4">SOCKS4</option>' in page
    assert "Log in to receive mail before sending" in page and 'name="proxy_host"' not in page
    assert 'name="receiver_host"' not in page


def test_the_proxy_part_follows_its_type(admin):
    def part(kind):
        response = admin.post("/p/help/servers/new/section/proxy", {"protocol": "smtp", "proxy_kind": kind},
                              htmx=True)
        assert response.status_code == 200
        return response.text

    socks5, socks4, http, none = part("socks5"), part("socks4"), part("http"), part("none")
    assert 'name="proxy_host"' in socks5 and 'name="proxy_password"' in socks5 and "Resolve names at the proxy" in socks5
    assert 'name="proxy_host"' in socks4 and 'name="proxy_password"' not in socks4
    assert 'name="proxy_password"' in http and "Resolve names at the proxy" not in http
    assert 'placeholder="8080"' in http and 'placeholder="1080"' in socks5
    assert 'name="proxy_host"' not in none and '<div id="section-proxy">' in none


def test_the_receiver_login_is_offered_for_smtp_only(admin):
    pop3 = admin.post("/p/help/servers/new/section/receiver", {"protocol": "smtp", "receiver_protocol": "pop3"},
                      htmx=True).text
    assert 'name="receiver_host"' in pop3 and 'name="receiver_password"' in pop3 and 'placeholder="995"' in pop3
    graph = admin.post("/p/help/servers/new", {"protocol": "graph", "_action": "refresh"}, htmx=True).text
    assert "Log in to receive mail before sending" not in graph and "Proxy / firewall" in graph


def test_a_proxy_needs_its_host_and_a_login_its_password(admin, smtp_peer):
    smtp = smtp_peer("plain")
    response = admin.post("/p/help/servers/new", proxied_form(smtp, proxy_kind="http", proxy_host="",
                                                              receiver_protocol="imap", receiver_host="imap.example",
                                                              receiver_username="me"), htmx=True)
    assert response.status_code == 422
    assert re.search(r'id="proxy_host-help" class="error">This field is required', response.text)
    response = admin.post("/p/help/servers/new", proxied_form(smtp, proxy_kind="http", proxy_host="proxy.example",
                                                              proxy_username="me", receiver_protocol="imap",
                                                              receiver_host="imap.example", receiver_username="me"),
                          htmx=True)
    assert response.status_code == 422
    assert re.search(r'id="proxy_password-help" class="error">Enter the proxy password', response.text)


# --- the sealed passwords -----------------------------------------------------------------------------------

def test_the_passwords_are_sealed_bound_and_never_shown(app, admin, smtp_peer, proxy_peer, dovecot):
    smtp, proxy = smtp_peer("plain"), proxy_peer("http")
    assert admin.post("/p/help/servers/new", proxied_form(smtp, proxy, dovecot)).status_code == 303
    server = only_server(app)
    assert server.proxy == {"kind": "http", "host": "127.0.0.1", "port": proxy.port, "username": proxy.username,
                            "remote_dns": False}
    assert server.receiver["protocol"] == "pop3" and server.receiver["port"] == dovecot.ports["pop3s"]
    with app.app_context():
        rows = {row.purpose: row for row in db.session().exec(select(ServerSecret)).all()}
        assert proxy.password not in rows["proxy"].secret and dovecot.password not in rows["receiver"].secret
        assert unseal(rows["proxy"].secret) == {"password": proxy.password}
        assert rows["proxy"].bound_to == {"kind": "http", "host": "127.0.0.1", "port": proxy.port}
        [event] = db.session().exec(select(AuditEvent).where(AuditEvent.action == "server.created")).all()
        assert event.changes["proxy_password"] == "(changed)" and event.changes["receiver_password"] == "(changed)"
    page = admin.get(f"/p/help/servers/{server.id}/edit").text
    assert proxy.password not in page and dovecot.password not in page
    assert "A proxy password is stored" in page and "A mail receiver password is stored" in page


def test_another_proxy_port_needs_the_password_again(app, admin, smtp_peer, proxy_peer):
    smtp, proxy = smtp_peer("plain"), proxy_peer("http")
    admin.post("/p/help/servers/new", proxied_form(smtp, proxy))
    server = only_server(app)
    same = proxied_form(smtp, proxy, proxy_password="", version=str(server.version))
    assert admin.post(f"/p/help/servers/{server.id}/edit", same).status_code == 303
    moved = proxied_form(smtp, proxy, proxy_password="", proxy_port="3128", version=str(server.version + 1))
    response = admin.post(f"/p/help/servers/{server.id}/edit", moved, htmx=True)
    assert response.status_code == 422
    assert "type, host or port changed since the proxy password was saved" in response.text
    assert only_server(app).proxy["port"] == proxy.port  # nothing half-saved
    off = proxied_form(smtp, proxy_kind="none", version=str(server.version + 1))
    assert admin.post(f"/p/help/servers/{server.id}/edit", off).status_code == 303
    assert only_server(app).proxy == {} and only_server(app).secrets == []


# --- Validate and sample mails -------------------------------------------------------------------------------

def test_validate_reports_the_receiver_login_and_the_proxy(admin, smtp_peer, proxy_peer, dovecot, pop_before_smtp,
                                                          test_ca_pem):
    smtp, proxy = pop_before_smtp(), proxy_peer("socks5")
    form = proxied_form(smtp, proxy, dovecot, ca_cert=test_ca_pem, security="none")
    report = admin.post("/p/help/servers/new/validate", form, htmx=True).text
    assert "All checks passed" in report, report
    assert "Mail receiver login" in report and f"logged in to the POP3 server" in report
    assert "Proxy" in report and f"tunnel to 127.0.0.1:{smtp.port} established" in report
    assert proxy.password not in report and dovecot.password not in report


def test_validate_says_the_proxy_refused_its_password(admin, smtp_peer, proxy_peer):
    smtp, proxy = smtp_peer("plain"), proxy_peer("socks5")
    report = admin.post("/p/help/servers/new/validate", proxied_form(smtp, proxy, proxy_password="Wrong-one-7"),
                        htmx=True).text
    assert "Validation failed" in report and "refused the username or password" in report
    assert "check the proxy&#39;s username and password" in report and "Wrong-one-7" not in report


def test_a_sample_mail_goes_through_the_saved_proxy(app, admin, staff, smtp_peer, proxy_peer):
    smtp, proxy = smtp_peer("plain"), proxy_peer("http")
    admin.post("/p/help/servers/new", proxied_form(smtp, proxy))
    server = only_server(app)
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent
    assert len(smtp.messages) == 1 and f"CONNECT 127.0.0.1:{smtp.port}" in proxy.log()
    checked = staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "tunnel to 127.0.0.1" in checked


@pytest.mark.parametrize("kind", ["http", "socks5"])
def test_graph_token_and_api_go_through_the_proxy(kind, app, admin, staff, authority, graph, proxy_peer,
                                                  test_ca_file):
    proxy = proxy_peer(kind)
    form = graph_form(authority, graph, proxy_kind=kind, proxy_host=proxy.host, proxy_port=str(proxy.port),
                      proxy_username=proxy.username, proxy_password=proxy.password,
                      _shown=["graph", "oauth", "microsoft", "proxy_server", "proxy_password"])
    server = save(app, admin, form)
    assert authorize(admin, server, test_ca_file).status_code == 200  # the code exchange: through the proxy
    report = staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    graph_port = int(graph.url.rsplit(":", 1)[1])
    assert "All checks passed." in report and f"tunnel to 127.0.0.1:{graph_port} established" in report
    if kind == "http":  # tinyproxy logs each CONNECT (microsocks logs nothing)
        authority_port = int(authority.issuer.rsplit(":", 1)[1].split("/")[0])
        log = proxy.log()
        assert f"CONNECT 127.0.0.1:{graph_port}" in log and f"CONNECT 127.0.0.1:{authority_port}" in log
    assert ("Proxy" in report) and f"SOCKS5 at 127.0.0.1:{proxy.port}" in report if kind == "socks5" else True
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent and len(graph.sent) == 1
    proxy.stop()  # without the proxy nothing goes: the traffic did not go around it
    failed = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert f"nothing listens on the proxy 127.0.0.1:{proxy.port}" in failed and len(graph.sent) == 1
