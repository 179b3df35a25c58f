"""Message options (Privileged Identity's Organization, receipts, priority, sensitivity, importance
and custom MIME headers): saved per server, refused beside their fields when wrong, and written into
every mail the server sends, queued or sample, read back at the real peers: the aiosmtpd peer (with
and without DSN), the Graph, EWS and Gmail peers."""
import re

import pytest
from sqlmodel import select

from webapp import db
from webapp.mail.options import CustomHeader, Importance, MessageOptions, Priority, Sensitivity, apply, ews_fields
from webapp.models import AuditEvent, MailServer, MailState

from .delivery_fixtures import outbox, smtp_settings  # noqa: F401  (fixtures)
from .test_ews import ews_form, peer  # noqa: F401  (fixtures)
from .test_gmail import gmail, gmail_form, key  # noqa: F401  (fixtures)
from .test_graph import authority, graph, graph_form  # noqa: F401  (fixtures)
from .test_oauth import authorize, save
from .test_server_form import VALID

OPTIONS = {"organization": "Example Bücher AG", "read_receipt_to": "Receipts <receipts@example.com>",
           "return_receipt_to": "delivery@example.com", "priority": "urgent", "sensitivity": "company-confidential",
           "importance": "high", "headers-0-name": "X-Ticket-Queue", "headers-0-value": "help-desk",
           "headers-1-name": "Keywords", "headers-1-value": "invoice, März"}
EXPECTED_HEADERS = {"Organization": "Example Bücher AG", "Disposition-Notification-To": "Receipts <receipts@example.com>",
                    "Return-Receipt-To": "delivery@example.com", "X-Priority": "1", "Priority": "urgent",
                    "Sensitivity": "Company-Confidential", "Importance": "High", "X-Ticket-Queue": "help-desk",
                    "Keywords": "invoice, März"}
STORED = {"organization": "Example Bücher AG", "read_receipt_to": "Receipts <receipts@example.com>",
          "return_receipt_to": "delivery@example.com", "priority": "urgent", "sensitivity": "company-confidential",
          "importance": "high", "headers": [{"name": "X-Ticket-Queue", "value": "help-desk"},
                                            {"name": "Keywords", "value": "invoice, März"}]}


def smtp_form(smtp, **overrides) -> dict:
    form = {**VALID, "host": "127.0.0.1", "port": str(smtp.port), "security": "none", "auth_type": "none",
            "_shown": ["smtp", "port", "tls", "plaintext", "options"]}
    return {**form, **OPTIONS, **overrides}


def only_server(app) -> MailServer:
    with app.app_context():
        return db.session().exec(select(MailServer)).unique().one()


def assert_headers(message) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert message.get_all(name) == [value], name


# --- what the options write -------------------------------------------------------------------------------

def test_apply_writes_the_option_headers_in_front_and_keeps_the_messages_own():
    options = MessageOptions(organization="Bücher AG", priority=Priority.NON_URGENT, sensitivity=Sensitivity.NORMAL,
                             importance=Importance.HIGH, headers=(CustomHeader("X-Team", "Ünits"),))
    stored = b"Subject: x\r\nImportance: Low\r\n\r\nbody"
    raw = apply(stored, options)
    assert raw.endswith(stored) and apply(stored, options) == raw  # the same bytes on every attempt
    head = raw[:-len(stored)].decode("ascii")
    assert head.startswith("Organization: =?utf-8?") and "X-Priority: 5\r\nPriority: non-urgent\r\n" in head
    assert "Sensitivity" not in head  # Normal is written as no header (RFC 2156)
    assert "Importance" not in head  # the message's own Importance: Low is kept
    assert re.search(r"X-Team: =\?utf-8\?\w\?", head)
    assert apply(stored, MessageOptions()) is stored


def test_ews_item_fields_follow_the_head_that_is_sent():
    options = MessageOptions(read_receipt_to="r@example.com", return_receipt_to="d@example.com",
                             sensitivity=Sensitivity.COMPANY_CONFIDENTIAL, importance=Importance.HIGH)
    assert ews_fields(options, apply(b"Subject: x\r\n\r\nbody", options)) == {
        "importance": "High", "sensitivity": "Confidential", "is_read_receipt_requested": True,
        "is_delivery_receipt_requested": True}
    own = apply(b"Subject: x\r\nImportance: low\r\n\r\nbody", options)
    assert ews_fields(options, own)["importance"] == "Low"
    assert ews_fields(MessageOptions(), b"Subject: x\r\n\r\nbody") == {}


