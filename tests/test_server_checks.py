"""Validate and Send a sample mail through the web app, against real SMTP peers on loopback."""
import base64
import logging
import time

from sqlmodel import select

from webapp import db
from webapp.models import MailServer

from .test_server_form import VALID


def peer_form(peer, **overrides):
    form = {**VALID, "host": peer.host, "port": str(peer.port), "username": peer.username,
            "password": peer.password, "confirm_password": peer.password, "ca_cert": peer.ca_pem,
            "_shown": ["smtp", "port", "tls", "plaintext", "basic"]}
    return {**form, **overrides}


def saved_server(app, admin, form) -> MailServer:
    assert admin.post("/p/help/servers/new", form).status_code == 303
    with app.app_context():
        return db.session().exec(select(MailServer)).one()


def test_validate_checks_an_unsaved_form_step_by_step_without_sending(app, admin, smtp_peer):
    peer = smtp_peer("starttls")
    response = admin.post("/p/help/servers/new/validate", peer_form(peer), htmx=True)
    assert response.status_code == 200
    report = response.text
    assert "All checks passed" in report
    for step in ("Resolve host", "Connect", "EHLO", "STARTTLS", "TLS", "Authenticate", "MAIL FROM"):
        assert step in report
    assert "TLSv1" in report and "<html" not in report
    assert "AUTH" in report and peer.password not in report
    assert base64.b64encode(peer.password.encode()).decode() not in report
    assert peer.messages == []
    with app.app_context():
        assert db.session().exec(select(MailServer)).all() == []  # Validate saves nothing


def test_validate_explains_rejected_credentials(admin, smtp_peer):
    peer = smtp_peer("reject")
    report = admin.post("/p/help/servers/new/validate", peer_form(peer), htmx=True).text
    assert "Validation failed" in report and "535" in report
    assert "rejected the username or password" in report
    assert peer.password not in report


def test_validate_explains_an_unknown_certificate_authority(admin, smtp_peer):
    peer = smtp_peer("untrusted")
    report = admin.post("/p/help/servers/new/validate", peer_form(peer), htmx=True).text
    assert "unknown authority" in report and "CA certificate" in report


def test_validate_gives_up_on_a_silent_server_within_the_timeout(admin, smtp_peer):
    peer = smtp_peer("silent")
    started = time.monotonic()
    report = admin.post("/p/help/servers/new/validate", peer_form(peer, timeout="2"), htmx=True).text
    assert time.monotonic() - started < 2 + 10  # only a hang guard: bench/ measures timeout + 1 s
    assert "no answer within 2 s" in report or "within 2 s" in report


def test_validate_with_form_errors_re_renders_the_form(admin, smtp_peer):
    response = admin.post("/p/help/servers/new/validate", {**VALID, "host": "bad host"}, htmx=True)
    assert response.status_code == 422
    assert response.headers["HX-Retarget"] == "#server-form"
    assert 'id="server-form"' in response.text and "cannot contain spaces" in response.text


def test_validate_without_javascript_shows_the_report_in_the_page(admin, smtp_peer):
    peer = smtp_peer("plain")
    response = admin.post("/p/help/servers/new/validate", peer_form(peer, security="none", auth_type="none"))
    assert response.status_code == 200
    assert "<html" in response.text and "All checks passed" in response.text


def test_validate_of_the_saved_settings_is_remembered_in_the_list(app, admin, smtp_peer):
    peer = smtp_peer("tls")
    server = saved_server(app, admin, peer_form(peer, security="tls"))
    unchanged = peer_form(peer, security="tls", version=str(server.version), password="", confirm_password="")
    admin.post(f"/p/help/servers/{server.id}/validate", unchanged, htmx=True)
    listing = admin.get("/p/help/servers/").text
    assert "All checks passed" in listing and "OK" in listing


def test_staff_send_a_sample_mail_that_arrives(app, admin, staff, smtp_peer):
    peer = smtp_peer("starttls")
    server = saved_server(app, admin, peer_form(peer))
    response = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "someone@example.org"}, htmx=True)
    assert response.status_code == 200
    assert "Email server accepted mail for delivery" in response.text
    [mail] = peer.messages
    assert mail.rcpt_tos == ["someone@example.org"]
    assert mail.message["From"] == "Example Help Desk <helpdesk@example.com>"
    assert mail.message["Reply-To"] == "support@example.com"
    assert "Help Desk" in mail.message["Subject"] and "Office relay" in mail.message["Subject"]
    assert "250" in response.text


def test_a_refused_sample_mail_shows_the_reply_in_words(app, admin, smtp_peer):
    peer = smtp_peer("refuse_sender")
    server = saved_server(app, admin, peer_form(peer, security="none", auth_type="none"))
    response = admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "someone@example.org"})
    assert "The mail was not sent" in response.text and "550" in response.text
    assert "What to try" in response.text


def test_the_password_never_reaches_a_page_or_a_log(app, admin, smtp_peer, caplog):
    caplog.set_level(logging.DEBUG)
    peer = smtp_peer("reject")
    server = saved_server(app, admin, peer_form(peer))
    bodies = [
        admin.post(f"/p/help/servers/{server.id}/validate",
                   peer_form(peer, version="1", password="", confirm_password=""), htmx=True).text,
        admin.post(f"/p/help/servers/{server.id}/sample", {"recipient": "a@example.org"}).text,
        admin.get(f"/p/help/servers/{server.id}/edit").text,
        admin.get("/p/help/servers/").text,
        admin.get("/p/help/history").text,
    ]
    encoded = base64.b64encode(f"\0{peer.username}\0{peer.password}".encode()).decode()
    for text in [*bodies, caplog.text]:
        assert peer.password not in text and encoded not in text


def test_staff_cannot_validate(staff, smtp_peer):
    assert staff.post("/p/help/servers/new/validate", {}).status_code == 403




def test_staff_validate_a_saved_server_from_the_list_and_the_row_keeps_the_result(app, admin, staff, smtp_peer):
    peer = smtp_peer("reject")
    server = saved_server(app, admin, peer_form(peer))
    response = staff.post(f"/p/help/servers/{server.id}/check", htmx=True)
    assert response.status_code == 200
    assert response.text.strip().startswith(f'<tbody id="server-{server.id}">')  # the row and its report
    assert "Validation failed" in response.text and "535" in response.text
    listing = staff.get("/p/help/servers/").text
    assert "Failed" in listing and "Authenticate" in listing
    assert peer.password not in response.text + listing


def _last_check(app, server_id):
    with app.app_context():
        server = db.session().get(MailServer, server_id)
        return server.last_check_at, server.last_check_ok, server.last_check_summary


def test_validate_of_the_saved_values_with_the_password_typed_again_is_remembered_and_other_values_are_not(
        app, admin, smtp_peer):
    peer = smtp_peer("tls")
    server = saved_server(app, admin, peer_form(peer, security="tls"))
    retyped = peer_form(peer, security="tls", version=str(server.version))  # or filled in by the browser
    assert "All checks passed" in admin.post(f"/p/help/servers/{server.id}/validate", retyped, htmx=True).text
    remembered = _last_check(app, server.id)
    assert remembered[0] is not None and remembered[1:] == (True, "All checks passed")

    for other in ({"username": "someone-else@example.test", "password": "", "confirm_password": ""},
                  {"password": "another password", "confirm_password": "another password"},
                  {"mechanism": "LOGIN", "password": "", "confirm_password": ""}):
        admin.post(f"/p/help/servers/{server.id}/validate", {**retyped, **other}, htmx=True)
        assert _last_check(app, server.id) == remembered, other
