"""Pages say only what Mailroom does, and input is not lost: the fixes of the "Ready for every
protocol" issue, each against the real app (and real SMTP peers where mail is involved)."""
import logging
import re

from cryptography.fernet import Fernet
from sqlmodel import select

from webapp import create_app, db
from webapp.crypto import SecretBox
from webapp.models import MailServer, Membership

from .test_server_checks import peer_form, saved_server
from .test_server_form import VALID, field_error, servers

NEW = "/p/help/servers/new"


def test_the_list_says_how_mail_fails_over_and_the_form_promises_no_admin_notices(admin):
    listing = admin.get("/p/help/servers/").text
    assert "take over" not in listing
    assert "through the next server while the primary does not work" in listing
    form = admin.get(NEW).text
    assert "Admin mail address" not in form and 'name="admin_address"' not in form


def test_the_local_host_name_is_settable_and_used_in_ehlo(app, admin, smtp_peer):
    peer = smtp_peer("plain")
    form = peer_form(peer, security="none", auth_type="none", local_hostname="mailroom.example.test")
    server = saved_server(app, admin, form)
    assert server.settings["local_hostname"] == "mailroom.example.test"
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "C: ehlo mailroom.example.test" in report


def test_a_typed_password_is_asked_for_again_when_the_page_comes_back_without_javascript(admin):
    response = admin.post(NEW, {**VALID, "host": "bad host"})
    assert response.status_code == 422
    assert "Very-Secret-1" not in response.text
    for name in ("password", "confirm_password"):
        assert re.search(rf'<small id="{name}-help" class="retype">Type it again: Mailroom never sends a '
                         rf'password back to the browser.</small>', response.text), name
        assert re.search(rf'<input type="password" id="{name}" name="{name}"[^>]*aria-describedby="{name}-help"',
                         response.text)


def test_validate_with_field_errors_says_so_in_the_report_and_focuses_the_first_bad_field(admin):
    posted = {**VALID, "description": "Relay", "host": "bad host", "from_address": "nobody"}
    response = admin.post(f"{NEW.rsplit('/', 1)[0]}/new/validate", posted, htmx=True)
    assert response.status_code == 422
    assert response.headers["HX-Retarget"] == "#server-form"
    assert '<section id="report" aria-live="polite" hx-swap-oob="true">' in response.text
    assert "Nothing was checked: some fields need attention." in response.text
    assert '<li><a href="#host">Server name / IP address</a>: A server name cannot contain spaces.</li>' in response.text
    assert '<a href="#from_address">From address</a>' in response.text
    assert re.search(r'<input type="text" id="host" name="host"[^>]* autofocus', response.text)
    assert len(re.findall(r" autofocus", response.text)) == 1  # the first bad field only
    plain = admin.post(f"{NEW.rsplit('/', 1)[0]}/new/validate", posted)  # without JavaScript
    assert plain.status_code == 422 and "<html" in plain.text
    assert "Nothing was checked: some fields need attention." in plain.text
    assert re.search(r'id="host"[^>]* autofocus', plain.text)


def test_intranet_and_special_use_domains_are_addresses(app, admin, smtp_peer):
    peer = smtp_peer("plain")
    form = peer_form(peer, security="none", auth_type="none", from_address="helpdesk@relay.local",
                     reply_to="desk@host.internal")
    server = saved_server(app, admin, form)
    assert (server.from_address, server.reply_to) == ("helpdesk@relay.local", "desk@host.internal")
    for recipient in ("jane@example.test", "ops@corp", "root@localhost"):
        answer = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": recipient}, htmx=True).text
        assert "Email server accepted mail for delivery." in answer, recipient
    assert [m.rcpt_tos for m in peer.messages] == [["jane@example.test"], ["ops@corp"], ["root@localhost"]]
    assert peer.messages[0].mail_from == "helpdesk@relay.local"


def test_what_cannot_be_an_address_is_still_refused(admin):
    for value in ("nobody", "two@@example.com", "a@-bad-.example", "spaces in@example.com"):
        response = admin.post(NEW, {**VALID, "from_address": value})
        assert response.status_code == 422, value
        assert field_error(response.text, "from_address"), value


