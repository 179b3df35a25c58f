"""The SMTP credentials page: admins create (the password shown once, only its hash stored), change,
give a new password to and revoke credentials; bad input comes back beside its field with nothing
saved; History records every change without the password."""
import re

from sqlmodel import select
from werkzeug.security import check_password_hash

from webapp import db
from webapp.models import AuditEvent, SmtpCredential

FORM = {"name": "Scanner, 2nd floor", "username": "", "from_policy": "listed",
        "from_addresses": "Scanner@Example.com\n@devices.example.com", "client_networks": "10.1.2.3/16",
        "plain_networks": "", "max_message_mb": "10", "per_minute": "30", "per_day": ""}


def created(app) -> list[SmtpCredential]:
    with app.app_context():
        return list(db.session().exec(select(SmtpCredential).order_by(SmtpCredential.id)))


def shown_password(page: str) -> str:
    return re.search(r'<code id="smtp-password">([^<]+)</code>', page).group(1)


def test_create_shows_the_password_once_and_stores_only_its_hash(app, admin):
    page = admin.post("/p/help/smtp-credentials/new", FORM)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    password = shown_password(page.text)
    [credential] = created(app)
    assert credential.username.startswith("help-") and f"<code id=\"smtp-username\">{credential.username}" in page.text
    assert password not in credential.password_hash and check_password_hash(credential.password_hash, password)
    assert credential.from_addresses == "Scanner@example.com\n@devices.example.com"  # the domain normalized
    assert credential.client_networks == "10.1.0.0/16" and credential.per_minute == 30 and credential.per_day is None
    assert credential.max_message_bytes == 10 * 1024 * 1024
    listing = admin.get("/p/help/smtp-credentials").text
    assert credential.username in listing and password not in listing
    assert password not in admin.get(f"/p/help/smtp-credentials/{credential.id}/edit").text
    history = admin.get("/p/help/history").text
    assert "Created the SMTP credential “Scanner, 2nd floor”" in history and password not in history
    assert "Allowed client networks:" in history and "Messages per minute:" in history


def test_a_chosen_username_is_unique_across_portals(app, admin, make):
    other = make.portal(slug="other", name="Other")
    make.member(other, "other-admin@example.com")
    assert admin.post("/p/help/smtp-credentials/new", {**FORM, "username": "scanner-1"}).status_code == 200
    from tests.conftest import Client

    other_admin = Client(app).login("other-admin@example.com")
    again = other_admin.post("/p/other/smtp-credentials/new", {**FORM, "username": "scanner-1"})
    assert again.status_code == 422 and "The username scanner-1 is taken" in again.text
    assert [c.portal_id for c in created(app)] == [created(app)[0].portal_id]


def test_bad_input_comes_back_beside_its_field_and_nothing_is_saved(app, admin):
    bad = {**FORM, "name": " ", "username": "has space", "from_addresses": "not an address",
           "client_networks": "10.0.0.0/33", "plain_networks": "printer-net", "max_message_mb": "1000",
           "per_minute": "0"}
    page = admin.post("/p/help/smtp-credentials/new", bad)
    assert page.status_code == 422
    for words in ("This field is required.", "Use letters, digits and", "“not an address” is not an address",
                  "“10.0.0.0/33” is not a network", "“printer-net” is not a network", "At most 25 MB",
                  "Number must be between 1 and 1000000"):
        assert words in page.text, words
    nothing_listed = admin.post("/p/help/smtp-credentials/new", {**FORM, "from_addresses": ""})
    assert nothing_listed.status_code == 422 and "List at least one From address" in nothing_listed.text
    assert admin.post("/p/help/smtp-credentials/new", {**FORM, "from_addresses": "", "from_policy": "rewrite"}
                      ).status_code == 200
    assert [c.from_policy for c in created(app)] == ["rewrite"]


