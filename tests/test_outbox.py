"""Accepting mail: the message built from a submission (read back with the email package, header by
header), the portal's From, sizes, the Idempotency-Key, and the committed queued row."""
import json
import threading
from datetime import timedelta
from email import message_from_bytes, policy

import pytest
from pydantic import ValidationError
from sqlmodel import Session, select

from webapp import db, outbox
from webapp.mail.message import Attachment, Mailbox, compose
from webapp.models import MailState, OutboundMail
from webapp.outbox import Refused, Source, Submission, Submitter, TooLarge, error_field

PYTHON = Submitter(Source.PYTHON, "tests")


def parsed(raw: bytes):
    return message_from_bytes(raw, policy=policy.default)


def lines(text: str) -> str:
    return text.replace("\r\n", "\n")


# -- the message -----------------------------------------------------------------------------------

def test_text_and_html_become_multipart_alternative_and_attachments_multipart_mixed():
    message = compose(Mailbox("help@example.com", "Help Désk"), [Mailbox("ann@example.org", "Ann, A."),
                      Mailbox("jörg@bücher.example")], "Grüße", text="Hällo\n", html="<p>Hällo</p>\n",
                      cc=[Mailbox("cc@example.org")], bcc=[Mailbox("hidden@example.org")],
                      reply_to=Mailbox("replies@example.com", "Replies"),
                      headers=[("X-Ticket-Id", "42"), ("References", "<a@example.org>")],
                      attachments=[Attachment("Bericht ü.pdf", "application/pdf", b"%PDF-1.7\x00\xff"),
                                   Attachment("notes.txt", "text/plain", b"plain\n")])
    again = parsed(message.as_bytes())
    assert again["From"] == "Help Désk <help@example.com>"
    assert again["To"] == '"Ann, A." <ann@example.org>, jörg@xn--bcher-kva.example'
    assert again["Cc"] == "cc@example.org" and again["Bcc"] == "hidden@example.org"
    assert again["Reply-To"] == "Replies <replies@example.com>"
    assert again["Subject"] == "Grüße"
    assert again["X-Ticket-Id"] == "42" and again["References"] == "<a@example.org>"
    assert again["Message-ID"].endswith("@example.com>") and again["Date"]
    assert again.get_content_type() == "multipart/mixed"
    body, *files = again.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in body.iter_parts()] == ["text/plain", "text/html"]
    assert lines(again.get_body(("plain",)).get_content()) == "Hällo\n"  # quoted-printable decodes to CRLF
    assert lines(again.get_body(("html",)).get_content()) == "<p>Hällo</p>\n"
    assert [(f.get_filename(), f.get_content_type(), f.get_content()) for f in files] == [
        ("Bericht ü.pdf", "application/pdf", b"%PDF-1.7\x00\xff"), ("notes.txt", "text/plain", "plain\n")]
    assert all(f.get_content_disposition() == "attachment" for f in files)


def test_html_alone_is_one_text_html_part():
    again = parsed(compose(Mailbox("a@example.com"), [Mailbox("b@example.org")], "s", html="<b>hi</b>").as_bytes())
    assert again.get_content_type() == "text/html" and again.get_content() == "<b>hi</b>\n"


def test_text_that_looks_encoded_reaches_readers_as_typed():
    message = compose(Mailbox("a@example.com"), [Mailbox("b@example.org")], "=?utf-8?q?Evil?=", text="t",
                      headers=[("X-Note", "=?utf-8?q?Evil?=")])
    again = parsed(message.as_bytes())
    assert again["Subject"] == "=?utf-8?q?Evil?=" and again["X-Note"] == "=?utf-8?q?Evil?="


@pytest.mark.parametrize("name", ["From", "bcc", "Content-Type", "content-foo", "Resent-To", "MIME-Version",
                                  "Message-ID", "Bad Name", "Bad:Name", "Ünicode"])
def test_headers_mailroom_sets_itself_or_that_are_no_names_are_refused(name):
    with pytest.raises(ValueError):
        compose(Mailbox("a@example.com"), [Mailbox("b@example.org")], "s", text="t", headers=[(name, "x")])


@pytest.mark.parametrize("evil", ["\r\n", "\n", "\r", "\x0b", "\x85", "\u2028", "\x00"])
def test_line_breaks_anywhere_in_a_header_are_refused(evil):
    for kwargs in ({"headers": [("X-A", f"a{evil}Bcc: v@example.org")]},
                   {"reply_to": Mailbox("r@example.com", f"R{evil}Bcc: v@example.org")}):
        with pytest.raises(ValueError):
            compose(Mailbox("a@example.com"), [Mailbox("b@example.org")], "s", text="t", **kwargs)
    with pytest.raises(ValueError):
        compose(Mailbox("a@example.com"), [Mailbox("b@example.org")], f"s{evil}Bcc: v@example.org", text="t")