# --- the form ------------------------------------------------------------------------------------------------

def test_the_options_are_saved_shown_again_and_recorded(app, admin, smtp_peer):
    smtp = smtp_peer("plain")
    assert admin.post("/p/help/servers/new", smtp_form(smtp)).status_code == 303
    server = only_server(app)
    assert server.options == STORED
    page = admin.get(f"/p/help/servers/{server.id}/edit").text
    assert 'value="Example Bücher AG"' in page and 'name="headers-1-value" value="invoice, März"' in page
    assert '<option value="company-confidential" selected>' in page
    with app.app_context():
        [event] = db.session().exec(select(AuditEvent).where(AuditEvent.action == "server.created")).all()
        assert event.changes["organization"] == [None, "Example Bücher AG"]
    history = admin.get("/p/help/history").text
    assert "Custom MIME headers" in history and "Example Bücher AG" in history and "UnboundField" not in history
    assert "X-Ticket-Queue: help-desk; Keywords: invoice, März" in history


def test_a_header_mailroom_sets_itself_is_refused_beside_its_row_and_nothing_is_saved(app, admin, smtp_peer):
    smtp = smtp_peer("plain")
    response = admin.post("/p/help/servers/new", smtp_form(smtp, **{"headers-1-name": "Subject",
                                                                    "headers-2-name": "Importance",
                                                                    "headers-2-value": "Low",
                                                                    "read_receipt_to": "two@example.com, more@x.com"}),
                          htmx=True)
    assert response.status_code == 422
    assert re.search(r'id="headers-1-name-help" class="error">Subject is a header Mailroom sets itself', response.text)
    assert re.search(r'id="headers-2-name-help" class="error">Importance is set by the option above', response.text)
    assert re.search(r'id="read_receipt_to-help" class="error">Enter one email address', response.text)
    assert 'name="headers-0-value" value="help-desk"' in response.text  # what was typed stays
    with app.app_context():
        assert db.session().exec(select(MailServer)).first() is None


def test_rows_are_added_and_removed_without_saving(app, admin):
    part = admin.post("/p/help/servers/new/section/options", {"protocol": "smtp", **OPTIONS, "_action": "add_header"},
                      htmx=True)
    assert part.status_code == 200
    assert 'id="section-options"' in part.text and 'name="headers-2-name"' in part.text
    assert 'name="headers-1-value" value="invoice, März"' in part.text
    removed = admin.post("/p/help/servers/new/section/options",
                         {"protocol": "smtp", **OPTIONS, "_action": "remove_header-0"}, htmx=True).text
    assert 'name="headers-0-name" value="Keywords"' in removed and 'name="headers-1-name"' not in removed
    whole = admin.post("/p/help/servers/new", {**VALID, **OPTIONS, "_action": "add_header"})  # without htmx
    assert whole.status_code == 200 and 'name="headers-2-name"' in whole.text
    with app.app_context():
        assert db.session().exec(select(MailServer)).first() is None


def test_each_protocol_says_how_it_carries_the_options(admin):
    def page(protocol):
        return admin.post("/p/help/servers/new", {"protocol": protocol, "_action": "refresh"}, htmx=True).text

    smtp, graph_page, ews, gmail_page = page("smtp"), page("graph"), page("ews"), page("gmail")
    assert "Where the SMTP server offers DSN in its EHLO answer" in smtp and "offers DSN" not in graph_page
    assert "a server that does not offer DSN gets the header alone" in smtp
    assert "only names starting with X-, at most five, but Mailroom does not use it" in graph_page
    assert "isDeliveryReceiptRequested" in graph_page and "IsDeliveryReceiptRequested" in ews
    assert "Message options" in gmail_page and "DSN" not in gmail_page and "X-, at most five" not in gmail_page


# --- SMTP: sample mail and queued mail, DSN where offered ---------------------------------------------------

def test_a_sample_mail_carries_the_options_and_no_dsn_where_the_server_offers_none(app, admin, staff, smtp_peer):
    smtp = smtp_peer("plain")  # aiosmtpd offers no DSN and refuses its parameters (555)
    admin.post("/p/help/servers/new", smtp_form(smtp))
    server = only_server(app)
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent
    [received] = smtp.messages
    assert_headers(received.message)
    assert received.dsn == {}


