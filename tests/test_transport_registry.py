"""A new protocol is a Transport class and a form section, registered: no view, service or
template changes. Proven with a test-only "notebook" transport driven through the real pages."""
from dataclasses import asdict, dataclass

import pytest
from sqlmodel import select
from wtforms import StringField
from wtforms.validators import InputRequired

from webapp import db
from webapp.credentials import unseal
from webapp.forms.server import Section, register_section, unregister_section
from webapp.mail import register, unregister
from webapp.mail.auth import AuthType, NoAuth, PasswordAuth
from webapp.mail.report import Outcome, Receipt, Report, Step
from webapp.models import AuditEvent, MailServer

NOTEBOOK: list[dict] = []  # what the notebook transport was given, in order


@dataclass(frozen=True)
class NotebookSettings:
    mailbox: str

    @classmethod
    def from_dict(cls, values):
        return cls(mailbox=values.get("mailbox", ""))

    def to_dict(self):
        return asdict(self)

    def destination(self):
        return {"protocol": "notebook", "mailbox": self.mailbox}

    @property
    def address(self):
        return self.mailbox


class NotebookTransport:
    protocol = "notebook"
    label = "Notebook (test)"
    settings_type = NotebookSettings
    auth_types = (AuthType.NONE, AuthType.BASIC)
    mechanisms = {}

    def check(self, config) -> Report:
        NOTEBOOK.append({"verb": "check", "settings": config.settings, "auth": config.auth})
        return Report(steps=[Step("Open notebook", Outcome.PASSED, f"opened {config.settings.mailbox}")],
                      passed_summary="The notebook is open.")

    def send(self, config, envelope) -> Receipt:
        NOTEBOOK.append({"verb": "send", "settings": config.settings, "auth": config.auth,
                         "message": envelope.message(), "recipients": envelope.recipients})
        return Receipt(reply="250 noted", message_id=envelope.message_id,
                       report=Report(steps=[Step("Write", Outcome.PASSED, "written")]))


class NotebookSection(Section):
    name, store = "notebook", "settings"
    shown = staticmethod(lambda choices: choices.protocol == "notebook")
    mailbox = StringField("Notebook mailbox", validators=[InputRequired()])


@pytest.fixture
def notebook():
    register(NotebookTransport)
    register_section(NotebookSection, "connection")
    NOTEBOOK.clear()
    yield NOTEBOOK
    unregister("notebook")
    unregister_section("notebook")


FORM = {"description": "Notes", "protocol": "notebook", "mailbox": "inbox-7", "auth_type": "basic",
        "username": "scribe", "password": "Quill-Pass-9", "confirm_password": "Quill-Pass-9",
        "from_address": "helpdesk@example.com", "timeout": "10", "max_connections": "2", "enabled": "y"}


def test_a_registered_transport_is_configured_checked_and_used_through_the_pages(app, admin, staff, notebook):
    page = admin.get("/p/help/servers/new").text
    assert '<option value="notebook">Notebook (test)</option>' in page

    swapped = admin.post("/p/help/servers/new/section/connection", {**FORM, "_shown": []}, htmx=True)
    assert swapped.status_code == 200
    assert 'name="mailbox"' in swapped.text and 'name="host"' not in swapped.text

    assert admin.post("/p/help/servers/new", FORM).status_code == 303
    with app.app_context():
        server = db.session().exec(select(MailServer)).unique().one()
        assert server.protocol == "notebook" and server.settings == {"mailbox": "inbox-7"}
        assert (server.credential.kind, server.credential.username) == ("password", "scribe")
        assert unseal(server.credential.secret) == {"password": "Quill-Pass-9"}
        assert server.credential.bound_to == {"protocol": "notebook", "mailbox": "inbox-7"}

    listing = staff.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "All checks passed." in listing and "The notebook is open." in listing
    [checked] = notebook
    assert checked["settings"] == NotebookSettings("inbox-7")
    assert checked["auth"] == PasswordAuth("scribe", "Quill-Pass-9", "auto")

    sample = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.test"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sample and "250 noted" in sample
    sent = notebook[-1]
    assert sent["verb"] == "send" and sent["message"]["To"] == "jane@example.test"
    assert sent["recipients"] == ("jane@example.test",)
    assert "Notes" in sent["message"]["Subject"]

    with app.app_context():
        created = db.session().exec(select(AuditEvent).where(AuditEvent.action == "server.created")).one()
    assert created.changes["mailbox"] == [None, "inbox-7"]
    assert "Notebook mailbox" in admin.get("/p/help/history").text


def test_a_transport_without_a_secret_gets_no_auth(app, admin, notebook):
    form = {**FORM, "auth_type": "none", "description": "Open notes"}
    assert admin.post("/p/help/servers/new", form).status_code == 303
    report = admin.post("/p/help/servers/new/validate", form, htmx=True).text
    assert "All checks passed." in report
    assert notebook[-1]["auth"] == NoAuth()