# -- the submission --------------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ({"to": ["ann@example.org", "not an address"], "text": "t"}, "to[1]"),
    ({"to": ["a@example.org"], "cc": ["x@"], "text": "t"}, "cc[0]"),
    ({"to": ["a@example.org"], "from": "Evil\n <a@example.org>", "text": "t"}, "from"),
    ({"to": ["a@example.org"], "reply_to": "nobody", "text": "t"}, "reply_to"),
    ({"to": ["a@example.org"], "subject": "a\r\nBcc: v@example.org", "text": "t"}, "subject"),
    ({"to": ["a@example.org"], "headers": {"X-A": "a\nb"}, "text": "t"}, "headers.X-A"),
    ({"to": ["a@example.org"], "headers": {"Bcc": "v@example.org"}, "text": "t"}, "headers"),
    ({"to": ["a@example.org"], "text": "t", "attachments": [{"filename": "a.txt", "content": "!!!"}]},
     "attachments[0].content"),
    ({"to": ["a@example.org"], "text": "t", "attachments": [{"filename": "../a.txt", "content": ""}]},
     "attachments[0].filename"),
    ({"to": ["a@example.org"], "text": "t", "attachments": [{"filename": "a", "content_type": "pdf",
                                                             "content": ""}]}, "attachments[0].content_type"),
    ({"text": "t"}, "to"),
    ({"to": ["a@example.org"]}, "text"),
    ({"to": ["a@example.org"], "text": "t", "priority": "high"}, "priority"),
])
def test_a_bad_submission_names_its_field(body, field):
    with pytest.raises(ValidationError) as caught:
        Submission.model_validate_json(json.dumps(body))
    assert [error_field(error) for error in caught.value.errors()] == [field]


def test_base64_may_be_wrapped_but_must_be_base64():
    body = {"to": ["a@example.org"], "text": "t", "attachments": [{"filename": "a.bin", "content": "AAEC\r\n/w=="}]}
    assert Submission.model_validate_json(json.dumps(body)).attachments[0].content == b"\x00\x01\x02\xff"
    from_python = Submission(to=["a@example.org"], text="t", attachments=[{"filename": "a.bin", "content": b"\xff"}])
    assert from_python.attachments[0].content == b"\xff" and from_python.attachments[0].mime_type == \
        "application/octet-stream"


# -- accepting it ----------------------------------------------------------------------------------

@pytest.fixture
def servers(make, portal):
    first = make.server(portal, from_address="helpdesk@example.com", sender_name="Help Desk",
                        reply_to="support@example.com", enabled=False)
    second = make.server(portal, from_address="noreply@example.com", sender_name="Help Desk Robot")
    return first, second


def test_a_submission_is_stored_queued_and_committed(app, portal, servers, migrated):
    with app.app_context():
        mail = outbox.submit(portal, Submission(to=["Ann <ann@example.org>"], cc=["cc@example.org"],
                                                bcc=["hidden@example.org"], subject="Hello", text="Hi\n"), PYTHON)
    with Session(migrated) as other:  # another connection sees it: it was committed
        stored = other.get(OutboundMail, mail.id)
    assert stored.state == MailState.QUEUED and stored.source == "python" and stored.submitted_by == "tests"
    assert stored.recipients == [{"address": a, "state": "pending", "code": None, "reply": ""}
                                 for a in ("ann@example.org", "cc@example.org", "hidden@example.org")]
    assert stored.to_summary == "ann@example.org, cc@example.org, hidden@example.org"
    assert stored.mail_from == "noreply@example.com" and stored.subject == "Hello"
    assert stored.size == len(stored.raw) and stored.attempts == 0
    assert abs(stored.next_attempt_at - stored.created_at) < timedelta(seconds=1)
    assert stored.expires_at - stored.created_at == timedelta(hours=120)
    message = parsed(stored.raw)
    assert message["From"] == "Help Desk Robot <noreply@example.com>"  # the first enabled server's
    assert message["Reply-To"] is None  # that server has none
    assert message["Bcc"] == "hidden@example.org" and message["Message-ID"] == stored.message_id


def test_a_from_of_the_portal_takes_that_servers_name_and_reply_to(app, portal, servers):
    with app.app_context():
        mail = outbox.submit(portal, Submission.model_validate(
            {"from": "HELPDESK@example.com", "to": ["a@example.org"], "text": "t"}), PYTHON)
    message = parsed(mail.raw)
    assert message["From"] == "Help Desk <helpdesk@example.com>"
    assert message["Reply-To"] == "support@example.com"


def test_a_from_the_portal_does_not_allow_is_refused_and_nothing_is_stored(app, portal, servers):
    with app.app_context():
        with pytest.raises(Refused) as caught:
            outbox.submit(portal, Submission.model_validate(
                {"from": "ceo@example.com", "to": ["a@example.org"], "text": "t"}), PYTHON)
        assert caught.value.field == "from" and "helpdesk@example.com, noreply@example.com" in caught.value.message
        assert db.session().exec(select(OutboundMail)).all() == []