def test_queued_mail_asks_for_a_dsn_where_the_server_offers_it(outbox, make, portal, smtp_peer):  # noqa: F811
    smtp = smtp_peer("dsn")
    make.server(portal, settings=smtp_settings(smtp), options=STORED)
    mail_id = outbox.queue(portal, to=["ann@example.org", "bob@example.org"], subject="Welcome")
    outbox.run(mail_id)
    assert outbox.mail(mail_id).state == MailState.SENT
    [received] = smtp.messages
    assert_headers(received.message)
    assert received.dsn == {"mail": {"RET": "HDRS"}, "rcpt": {"ann@example.org": {"NOTIFY": "SUCCESS,FAILURE"},
                                                              "bob@example.org": {"NOTIFY": "SUCCESS,FAILURE"}}}
    assert b"Organization" not in outbox.mail(mail_id).raw  # the stored message stays as submitted


def test_without_a_return_receipt_no_dsn_is_asked(outbox, make, portal, smtp_peer):  # noqa: F811
    smtp = smtp_peer("dsn")
    make.server(portal, settings=smtp_settings(smtp), options={**STORED, "return_receipt_to": ""})
    outbox.run(outbox.queue(portal))
    [received] = smtp.messages
    assert received.dsn == {"mail": {}, "rcpt": {"to@example.org": {}}} and "Return-Receipt-To" not in received.message


# --- the HTTP APIs -----------------------------------------------------------------------------------------

def test_graph_gets_the_headers_and_exchange_reads_them_into_its_fields(app, admin, staff, authority, graph,
                                                                       test_ca_file):
    server = save(app, admin, graph_form(authority, graph, **OPTIONS))
    authorize(admin, server, test_ca_file)
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent
    [mail] = graph.sent
    assert_headers(mail.mime)
    assert mail.properties == {"importance": "high", "isReadReceiptRequested": True,
                               "isDeliveryReceiptRequested": True,
                               "singleValueExtendedProperties": [{"id": "Integer 0x0036", "value": "3"}]}


def test_ews_gets_the_headers_and_the_item_fields(app, admin, staff, peer):  # noqa: F811
    server = save(app, admin, ews_form(peer, **OPTIONS))
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent, sent
    [mail] = peer.sent
    assert_headers(mail.mime)
    fields = mail.fields
    assert (fields["importance"], fields["sensitivity"]) == ("High", "Confidential")
    assert fields["is_read_receipt_requested"] and fields["is_delivery_receipt_requested"]


def test_the_ews_peer_refuses_what_exchanges_schema_refuses(app, admin, staff, peer):  # noqa: F811
    from tests.peers.ews import _schema_problem
    import xml.etree.ElementTree as ET
    ns = "http://schemas.microsoft.com/exchange/services/2006/types"
    out_of_order = ET.fromstring(f'<t:Message xmlns:t="{ns}"><t:Importance>High</t:Importance>'
                                 f'<t:Sensitivity>Private</t:Sensitivity></t:Message>')
    unknown = ET.fromstring(f'<t:Message xmlns:t="{ns}"><t:Sensitivity>Company-Confidential</t:Sensitivity></t:Message>')
    assert "invalid child element 'Sensitivity'" in _schema_problem(out_of_order)
    assert "'Company-Confidential' is invalid" in _schema_problem(unknown)


def test_gmail_sends_the_headers_as_they_are(app, admin, staff, gmail, key):  # noqa: F811
    server = save(app, admin, gmail_form(gmail, key, **OPTIONS))
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": "jane@example.org"}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent
    [mail] = gmail.sent
    assert_headers(mail.mime)
    assert mail.raw.startswith(b"Organization: =?utf-8?")


def test_validate_sends_nothing(admin, smtp_peer):
    smtp = smtp_peer("dsn")
    report = admin.post("/p/help/servers/new/validate", smtp_form(smtp), htmx=True).text
    assert "All checks passed" in report and smtp.messages == []


# --- the migration -------------------------------------------------------------------------------------------

