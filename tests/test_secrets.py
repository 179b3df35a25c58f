"""A stored secret goes only where it was saved for, and no encoding of it reaches a page, the
database or the log, even from a server that echoes everything back."""
import base64
import logging
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from webapp import db
from webapp.credentials import seal
from webapp.mail.smtp import SmtpSettings
from webapp.models import MailServer

from .test_server_checks import peer_form, saved_server
from .test_server_form import field_error


def stored(app, server_id) -> MailServer:
    with app.app_context():
        return db.session().exec(select(MailServer).where(MailServer.id == server_id)).unique().one()


CHANGES = {
    "another host": lambda target: {"host": "localhost", "port": str(target.port), "security": "none",
                                    "plaintext_auth": "y"},
    "another port": lambda target: {"port": str(target.port)},
    "security none": lambda target: {"security": "none", "plaintext_auth": "y"},
    "certificate check off": lambda target: {"verify_cert": ""},
    "another CA": lambda target: {"ca_cert": ""},
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_stored_password_is_not_sent_to_a_changed_destination(app, admin, smtp_peer, listener, change):
    peer = smtp_peer("starttls")
    server = saved_server(app, admin, peer_form(peer))
    target = listener()
    posted = peer_form(peer, version=str(server.version), password="", confirm_password="",
                       **CHANGES[change](target))
    validate = admin.post(f"/p/help/servers/{server.id}/validate", posted, htmx=True)
    assert validate.status_code == 422
    assert "changed since the password was saved: enter the password again" in field_error(validate.text, "password")
    save = admin.post(f"/p/help/servers/{server.id}/edit", posted)
    assert save.status_code == 422
    assert "enter the password again" in field_error(save.text, "password")
    assert target.connections == 0
    assert stored(app, server.id).version == server.version  # nothing saved
    assert stored(app, server.id).settings == server.settings


def test_a_weaker_mechanism_needs_the_password_again(app, admin, smtp_peer):
    peer = smtp_peer("starttls")
    server = saved_server(app, admin, peer_form(peer, mechanism="CRAM-MD5"))
    posted = peer_form(peer, version=str(server.version), password="", confirm_password="", mechanism="PLAIN")
    response = admin.post(f"/p/help/servers/{server.id}/validate", posted, htmx=True)
    assert response.status_code == 422
    assert "was saved for CRAM-MD5" in field_error(response.text, "password")
    stronger = admin.post(f"/p/help/servers/{server.id}/validate",
                          {**posted, "mechanism": "CRAM-MD5"}, htmx=True)
    assert "All checks passed." in stronger.text


def test_the_stored_password_serves_unsaved_values_with_the_same_destination(app, admin, smtp_peer):
    peer = smtp_peer("starttls")
    server = saved_server(app, admin, peer_form(peer))
    posted = peer_form(peer, version=str(server.version), password="", confirm_password="",
                       sender_name="Renamed Desk", description="Renamed")
    report = admin.post(f"/p/help/servers/{server.id}/validate", posted, htmx=True)
    assert report.status_code == 200 and "All checks passed." in report.text
    assert f"signed in as {peer.username}" in report.text


def test_credentials_never_cross_an_unencrypted_connection_unless_saved_so(app, admin, echo_peer):
    peer = echo_peer()
    form = {**peer_form(peer, security="none"), "host": "127.0.0.1", "port": str(peer.port)}
    report = admin.post("/p/help/servers/new/validate", form, htmx=True).text
    assert "Mailroom does not send credentials over an unencrypted connection" in report
    assert not any(line.upper().startswith("AUTH") for line in peer.lines)
    allowed = admin.post("/p/help/servers/new/validate", {**form, "plaintext_auth": "y"}, htmx=True).text
    assert "Validation failed at “Authenticate”:" in allowed
    assert any(line.upper().startswith("AUTH") for line in peer.lines)


USERNAMES = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=40)
PASSWORDS = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=6, max_size=40)


def encodings(username: str, password: str) -> list[str]:
    """How the password travels: itself, base64 alone, and inside a PLAIN blob."""
    raw = password.encode()
    return [password, base64.b64encode(raw).decode(), base64.b64encode(f"\0{username}\0{password}".encode()).decode(),
            base64.b64encode(f"{username}\0{username}\0{password}".encode()).decode()]


@pytest.fixture
def echoing_server(app, make, portal, echo_peer):
    peer = echo_peer()
    server = make.server(portal, description="Echo relay", settings={"host": "127.0.0.1", "port": peer.port,
                                                                     "security": "none", "plaintext_auth": True})
    return peer, server


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(username=USERNAMES, password=PASSWORDS, mechanism=st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "auto"]))
def test_no_encoding_of_the_password_leaks_from_an_echoing_server(app, staff, echoing_server, caplog, username,
                                                                  password, mechanism):
    peer, server = echoing_server
    app.config["SAMPLE_LIMIT_PER_USER"] = "1000 per minute"  # many examples, one user
    baseline = staff.get("/p/help/servers/").text + "220 echo.test ESMTP careless 535 5.7.8 Authentication failed"
    assume(all(form not in baseline for form in encodings(username, password)))
    with app.app_context():
        row = db.session().get(MailServer, server.id)
        row.credential.kind, row.credential.username, row.credential.mechanism = "password", username, mechanism
        row.credential.secret = seal({"password": password})
        row.credential.bound_to = SmtpSettings.from_dict(row.settings).destination()
        db.session().commit()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="webapp")

    report = staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    listing = staff.get("/p/help/servers/").text
    summary = stored(app, server.id).last_check_summary
    sample = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.test"}, htmx=True).text
    history = staff.get("/p/help/history").text

    assert "Validation failed at “Authenticate”:" in report
    assert "The mail was not sent:" in sample
    if mechanism in ("PLAIN", "LOGIN"):  # these send the password itself: the peer heard it, and echoed it
        assert any(form in line for line in peer.lines for form in encodings(username, password)[1:])
    for text in (report, listing, summary, sample, history, caplog.text):
        for form in encodings(username, password):
            assert form not in text, (mechanism, form)
    used = mechanism if mechanism in ("PLAIN", "LOGIN") else "CRAM-MD5"
    assert re.search(rf"C: AUTH {used}( \*{{8}})?\n", report)
