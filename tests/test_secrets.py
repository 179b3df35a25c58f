"""A stored secret goes only where it was saved for, and no encoding of it reaches a page, the
database or the log, even from a server that echoes everything back."""
import base64
import html
import json
import logging
import re
from html import unescape
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from webapp import db
from webapp.credentials import seal
from webapp.mail.redact import MIN_SECRET, NOT_SHOWN, REDACTED, Redactor
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
PASSWORDS = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=MIN_SECRET, max_size=40)


def encodings(username: str, password: str) -> list[str]:
    """How the password travels (itself, base64 alone, inside a PLAIN blob) and how the echo peer
    quotes it back (hex, URL-encoded, upper-cased: it also splits it over two lines)."""
    raw = password.encode()
    forms = [password, base64.b64encode(raw).decode(), base64.b64encode(f"\0{username}\0{password}".encode()).decode(),
             base64.b64encode(f"{username}\0{username}\0{password}".encode()).decode(), raw.hex(), raw.hex().upper(),
             quote(password, safe="")]
    if password.upper().lower() == password.lower() and len(password.upper()) == len(password):
        forms.append(password.upper())  # (ß upper-cases to SS: not the same password any more)
    return forms


def halves(password: str) -> list[str]:
    """The echo peer splits the password over two reply lines: neither half may show."""
    half = len(password) // 2
    return [password[:half], password[half:]]


def shown(text: str) -> str:
    """What a reader sees: entities decoded, white space (line breaks too) left out."""
    return re.sub(r"\s+", "", unescape(text))


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
    with app.app_context():
        row = db.session().get(MailServer, server.id)
        row.credential.kind, row.credential.username, row.credential.mechanism = "password", username, mechanism
        row.credential.secret = seal({"password": password})
        row.credential.bound_to = SmtpSettings.from_dict(row.settings).destination()
        row.last_check_at, row.last_check_ok, row.last_check_summary = None, None, ""  # the list as at first
        db.session().commit()
    baseline = staff.get("/p/help/servers/").text + "220 echo.test ESMTP careless 535 5.7.8 Authentication failed"
    assume(all(shown(form) not in shown(baseline) for form in [*encodings(username, password), *halves(password)]))
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
        for form in [*encodings(username, password), *(halves(password) if mechanism in ("PLAIN", "LOGIN") else [])]:
            assert shown(form) not in shown(text), (mechanism, form)
    used = mechanism if mechanism in ("PLAIN", "LOGIN") else "CRAM-MD5"
    assert re.search(rf"C: AUTH {used}( \*{{8}})?\n", report)


def test_a_password_too_short_to_look_for_hides_what_the_echoing_server_says(app, staff, echoing_server, caplog):
    peer, server = echoing_server
    password = "pa55"  # shorter than MIN_SECRET: its forms would match ordinary text
    with app.app_context():
        row = db.session().get(MailServer, server.id)
        row.credential.kind, row.credential.username, row.credential.mechanism = "password", "mailer", "PLAIN"
        row.credential.secret = seal({"password": password})
        row.credential.bound_to = SmtpSettings.from_dict(row.settings).destination()
        db.session().commit()
    caplog.set_level(logging.INFO, logger="webapp")
    report = staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    sample = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.test"}, htmx=True).text
    blob = base64.b64encode(b"\0mailer\0pa55").decode()
    assert any(blob in line for line in peer.lines)  # the peer heard it, and echoed it
    assert "Validation failed at “Authenticate”:" in report and "The mail was not sent:" in sample
    assert unescape(NOT_SHOWN) in unescape(report)
    for text in (report, sample, caplog.text, stored(app, server.id).last_check_summary):
        text = unescape(text)
        for said in ("Authentication failed for", "you sent", blob, "pa55", "PA55", "split ", "hex "):
            assert said not in text, said
    assert "C: AUTH PLAIN ********" in report  # the client's own lines are still shown


SECRET = 'Tr0ub4dor&3-"lång"'