def test_edit_records_what_changed_and_keeps_the_password(app, admin):
    admin.post("/p/help/smtp-credentials/new", FORM)
    [before] = created(app)
    response = admin.post(f"/p/help/smtp-credentials/{before.id}/edit",
                          {**FORM, "per_minute": "", "plain_networks": "192.0.2.0/24"})
    assert response.status_code == 303
    [after] = created(app)
    assert after.per_minute is None and after.plain_networks == "192.0.2.0/24"
    assert after.password_hash == before.password_hash and after.username == before.username
    with app.app_context():
        event = db.session().exec(select(AuditEvent).where(AuditEvent.action == "smtp_credential.updated")).one()
    assert event.changes == {"per_minute": [30, None], "plain_networks": ["", "192.0.2.0/24"]}
    assert admin.post(f"/p/help/smtp-credentials/{before.id}/edit", {**FORM, "max_message_mb": "x"}
                      ).status_code == 422


def test_a_new_password_replaces_the_old_one(app, admin):
    first = shown_password(admin.post("/p/help/smtp-credentials/new", FORM).text)
    [credential] = created(app)
    page = admin.post(f"/p/help/smtp-credentials/{credential.id}/password")
    second = shown_password(page.text)
    [credential] = created(app)
    assert second != first and check_password_hash(credential.password_hash, second)
    assert not check_password_hash(credential.password_hash, first)
    assert "Gave a new password to the SMTP credential" in admin.get("/p/help/history").text


def test_revoke_asks_first_then_keeps_the_row_and_refuses_further_changes(app, admin):
    admin.post("/p/help/smtp-credentials/new", FORM)
    [credential] = created(app)
    url = f"/p/help/smtp-credentials/{credential.id}"
    assert "Revoke “Scanner, 2nd floor”?" in admin.get(f"{url}/revoke").text
    assert admin.post(f"{url}/revoke").status_code == 303
    [credential] = created(app)
    assert credential.revoked_at is not None
    assert "revoked" in admin.get("/p/help/smtp-credentials").text
    for response in (admin.get(f"{url}/edit"), admin.post(f"{url}/password"), admin.post(f"{url}/revoke")):
        assert response.status_code == 404
    assert "Revoked the SMTP credential “Scanner, 2nd floor”" in admin.get("/p/help/history").text


def test_another_portals_credential_is_not_found(app, admin, make):
    other = make.portal(slug="other", name="Other")
    make.member(other, "other-admin@example.com")
    from tests.conftest import Client

    Client(app).login("other-admin@example.com").post("/p/other/smtp-credentials/new", FORM)
    [foreign] = created(app)
    assert admin.get(f"/p/help/smtp-credentials/{foreign.id}/edit").status_code == 404
    assert admin.post(f"/p/help/smtp-credentials/{foreign.id}/revoke").status_code == 404
    assert created(app)[0].revoked_at is None


def test_the_page_says_how_devices_reach_the_listener(app, admin):
    page = admin.get("/p/help/smtp-credentials").text
    assert "<code>2587</code> with STARTTLS" in page and "<code>2465</code> with SSL/TLS" in page
    assert "The listener makes its self-signed certificate when it first starts" in page
    assert "<code>localhost</code>" in page  # the address this page was reached at
    app.config["SUBMISSION_HOSTNAME"] = "smtp.help.example.com"
    assert "<code>smtp.help.example.com</code>" in admin.get("/p/help/smtp-credentials").text
    nav = admin.get("/p/help/servers/").text
    assert 'href="/p/help/smtp-credentials">SMTP credentials</a>' in nav


def test_staff_see_no_link_to_the_credentials(staff):
    assert "SMTP credentials" not in staff.get("/p/help/servers/").text
    assert staff.get("/p/help/smtp-credentials").status_code == 403


def test_markup_in_a_name_is_shown_as_text(app, admin):
    script = "<script>alert(1)</script>"
    page = admin.post("/p/help/smtp-credentials/new", {**FORM, "name": script})
    assert page.status_code == 200
    for text in (page.text, admin.get("/p/help/smtp-credentials").text, admin.get("/p/help/history").text):
        assert script not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
