"""The egress policy in a real browser: a sample mail refused for several destinations at once, and
the one Allow button that lets them all, in sight without opening anything."""
from playwright.sync_api import expect

from tests.conftest import Client
from webapp import db
from webapp.models import AppSetting

from ..test_server_checks import saved_server
from ..test_server_proxy_receiver import proxied_form
from .pages import htmx_ready, sign_in


def test_a_sample_mail_refused_for_a_proxy_and_its_server_is_allowed_with_one_click(page, app, make, help_desk,
                                                                                    smtp_peer, proxy_peer):
    smtp, proxy = smtp_peer("plain"), proxy_peer("socks5")
    make.user("root@example.com", superadmin=True)
    server = saved_server(app, Client(app).login("root@example.com"), proxied_form(smtp, proxy))
    with app.app_context():  # no global allow list: loopback is refused, as on a new installation
        db.session().get(AppSetting, "egress").value = {"allow": "", "deny": ""}
        db.session().commit()
    sign_in(page, "root@example.com")
    page.goto(f"/p/help/servers/{server.id}/sample")
    htmx_ready(page)
    page.get_by_label("Send the sample mail to").fill("jane@example.org")
    page.get_by_role("button", name="Send").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("The mail was not sent: Egress policy: the egress policy refuses 2 destinations",
                                  timeout=20_000)
    allow = alert.get_by_role("button", name=f"Allow 127.0.0.1 {proxy.port} and 127.0.0.1 {smtp.port} for this portal")
    expect(allow).to_be_visible()  # not folded away with the other steps
    assert smtp.sessions == 0 and "connected to" not in proxy.log()
    allow.click()
    expect(page.get_by_role("status")).to_have_text(
        f"This portal may now connect to 127.0.0.1 {proxy.port} and 127.0.0.1 {smtp.port}. Send the sample mail again.")
    expect(page.get_by_label("Send the sample mail to")).to_have_value("jane@example.org")  # the form as it was
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status").filter(has_text="Email server accepted mail for delivery.")) \
        .to_be_visible(timeout=20_000)
    assert len(smtp.messages) == 1 and f"connected to 127.0.0.1:{smtp.port}" in proxy.log()