@pytest.mark.parametrize("label,text", [
    ("itself", f"535 failed for {SECRET} here"),
    ("upper case", f"535 FAILED FOR {SECRET.upper()} HERE"),
    ("lower case", f"535 failed for {SECRET.lower()} here"),
    ("hex", f"535 failed for {SECRET.encode().hex()} here"),
    ("HEX", f"535 failed for {SECRET.encode().hex().upper()} here"),
    ("URL-encoded", f"GET /x?password={quote(SECRET, safe='')} here"),
    ("URL-encoded, lower-case escapes", f"GET /x?password={quote(SECRET, safe='').lower()} here"),
    ("form-encoded", f"client_secret={quote_plus(SECRET)}&here"),
    ("HTML-escaped", f"<p>failed for {html.escape(SECRET)} here</p>"),
    ("JSON-escaped", f'{{"error": "failed for {json.dumps(SECRET)[1:-1]} here"}}'),
    ("JSON-escaped, non-ASCII kept", f'{{"error": "failed for {json.dumps(SECRET, ensure_ascii=False)[1:-1]} here"}}'),
    ("split over lines", f"failed for {SECRET[:6]}\r\n{SECRET[6:]} here"),
    ("folded inside", f"535 failed for {SECRET[:5]}\n   {SECRET[5:]} here"),
    ("base64 in a PLAIN blob", "535 you sent " + base64.b64encode(f"\0user\0{SECRET}".encode()).decode() + " here"),
    ("base64 wrapped at a line break", "535 " + (lambda b: b[:10] + "\n" + b[10:])(
        base64.b64encode(f"xx{SECRET}yy".encode()).decode()) + " here"),
])
def test_a_secret_is_hidden_in_the_encodings_a_server_quotes_it_in(label, text):
    redactor = Redactor([SECRET])
    cleaned = redactor.clean(text)
    assert redactor.leaks(text) and REDACTED in cleaned
    flat = re.sub(r"\s+", "", unescape(cleaned)).lower()
    for form in (SECRET, SECRET.encode().hex(), quote(SECRET, safe=""), "ub4dor", "4dor&3"):
        assert form.lower() not in flat, form
    assert "here" in cleaned.lower()  # what is not the secret stays


def test_a_short_secret_makes_the_server_s_text_unshown_and_its_quotes_hidden():
    redactor = Redactor(["pa55", "a-much-longer-token-value"])
    assert redactor.blind and len("pa55") < MIN_SECRET
    assert redactor.echo("5.7.8 you sent AHVzZXIAcGE1NQ==") == NOT_SHOWN
    summary = 'The server said "535 5.7.8 you sent AHVzZXIAcGE1NQ==" (a permanent error)'
    assert redactor.clean(summary) == 'The server said "535 (not shown)" (a permanent error)'
    assert redactor.echo_lines(["5.7.8 you sent", "5.7.8 pa55"]) == [NOT_SHOWN, NOT_SHOWN]
    assert redactor.clean("token a-much-longer-token-value") == f"token {REDACTED}"


def test_a_secret_split_over_the_lines_of_a_reply_hides_those_lines_wherever_they_are_quoted():
    redactor = Redactor([SECRET])
    lines = [f"5.7.8 failed for {SECRET[:6]}", f"5.7.8 {SECRET[6:]} (end)", "5.7.8 bye"]
    assert redactor.echo_lines(lines) == [REDACTED] * 3
    summary = f'The server said "535 5.7.8 failed for {SECRET[:6]} 5.7.8 {SECRET[6:]} (end) 5.7.8 bye"'
    assert SECRET[:6] not in redactor.clean(summary) and SECRET[6:] not in redactor.clean(summary)


def test_ordinary_text_is_left_alone():
    redactor = Redactor([SECRET])
    text = "250-echo.test hello EHLO mailroom\n250 8BITMIME"
    assert not redactor.leaks(text) and redactor.clean(text) == text
