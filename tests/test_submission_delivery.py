"""A message submitted over SMTP, as the outbox stores it, sent by the HTTP API transports: through
Microsoft Graph with an app-only token and through the Gmail API with a service-account key. The
blind recipients reach them (they read the Bcc field of the stored message) and the device's
header fields arrive as it wrote them; and the whole way, the worker included."""
from email import message_from_bytes
from email import policy as email_policy
from email.utils import getaddresses

from sqlmodel import select

from webapp import checks, db
from webapp.mail.envelope import Envelope
from webapp.mail.transport import transport_for
from webapp.models import MailServer, MailState, OutboundMail, Portal

from .delivery_fixtures import outbox  # noqa: F401  (fixture)
from .test_gmail import gmail, gmail_form, key  # noqa: F401  (fixtures)
from .test_graph import authority, graph, graph_form  # noqa: F401  (fixtures)
from .test_oauth import MAILBOX, at_the_provider, back_at_mailroom, save, to_the_provider
from .test_submission import implicit_tls, login, relay, starttls, stored, submit  # noqa: F401  (fixtures)

DEVICE_MESSAGE = (  # as a scan-to-mail printer writes it: a text and the scan attached
    f"From: Scanner 7 <{MAILBOX}>\r\nTo: Ann Example <ann@example.org>\r\nCc: bob@example.org\r\n"
    "Subject: =?utf-8?q?Scan_f=C3=BCr_Ann?=\r\nX-Device: scanner-7\r\nMIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="scan-7"\r\n\r\n'
    "--scan-7\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Ihr Scan liegt bei. Grüße\r\n"
    '--scan-7\r\nContent-Type: application/pdf; name="scan.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
    'Content-Disposition: attachment; filename="scan.pdf"\r\n\r\nJVBERi0xLjQKJSBzY2FuCg==\r\n'
    "--scan-7--\r\n").encode()
RECIPIENTS = ("ann@example.org", "bob@example.org", "blind@example.org")


NO_HEADERS = {"headers-0-name": "", "headers-0-value": "", "headers-1-name": "", "headers-1-value": ""}  # the bytes as stored


def envelope_of(mail: OutboundMail) -> Envelope:
    """What the worker hands the transport: the stored row, as it is."""
    return Envelope(mail_from=mail.mail_from, recipients=tuple(r["address"] for r in mail.recipients), raw=mail.raw,
                    message_id=mail.message_id)


def send_stored(app, server_id: int, mail: OutboundMail):
    with app.app_context():
        portal = db.session().exec(select(Portal)).one()
        server = db.session().exec(select(MailServer).where(MailServer.id == server_id)).unique().one()
        config = checks.config_for(portal, server)
        db.release()
        return transport_for(server.protocol).send(config, envelope_of(mail))


def submitted(app, relay_, account) -> OutboundMail:
    with starttls(relay_) as client:
        client.login(account.username, account.password)
        code, reply = submit(client, DEVICE_MESSAGE, sender=MAILBOX, recipients=RECIPIENTS)
    assert code == 250, reply
    [mail] = stored(app)
    return mail


def test_through_graph_with_an_app_only_token(app, admin, authority, graph, relay, login, test_ca_file):  # noqa: F811
    form = graph_form(authority, graph, flow="app", scope="https://graph.microsoft.com/.default", authorize_url="",
                      importance="", **NO_HEADERS)
    server = save(app, admin, form)
    start = to_the_provider(admin, f"/p/help/servers/{server.id}/oauth/admin-consent")
    back_at_mailroom(admin, at_the_provider(start, test_ca_file, action="accept"))
    mail = submitted(app, relay(), login(from_addresses=MAILBOX))

    receipt = send_stored(app, server.id, mail)

    assert {r.address for r in receipt.recipients} == set(RECIPIENTS)
    [sent] = graph.sent
    assert sent.app_only and sent.mailbox == MAILBOX and sent.json is None  # the MIME form: the bytes as stored
    assert sent.raw == mail.raw
    assert sorted(sent.recipients) == sorted(RECIPIENTS)  # the blind copy too, from the stored Bcc field
    _device_fields_arrive_as_written(sent.mime, mail)


def test_through_gmail_with_a_service_account_key(app, admin, gmail, key, relay, login):  # noqa: F811
    server = save(app, admin, gmail_form(gmail, key))
    mail = submitted(app, relay(), login(from_addresses=MAILBOX))

    receipt = send_stored(app, server.id, mail)

    assert receipt.message_id == mail.message_id
    [sent] = gmail.sent
    assert sent.mailbox == MAILBOX and sent.raw == mail.raw  # the stored bytes, as they are
    blind = getaddresses([str(v) for v in sent.mime.get_all("Bcc", [])])
    assert [address for _, address in blind] == ["blind@example.org"]  # Gmail reads it, then drops the field
    _device_fields_arrive_as_written(sent.mime, mail)


def _device_fields_arrive_as_written(received, mail: OutboundMail) -> None:
    device = message_from_bytes(DEVICE_MESSAGE, policy=email_policy.default)
    for name, value in device.items():  # every field the device wrote arrives as it wrote it
        assert received.get_all(name) == [value], name
    assert received["Message-ID"] == mail.message_id and received["Date"] is not None
    text, scan = [part for part in received.walk() if not part.is_multipart()]
    assert text.get_content() == "Ihr Scan liegt bei. Grüße"
    assert scan.get_filename() == "scan.pdf" and scan.get_content() == b"%PDF-1.4\n% scan\n"


def test_submitted_then_delivered_by_the_worker_through_graph(app, admin, authority, graph, relay, login,  # noqa: F811
                                                              outbox, test_ca_file):  # noqa: F811
    """What a new user tries: a device sends with its SMTP credential, the worker delivers the queued
    message through Graph with an app-only token, and the queue page says who submitted it."""
    form = graph_form(authority, graph, flow="app", scope="https://graph.microsoft.com/.default", authorize_url="",
                      importance="", **NO_HEADERS)
    server = save(app, admin, form)
    start = to_the_provider(admin, f"/p/help/servers/{server.id}/oauth/admin-consent")
    back_at_mailroom(admin, at_the_provider(start, test_ca_file, action="accept"))
    mail = submitted(app, relay(), login(name="Scanner, 2nd floor", from_addresses=MAILBOX))

    outbox.run(mail.id)

    delivered = outbox.mail(mail.id)
    assert delivered.state == MailState.SENT, delivered.last_error
    assert {r["address"]: r["state"] for r in delivered.recipients} == dict.fromkeys(RECIPIENTS, "sent")
    [sent] = graph.sent
    assert sent.app_only and sorted(sent.recipients) == sorted(RECIPIENTS) and sent.raw == mail.raw
    page = admin.get(f"/p/help/queue/{mail.id}").text
    assert "Scanner, 2nd floor" in page and "127.0.0.1" in page
