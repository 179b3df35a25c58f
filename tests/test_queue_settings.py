"""The delivery settings in the forms: the portal's delivery policy and admin mail address, a
server's send rates."""
import re

from sqlmodel import select

from tests.test_server_form import VALID
from webapp import db
from webapp.models import AuditEvent, MailServer, Portal


def portal_row(app) -> Portal:
    with app.app_context():
        return db.session().exec(select(Portal).where(Portal.slug == "help")).one()


def settings_form(**values) -> dict:
    return {"name": "Help Desk", "base_url": "https://help.example.com", "delivery_policy": "failover",
            "admin_address": "", **values}


def test_the_settings_page_offers_the_delivery_policy_and_the_admin_address(admin):
    page = admin.get("/p/help/settings").text
    assert '<option value="failover" selected>Failover: the first enabled server; the next when it fails</option>' in page
    assert '<option value="spread">Spread: messages shared across all enabled servers</option>' in page
    assert "Admin mail address" in page and "when a server needs re-authorization" in page


def test_saving_the_delivery_settings_is_recorded_in_history(app, admin):
    answer = admin.post("/p/help/settings", settings_form(delivery_policy="spread",
                                                          admin_address="mail-admins@example.com"))
    assert answer.status_code == 303
    portal = portal_row(app)
    assert portal.delivery_policy == "spread" and portal.admin_address == "mail-admins@example.com"
    with app.app_context():
        [event] = db.session().exec(select(AuditEvent).where(AuditEvent.action == "portal.updated")).all()
    assert event.changes == {"delivery_policy": ["failover", "spread"],
                             "admin_address": ["", "mail-admins@example.com"]}
    history = " ".join(admin.get("/p/help/history").text.split())
    assert ('<span class="muted">Delivery policy:</span> Failover: the first enabled server; the next when it fails → '
            "Spread: messages shared across all enabled servers") in history
    assert '<span class="muted">Admin mail address:</span> mail-admins@example.com' in history
    assert 'value="mail-admins@example.com"' in admin.get("/p/help/settings").text


def test_bad_delivery_settings_come_back_with_errors_and_nothing_is_saved(app, admin):
    answer = admin.post("/p/help/settings", settings_form(name="Renamed", delivery_policy="random",
                                                          admin_address="not an address"))
    assert answer.status_code == 422
    assert re.search(r'id="delivery_policy-help" class="error">Not a valid choice', answer.text)
    assert re.search(r'id="admin_address-help" class="error">', answer.text)
    assert 'value="not an address"' in answer.text
    portal = portal_row(app)
    assert (portal.name, portal.delivery_policy, portal.admin_address) == ("Help Desk", "failover", "")


def smtp_form(**values) -> dict:
    return {**VALID, **values}


def _server(app) -> MailServer:
    with app.app_context():
        return db.session().exec(select(MailServer)).unique().one()


def test_a_servers_send_rates_are_saved_shown_and_recorded(app, admin):
    form = smtp_form(rate_per_minute="30", rate_per_day="2000")
    assert admin.post("/p/help/servers/new", form).status_code == 303
    server = _server(app)
    assert (server.rate_per_minute, server.rate_per_day) == (30, 2000)
    page = admin.get(f"/p/help/servers/{server.id}/edit").text
    assert re.search(r'id="rate_per_minute" name="rate_per_minute" value="30"', page)
    assert "Exchange Online takes 30 messages a minute per mailbox" in page
    assert "Google Workspace sends 2,000 messages a day per user" in page

    form = smtp_form(rate_per_minute="", rate_per_day="2000", version=str(server.version))
    assert admin.post(f"/p/help/servers/{server.id}/edit", form).status_code == 303
    assert _server(app).rate_per_minute is None  # empty: no limit
    history = " ".join(admin.get("/p/help/history").text.split())
    assert '<span class="muted">Send rate: messages per minute:</span> 30 → —' in history


def test_a_send_rate_must_be_a_positive_number(app, admin):
    for value in ("0", "-5", "many", "100001"):
        answer = admin.post("/p/help/servers/new", smtp_form(rate_per_minute=value))
        assert answer.status_code == 422, value
        assert re.search(r'id="rate_per_minute-help" class="error">', answer.text), value
    with app.app_context():
        assert db.session().exec(select(MailServer)).unique().all() == []