def test_a_portal_without_servers_cannot_take_mail(app, portal):
    with app.app_context(), pytest.raises(Refused) as caught:
        outbox.submit(portal, Submission(to=["a@example.org"], text="t"), PYTHON)
    assert caught.value.field == "from" and "Mail servers" in caught.value.message


def test_sizes_and_recipient_counts_are_bounded(app, portal, servers):
    app.config.update(ATTACHMENTS_MAX_BYTES=1000, MESSAGE_MAX_BYTES=3000, MESSAGE_MAX_RECIPIENTS=2)
    with app.app_context():
        with pytest.raises(TooLarge) as caught:
            outbox.submit(portal, Submission(to=["a@example.org"], text="t", attachments=[
                {"filename": "a.bin", "content": b"x" * 1001}]), PYTHON)
        assert caught.value.field == "attachments" and caught.value.status == 413
        with pytest.raises(TooLarge) as caught:
            outbox.submit(portal, Submission(to=["a@example.org"], text="t" * 3000), PYTHON)
        assert caught.value.field == "message"
        with pytest.raises(Refused) as caught:
            outbox.submit(portal, Submission(to=["a@example.org", "b@example.org"], bcc=["c@example.org"],
                                             text="t"), PYTHON)
        assert caught.value.field == "to" and "at most 2" in caught.value.message
        assert db.session().exec(select(OutboundMail)).all() == []


def test_the_same_idempotency_key_and_request_return_the_same_message(app, portal, servers):
    submission = Submission(to=["a@example.org"], subject="Once", text="t")
    with app.app_context():
        first = outbox.submit(portal, submission, PYTHON, idempotency_key="order-17")
        again = outbox.submit(portal, Submission(to=["a@example.org"], subject="Once", text="t"), PYTHON,
                              idempotency_key="order-17")
        assert again.id == first.id and again.raw == first.raw
        with pytest.raises(outbox.IdempotencyKeyReused) as caught:
            outbox.submit(portal, Submission(to=["a@example.org"], subject="Twice", text="t"), PYTHON,
                          idempotency_key="order-17")
        assert caught.value.field == "Idempotency-Key"
        with pytest.raises(Refused) as caught:
            outbox.submit(portal, submission, PYTHON, idempotency_key="with space")
        assert caught.value.field == "Idempotency-Key"
        assert len(db.session().exec(select(OutboundMail)).all()) == 1


def test_two_submissions_with_one_key_at_the_same_moment_store_one_message(app, portal, servers):
    barrier, ids, errors = threading.Barrier(4), [], []

    def hand_in():
        try:
            with app.app_context():
                barrier.wait(10)
                ids.append(outbox.submit(portal, Submission(to=["a@example.org"], text="t"), PYTHON,
                                         idempotency_key="same-moment").id)
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=hand_in) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and len(ids) == 4 and len(set(ids)) == 1
    with app.app_context():
        assert len(db.session().exec(select(OutboundMail)).all()) == 1


# -- the command line ------------------------------------------------------------------------------

def test_the_command_line_queues_a_message_and_prints_its_id(app, portal, servers, tmp_path):
    html, report = tmp_path / "body.html", tmp_path / "report.pdf"
    html.write_text("<p>Hällo</p>", encoding="utf-8")
    report.write_bytes(b"%PDF-1.7\x00")
    result = app.test_cli_runner().invoke(args=[
        "mail", "enqueue", "help", "--to", "Ann <ann@example.org>", "--to", "bob@example.org", "--subject", "Report",
        "--text", "See the report.", "--html-file", str(html), "--attach", str(report), "--header", "X-Job: 7"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        mail = db.session().get(OutboundMail, int(result.output.strip()))
    assert mail.source == "cli" and mail.submitted_by == "command line" and mail.state == "queued"
    message = parsed(mail.raw)
    assert message["To"] == "Ann <ann@example.org>, bob@example.org" and message["X-Job"] == "7"
    assert lines(message.get_body(("html",)).get_content()) == "<p>Hällo</p>\n"
    assert [(a.get_filename(), a.get_content_type()) for a in message.iter_attachments()] == [
        ("report.pdf", "application/pdf")]


def test_the_command_line_names_the_option_at_fault_and_stores_nothing(app, portal, servers):
    runner = app.test_cli_runner()
    bad = runner.invoke(args=["mail", "enqueue", "help", "--to", "ann@example.org", "--to", "bob", "--text", "t"])
    assert bad.exit_code == 1 and "--to #2:" in bad.output and "not queued" in bad.output
    foreign = runner.invoke(args=["mail", "enqueue", "help", "--to", "a@example.org", "--from", "x@example.net",
                                  "--text", "t"])
    assert foreign.exit_code == 1 and "--from: x@example.net is not a From address of this portal" in foreign.output
    unknown = runner.invoke(args=["mail", "enqueue", "nowhere", "--to", "a@example.org", "--text", "t"])
    assert unknown.exit_code == 1 and "No portal has the slug nowhere" in unknown.output
    with app.app_context():
        assert db.session().exec(select(OutboundMail)).all() == []
