"""The proxy and the mail receiver login in a real browser: the parts follow the choices through htmx,
a typed proxy password survives a change of type, and Validate through a real proxy and Dovecot
reports both steps, under the app's real Content-Security-Policy."""
import os

from playwright.sync_api import Page, expect

from .pages import add_server, field, htmx_settled, open_mail_servers, sign_in

SWAP_PROXY = "choosing a proxy type should re-render #section-proxy through htmx (hx-post on the select)"
SWAP_RECEIVER = "choosing a receiver login should re-render #section-receiver through htmx (hx-post on the select)"


def test_a_server_behind_a_proxy_with_a_receiver_login(page: Page, app, help_desk, pop_before_smtp, proxy_peer,
                                                      dovecot):
    smtp, proxy = pop_before_smtp(), proxy_peer("socks5")
    sign_in(page)
    open_mail_servers(page)
    add_server(page)
    field(page, "Description").fill("Relay behind the firewall")
    field(page, "Server name / IP address").fill("127.0.0.1")
    htmx_settled(page)
    field(page, "Security").select_option(label="None")
    expect(field(page, "Port"), "the port follows the security").to_have_value("25")
    field(page, "Port").fill(str(smtp.port))
    field(page, "From address").fill("helpdesk@example.com")

    expect(field(page, "Proxy host")).to_have_count(0)
    htmx_settled(page)
    field(page, "Proxy / firewall").select_option(label="SOCKS5")
    expect(field(page, "Proxy host"), SWAP_PROXY).to_be_visible()
    expect(field(page, "Resolve names at the proxy")).not_to_be_checked()
    field(page, "Proxy host").fill(proxy.host)
    expect(field(page, "Proxy port")).to_have_attribute("placeholder", "1080")
    field(page, "Proxy port").fill(str(proxy.port))
    field(page, "Proxy username").fill(proxy.username)
    field(page, "Proxy password").fill(proxy.password)
    htmx_settled(page)
    field(page, "Proxy / firewall").select_option(label="SOCKS4")  # no password there ...
    expect(field(page, "Proxy password"), SWAP_PROXY).to_have_count(0)
    htmx_settled(page)
    field(page, "Proxy / firewall").select_option(label="SOCKS5")  # ... and back: still typed
    expect(field(page, "Proxy password")).to_have_value(proxy.password)
    expect(field(page, "Proxy host")).to_have_value(proxy.host)

    htmx_settled(page)
    field(page, "Log in to receive mail before sending").select_option(label="POP3")
    expect(field(page, "Server for receiving mails"), SWAP_RECEIVER).to_be_visible()
    field(page, "Server for receiving mails").fill("localhost")
    field(page, "Port used for receiving mails").fill(str(dovecot.ports["pop3s"]))
    field(page, "Mail receiver ID").fill(dovecot.username)
    field(page, "Mail receiver password").fill(dovecot.password)
    # the receiving server's certificate is from the tests' CA, which the app trusts (EXTRA_CA_CERTS)

    page.get_by_role("button", name="Validate").click()
    report = page.locator("#report")
    expect(report).to_contain_text("All checks passed", timeout=20_000)
    expect(report).to_contain_text("Mail receiver login")
    expect(report).to_contain_text(f"tunnel to 127.0.0.1:{smtp.port} established")
    assert proxy.password not in page.content() and dovecot.password not in page.content()
    if os.environ.get("MAILROOM_SCREENSHOTS"):
        page.screenshot(path=os.path.join(os.environ["MAILROOM_SCREENSHOTS"], "proxy-receiver.png"), full_page=True)