def test_removing_a_member_asks_first(app, admin, make, portal):
    make.member(portal, "agent@example.com", "staff")
    with app.app_context():
        membership = db.session().exec(select(Membership).where(Membership.role == "staff")).one()
    members = admin.get("/p/help/members").text
    remove = f"/p/help/members/{membership.id}/remove"
    assert f'<a href="{remove}" class="danger">Remove</a>' in members
    question = admin.get(remove)
    assert question.status_code == 200 and "Remove agent@example.com from Help Desk?" in question.text
    with app.app_context():
        assert db.session().get(Membership, membership.id) is not None  # asking removes nothing
    assert admin.post(remove).status_code == 303
    with app.app_context():
        assert db.session().get(Membership, membership.id) is None


def test_an_unreadable_secret_is_a_failed_step_that_says_what_to_do(app, admin, make, portal, caplog):
    foreign = SecretBox([Fernet.generate_key().decode()]).encrypt("pw")
    server = make.server(portal, credential={"kind": "password", "username": "u", "secret": foreign})
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True)
    assert report.status_code == 200
    assert "Validation failed at “Credentials”:" in report.text
    assert "the stored secret cannot be read with the configured keys" in report.text
    assert "restore the key that encrypted it" in report.text
    sample = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.test"}, htmx=True)
    assert sample.status_code == 200 and "The mail was not sent:" in sample.text
    caplog.set_level(logging.WARNING, logger="webapp")
    create_app({"TESTING": True, "DATABASE_URL": app.config["DATABASE_URL"], "AUTO_MIGRATE": False,
                "SECRET_KEY": "k", "SECRET_KEYS": app.config["SECRET_KEYS"]}, instance_path=app.instance_path)
    assert "1 stored secret(s) cannot be read with the configured keys" in caplog.text


def test_validate_and_samples_work_on_a_disabled_server_and_say_so(app, admin, smtp_peer):
    peer = smtp_peer("plain")
    server = saved_server(app, admin, peer_form(peer, security="none", auth_type="none", enabled=""))
    assert server.enabled is False
    checked = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in checked
    assert "This server is disabled: Validate and sample mails still use it" in checked
    sample_page = admin.get(f"/p/help/servers/{server.id}/sample").text
    assert "This server is disabled: the sample mail still goes through it" in sample_page
    sent = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.test"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent and "This server is disabled" in sent
    assert len(peer.messages) == 1


def test_the_list_marks_disabled_servers_and_keeps_the_last_check_short(app, admin, smtp_peer):
    peer = smtp_peer("plain")
    server = saved_server(app, admin, peer_form(peer, security="none", auth_type="none"))
    admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.test"}, htmx=True)
    listing = admin.get("/p/help/servers/").text
    row = re.search(r'<tr class="">.*?</tr>', listing, re.S).group(0)
    assert "Sample mail accepted: 250 2.0.0 Ok: queued as" in row and "All checks passed" not in row
    assert '<span class="badge ok">Enabled</span>' in row
    admin.post(f"/p/help/servers/{server.id}/toggle", htmx=True)
    listing = admin.get("/p/help/servers/").text
    assert re.search(r'<tr class="disabled">\s*<td>1</td>', listing)
    assert '<span class="badge off">Disabled</span>' in listing
    with app.app_context():
        stored = db.session().get(MailServer, server.id)
        stored.last_check_summary = "Authenticate: " + "very long explanation " * 20
        db.session().commit()
    listing = admin.get("/p/help/servers/").text
    summary = re.search(r'<small class="summary" title="([^"]*)">([^<]*)</small>', listing)
    assert len(summary.group(2)) <= 70 and summary.group(1).startswith("Authenticate: very long")


def test_history_shows_values_as_the_form_calls_them(app, admin):
    admin.post(NEW, {**VALID, "security": "tls", "port": "465"})
    [server] = servers(app)
    admin.post(f"/p/help/servers/{server.id}/edit", {**VALID, "version": "1", "security": "auto", "port": "465"})
    history = admin.get("/p/help/history").text
    assert re.search(r'<span class="muted">Security:</span>\s*SSL/TLS \(implicit\) → Automatic \(STARTTLS when offered\)',
                     history)
    assert re.search(r'<span class="muted">Authentication:</span>\s*Basic', history)
    assert ": tls" not in history and "→ auto" not in history
