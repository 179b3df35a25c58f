"""The server form: sections, hidden-section data ignored, 422 with nothing saved, stale edits, secrets."""
import re

import pytest
from sqlmodel import select

from webapp import db
from webapp.credentials import unseal
from webapp.models import AuditEvent, MailServer

NEW = "/p/help/servers/new"

VALID = {
    "description": "Office relay",
    "protocol": "smtp",
    "host": "smtp.example.com",
    "security": "starttls",
    "port": "587",
    "timeout": "10",
    "verify_cert": "y",
    "auth_type": "basic",
    "username": "mailer@example.com",
    "password": "Very-Secret-1",
    "confirm_password": "Very-Secret-1",
    "mechanism": "auto",
    "from_address": "helpdesk@example.com",
    "sender_name": "Example Help Desk",
    "reply_to": "support@example.com",
    "max_connections": "5",
    "enabled": "y",
}


def servers(app):
    with app.app_context():
        return db.session().exec(select(MailServer).order_by(MailServer.position)).unique().all()


def stored_password(app, server) -> str:
    with app.app_context():
        return unseal(server.credential.secret)["password"]


def checkbox(html: str, name: str) -> bool | None:
    """Whether the checkbox `name` is rendered checked (None: not rendered as a checkbox)."""
    tag = re.search(rf'<input type="checkbox"[^>]*name="{name}"[^>]*>', html)
    return None if tag is None else " checked" in tag.group(0)


def field_error(html: str, field: str) -> str:
    match = re.search(rf'<small id="{field}-help" class="error">([^<]*)</small>', html)
    return match.group(1) if match else ""


def test_add_server_saves_every_field(app, admin):
    response = admin.post(NEW, VALID)
    assert response.status_code == 303
    [server] = servers(app)
    assert server.settings == {"host": "smtp.example.com", "port": 587, "security": "starttls", "verify_cert": True,
                               "ca_cert": "", "local_hostname": "", "plaintext_auth": False}
    credential = server.credential
    assert (credential.kind, credential.username, credential.mechanism) == ("password", "mailer@example.com", "auto")
    assert (server.from_address, server.sender_name, server.reply_to) == ("helpdesk@example.com",
                                                                          "Example Help Desk", "support@example.com")
    assert server.max_connections == 5 and server.enabled and server.timeout == 10
    assert credential.secret and "Very-Secret-1" not in credential.secret
    assert stored_password(app, server) == "Very-Secret-1"
    assert credential.bound_to == {"protocol": "smtp", "host": "smtp.example.com", "port": 587,
                                   "security": "starttls", "verify_cert": True, "ca_cert": "",
                                   "plaintext_auth": False}


def test_empty_port_takes_the_default_of_the_security(app, admin):
    admin.post(NEW, {**VALID, "security": "tls", "port": ""})
    assert servers(app)[0].settings["port"] == 465


@pytest.mark.parametrize("field,value,message", [
    ("host", "smtp example.com", "cannot contain spaces"),
    ("host", "smtp://smtp.example.com", "without smtp://"),
    ("host", ".".join(["a" * 60] * 5) + ".example", "at most 253"),
    ("host", "smtp.example.com:587", "Port field"),
    ("port", "0", "from 1 to 65535"),
    ("port", "70000", "from 1 to 65535"),
    ("from_address", "not-an-address", "@-sign"),
    ("reply_to", "someone@", "after the @-sign"),
    ("sender_name", "Help\r\nBcc: victim@example.com", "line breaks are not allowed"),
    ("description", "Relay\nX-Injected: 1", "line breaks are not allowed"),
    ("username", "mailer\r\n@example.com", "line breaks are not allowed"),
    ("confirm_password", "something else", "do not match"),
    ("timeout", "0", "1 to 60"),
])
def test_bad_input_is_refused_beside_the_field_and_nothing_is_saved(app, admin, field, value, message):
    response = admin.post(NEW, {**VALID, field: value})
    assert response.status_code == 422
    assert message in field_error(response.text, field)
    assert f'id="{field}"' in response.text and 'aria-invalid="true"' in response.text
    assert servers(app) == []
    assert "Very-Secret-1" not in response.text


def test_international_addresses_are_accepted(app, admin):
    response = admin.post(NEW, {**VALID, "from_address": "verkauf@bücher.example", "sender_name": "Bücher Café"})
    assert response.status_code == 303
    assert servers(app)[0].from_address == "verkauf@bücher.example"