def test_the_migration_moves_graphs_importance_and_headers_into_the_options_and_back(tmp_path):
    import sqlalchemy as sa
    from alembic import command
    from cryptography.fernet import Fernet

    from webapp.crypto import SecretBox

    from .test_migrations import write_0001_rows

    engine = db.make_engine(f"sqlite:///{tmp_path / 'at-0011.sqlite3'}")
    servers = sa.table("mail_server", sa.column("id"), sa.column("protocol"), sa.column("settings", sa.JSON))
    try:
        db.upgrade(engine, "0001")
        with engine.begin() as connection:
            write_0001_rows(connection, SecretBox([Fernet.generate_key().decode()]))
        db.upgrade(engine, "0011")
        graph_settings = {"graph_endpoint": "https://graph.microsoft.com", "shared_mailbox": "", "importance": "high",
                          "headers": "X-Portal: help-desk\n\nX-Team: Bücher \n"}
        plain_graph = {"graph_endpoint": "https://graph.microsoft.com", "shared_mailbox": "", "importance": "normal",
                       "headers": ""}
        with engine.begin() as connection:
            ids = [row[0] for row in connection.execute(sa.select(servers.c.id).order_by(servers.c.id)).all()]
            graph_id, plain_id, smtp_id = ids[0], ids[1], ids[2]
            for server_id, settings in ((graph_id, graph_settings), (plain_id, plain_graph)):
                connection.execute(servers.update().where(servers.c.id == server_id).values(protocol="graph",
                                                                                           settings=settings))
            smtp_settings_before = connection.execute(sa.select(servers.c.settings).where(
                servers.c.id == smtp_id)).scalar_one()

        db.upgrade(engine)
        read = sa.table("mail_server", sa.column("id"), sa.column("settings", sa.JSON), sa.column("options", sa.JSON))
        with engine.connect() as connection:
            rows = {row.id: row for row in connection.execute(sa.select(read)).all()}
        assert rows[graph_id].settings == {"graph_endpoint": "https://graph.microsoft.com", "shared_mailbox": ""}
        assert MessageOptions.from_dict(rows[graph_id].options) == MessageOptions(
            importance=Importance.HIGH, headers=(CustomHeader("X-Portal", "help-desk"), CustomHeader("X-Team", "Bücher")))
        assert rows[plain_id].options == {} and rows[smtp_id].options == {}
        assert rows[smtp_id].settings == smtp_settings_before

        command.downgrade(db.alembic_config(engine), "0011")
        with engine.connect() as connection:
            back = {row.id: row.settings for row in connection.execute(sa.select(servers)).all()}
            assert "options" not in {c["name"] for c in sa.inspect(connection).get_columns("mail_server")}
        assert back[graph_id] == {**graph_settings, "headers": "X-Portal: help-desk\nX-Team: Bücher\n"}
        assert back[plain_id] == plain_graph and back[smtp_id] == smtp_settings_before
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind, said", [
    ("dsn", "asked for as a DSN (RET=HDRS, NOTIFY=SUCCESS,FAILURE)"),
    ("plain", "the server does not offer DSN: only the Return-Receipt-To header"),
])
def test_the_mail_from_step_says_whether_a_dsn_was_asked(app, make, portal, smtp_peer, kind, said):
    from webapp import checks
    from webapp.mail.config import Sender
    from webapp.mail.envelope import Envelope
    from webapp.mail.message import build_message
    from webapp.mail.transport import send_message

    smtp = smtp_peer(kind)
    server = make.server(portal, settings=smtp_settings(smtp), options=STORED)
    envelope = Envelope.of(build_message(Sender("helpdesk@example.com"), ["ann@example.org"], "Hello", "Hi\n"))
    with app.app_context():
        receipt = send_message(checks.config_for(portal, db.session().get(MailServer, server.id)), envelope)
    [mail_from] = [step for step in receipt.report.steps if step.name == "MAIL FROM"]
    assert ("Delivery receipt", said) in mail_from.details
    assert smtp.messages[0].message["Return-Receipt-To"] == "delivery@example.com"


def test_the_smtp_peers_take_dsn_parameters_only_where_offered(smtp_peer):
    import smtplib

    plain, dsn = smtp_peer("plain"), smtp_peer("dsn")
    with smtplib.SMTP("127.0.0.1", plain.port) as client:
        client.ehlo()
        assert not client.has_extn("dsn") and client.mail("a@example.com", ["RET=HDRS"])[0] == 555
    with smtplib.SMTP("127.0.0.1", dsn.port) as client:
        client.ehlo()
        assert client.has_extn("dsn") and client.mail("a@example.com", ["RET=HDRS"])[0] == 250
        assert client.rcpt("b@example.com", ["NOTIFY=SUCCESS,FAILURE"])[0] == 250
        assert client.rcpt("c@example.com", ["NOTIFY=SUCCESS,NEVER"])[0] == 501  # NEVER stands alone (RFC 3461 4.1)