def test_hidden_sections_are_not_validated_and_their_data_is_ignored(app, admin):
    posted = {**VALID, "security": "none", "ca_cert": "not a certificate", "verify_cert": "",
              "auth_type": "none", "username": "bad\nname", "password": "x", "confirm_password": "y"}
    response = admin.post(NEW, posted)
    assert response.status_code == 303, field_error(response.text, "ca_cert")
    [server] = servers(app)
    assert server.credential.kind == "none" and server.credential.username == "" and server.credential.secret is None
    assert server.settings["ca_cert"] == "" and server.settings["verify_cert"] is True  # defaults, not what was posted


def test_a_new_server_with_authentication_needs_a_password(app, admin):
    response = admin.post(NEW, {**VALID, "password": "", "confirm_password": ""})
    assert response.status_code == 422
    assert "Enter the password" in field_error(response.text, "password")


def test_edit_keeps_the_stored_password_when_left_blank_and_clears_it_on_request(app, admin, make, portal):
    admin.post(NEW, VALID)
    [server] = servers(app)
    edit = f"/p/help/servers/{server.id}/edit"
    page = admin.get(edit).text
    assert "Very-Secret-1" not in page and server.credential.secret not in page
    assert "A password is stored: leave empty to keep it." in page
    kept = {**VALID, "version": "1", "password": "", "confirm_password": "", "sender_name": "Renamed"}
    assert admin.post(edit, kept).status_code == 303
    [server] = servers(app)
    assert server.sender_name == "Renamed" and server.version == 2
    assert stored_password(app, server) == "Very-Secret-1"
    cleared = {**kept, "version": "2", "auth_type": "none"}
    assert admin.post(edit, cleared).status_code == 303
    assert servers(app)[0].credential.secret is None
    assert servers(app)[0].credential.kind == "none"


def test_the_second_of_two_concurrent_saves_is_refused(app, admin):
    admin.post(NEW, VALID)
    [server] = servers(app)
    edit = f"/p/help/servers/{server.id}/edit"
    version = re.search(r'<input type="hidden" name="version" value="(\d+)">', admin.get(edit).text).group(1)
    first = admin.post(edit, {**VALID, "version": version, "host": "first.example.com"})
    second = admin.post(edit, {**VALID, "version": version, "host": "second.example.com"})
    assert first.status_code == 303
    assert second.status_code == 409
    assert "changed since you opened it" in second.text
    assert servers(app)[0].settings["host"] == "first.example.com"


def test_security_change_swaps_only_the_tls_section_and_the_port_follows(admin):
    swapped = admin.post(f"{NEW.rsplit('/', 1)[0]}/new/section/tls", {**VALID, "security": "tls", "port": "587"},
                         htmx=True, headers={"HX-Trigger-Name": "security"})
    assert swapped.status_code == 200
    assert swapped.text.strip().startswith('<div id="port-group">')
    assert 'name="port"' in swapped.text and 'value="465"' in swapped.text
    assert '<div id="tls-options" hx-swap-oob="true">' in swapped.text  # they were not on the page: now they are
    assert "<html" not in swapped.text and "host" not in swapped.text
    same_options = admin.post("/p/help/servers/new/section/tls",
                              {**VALID, "security": "tls", "port": "587", "_shown": ["smtp", "port", "tls"]},
                              htmx=True, headers={"HX-Trigger-Name": "security"})
    assert 'value="465"' in same_options.text and "tls-options" not in same_options.text  # only the port changes
    custom = admin.post("/p/help/servers/new/section/tls", {**VALID, "security": "tls", "port": "2525"},
                        htmx=True, headers={"HX-Trigger-Name": "security"})
    assert 'value="2525"' in custom.text  # a port the admin chose is theirs
    none = admin.post("/p/help/servers/new/section/tls", {**VALID, "security": "none", "ca_cert": "PEM?",
                                                          "_shown": ["smtp", "port", "tls"]},
                      htmx=True, headers={"HX-Trigger-Name": "security"})
    assert checkbox(none.text, "verify_cert") is None and "unencrypted" in none.text
    assert checkbox(none.text, "plaintext_auth") is False  # offered, off by default
    assert '<input type="hidden" name="ca_cert" value="PEM?">' in none.text  # carried for the way back


def test_a_section_appearing_for_the_first_time_starts_from_its_defaults(admin):
    shown = admin.post("/p/help/servers/new/section/tls", {"protocol": "smtp", "security": "starttls",
                                                           "_shown": "smtp"}, htmx=True)
    assert checkbox(shown.text, "verify_cert") is True
    kept_off = admin.post("/p/help/servers/new/section/tls", {"protocol": "smtp", "security": "tls",
                                                              "_shown": ["smtp", "tls"]}, htmx=True)
    assert "tls-options" not in kept_off.text  # on the page already, as the admin left it: not touched


def test_default_action_resets_the_port(admin):
    swapped = admin.post("/p/help/servers/new/section/tls", {**VALID, "security": "tls", "port": "2525",
                                                             "_action": "default_port"}, htmx=True)
    assert 'value="465"' in swapped.text


def test_authentication_change_swaps_the_credentials_and_carries_typed_values(admin):
    off = admin.post("/p/help/servers/new/section/credentials", {**VALID, "auth_type": "none"}, htmx=True)
    assert off.text.strip().startswith('<div id="section-credentials">')
    assert 'name="password"' not in off.text
    assert '<input type="hidden" name="username" value="mailer@example.com">' in off.text
    assert "Very-Secret-1" not in off.text
    on = admin.post("/p/help/servers/new/section/credentials", {**VALID, "password": "", "confirm_password": ""},
                    htmx=True)
    assert 'name="password"' in on.text and 'value="mailer@example.com"' in on.text


def test_the_full_page_includes_the_same_partials(admin):
    page = admin.get(NEW).text
    for section in ("section-connection", "section-smtp", "section-tls", "section-credentials"):
        assert f'id="{section}"' in page


def test_without_javascript_update_re_renders_without_saving(app, admin):
    response = admin.post(NEW, {**VALID, "security": "tls", "port": "", "_action": "refresh"})
    assert response.status_code == 200
    assert 'value="465"' in response.text and 'value="Office relay"' in response.text
    assert servers(app) == []


def test_changes_are_recorded_without_secret_values(app, admin):
    admin.post(NEW, VALID)
    [server] = servers(app)
    admin.post(f"/p/help/servers/{server.id}/edit",
               {**VALID, "version": "1", "password": "Other-Secret-2", "confirm_password": "Other-Secret-2",
                "host": "relay.example.com"})
    with app.app_context():
        events = db.session().exec(select(AuditEvent).order_by(AuditEvent.id)).all()
    updated = events[-1]
    assert updated.action == "server.updated" and updated.actor == "admin@example.com"
    assert updated.changes["host"] == ["smtp.example.com", "relay.example.com"]
    assert updated.changes["password"] == "(changed)"
    history = admin.get("/p/help/history").text
    assert "relay.example.com" in history and "(changed)" in history
    assert "Very-Secret-1" not in history and "Other-Secret-2" not in history


def test_toggle_move_and_remove(app, admin, make, portal):
    first = make.server(portal, description="First", position=1)
    second = make.server(portal, description="Second", position=2)
    listed = admin.post(f"/p/help/servers/{second.id}/move/up", htmx=True)
    assert listed.text.index("Second") < listed.text.index("First")
    assert listed.text.strip().startswith('<div id="server-list"')
    row = admin.post(f"/p/help/servers/{first.id}/toggle", htmx=True).text  # the row alone answers
    assert row.strip().startswith(f'<tbody id="server-{first.id}">') and "Second" not in row
    assert "Enable</button>" in row and "2 servers, 1 enabled" in row  # the counts, out of band
    assert {s.description: s.enabled for s in servers(app)} == {"First": False, "Second": True}
    confirm = admin.get(f"/p/help/servers/{first.id}/remove")
    assert "Remove “First”?" in confirm.text
    assert admin.post(f"/p/help/servers/{first.id}/remove").status_code == 303
    assert [s.description for s in servers(app)] == ["Second"]
    actions = [e.action for e in _events(app)]
    assert {"server.reordered", "server.updated", "server.removed"} <= set(actions)


def _events(app):
    with app.app_context():
        return db.session().exec(select(AuditEvent)).all()


def test_htmx_attributes_are_rendered_as_htmx_reads_them(admin):
    page = admin.get(NEW).text
    assert 'hx-post="/p/help/servers/new/section/tls"' in page
    assert "hx_" not in page


def test_editing_a_server_without_tls_keeps_certificate_verification_when_tls_is_chosen(app, admin, make, portal):
    server = make.server(portal, settings={"security": "none", "verify_cert": True})
    page = admin.get(f"/p/help/servers/{server.id}/edit").text
    assert '<input type="hidden" name="verify_cert" value="y">' in page
    posted = {**VALID, "security": "starttls", "verify_cert": "y", "_shown": ["smtp", "port", "plaintext"]}
    swapped = admin.post(f"/p/help/servers/{server.id}/section/tls", posted, htmx=True,
                         headers={"HX-Trigger-Name": "security"})
    assert checkbox(swapped.text, "verify_cert") is True
