"""The delivery contract every transport shares: the stored message (Envelope) is sent byte for
byte on every attempt, each recipient's outcome is in the Receipt (or the DeliveryError), and a
failure says whether it is temporary, its retry time and whether the credentials are to blame."""
import email
from datetime import UTC, datetime, timedelta
from email import policy
from email.utils import format_datetime

import pytest
import requests

from webapp.mail.api import retry_seconds
from webapp.mail.attempt import Attempt
from webapp.mail.config import Sender
from webapp.mail.envelope import Envelope
from webapp.mail.message import build_message
from webapp.mail.redact import Redactor
from webapp.mail.report import DeliveryError, Outcome, Report, StepFailed, step_result
from webapp.mail.transport import open_connection

from .test_mail_smtp import SMTP, config_for

SENDER = Sender("mailer@example.test", "Portal Mailer")


def _message(**kwargs):
    return build_message(SENDER, ["to@example.org"], "Subject", "Body\n", **kwargs)


def test_an_envelope_names_every_recipient_and_keeps_its_bytes_and_message_id():
    message = _message(cc=["Cc Person <cc@example.org>"], bcc=["hidden@example.org", "to@example.org"])
    envelope = Envelope.of(message)
    assert envelope.mail_from == "mailer@example.test"
    assert envelope.recipients == ("to@example.org", "cc@example.org", "hidden@example.org")
    assert envelope.message_id == str(message["Message-ID"])
    again = Envelope.of(email.message_from_bytes(envelope.raw, policy=policy.default))
    assert again.raw == envelope.raw and again.message_id == envelope.message_id


def test_a_message_without_message_id_gets_one_from_the_sender_domain_once():
    message = _message()
    del message["Message-ID"]
    envelope = Envelope.of(message)
    assert envelope.message_id.endswith("@example.test>")
    assert f"Message-ID: {envelope.message_id}".encode() in envelope.raw


def test_without_bcc_drops_only_the_bcc_header_and_its_folded_lines():
    many = [f"blind{i}@example.org" for i in range(12)]  # long enough to be folded
    envelope = Envelope.of(_message(bcc=many))
    assert b"\r\n " in envelope.raw.split(b"\r\n\r\n")[0]  # the Bcc header really is folded
    sent = envelope.without_bcc()
    assert b"Bcc:" not in sent and b"blind" not in sent
    assert sent.split(b"\r\n\r\n", 1)[1] == envelope.raw.split(b"\r\n\r\n", 1)[1]
    kept = email.message_from_bytes(sent, policy=policy.default)
    assert kept["To"] == "to@example.org" and kept["Subject"] == "Subject"


def test_a_message_without_bcc_is_transmitted_as_stored():
    envelope = Envelope.of(_message())
    assert envelope.without_bcc() == envelope.raw
    named = Envelope.of(build_message(SENDER, ["to@example.org"], "Bcc: is only a word here", "Body\n"))
    assert named.without_bcc() == named.raw


def test_needs_utf8_only_for_a_non_ascii_address():
    assert not Envelope.of(_message()).needs_utf8
    message = build_message(SENDER, ["jörg@example.org"], "Grüße", "Hallo\n")
    assert Envelope.of(message).needs_utf8


def test_smtp_sends_the_stored_bytes_and_names_each_recipients_outcome(smtp_peer):
    peer = smtp_peer("refuse_recipients")
    envelope = Envelope.of(_message(cc=["nobody@example.org"], bcc=["later@example.org"]))
    receipt = SMTP.send(config_for(peer), envelope)
    outcomes = {r.address: r for r in receipt.recipients}
    assert outcomes["to@example.org"].accepted and outcomes["to@example.org"].code == 250
    assert not outcomes["nobody@example.org"].accepted and outcomes["nobody@example.org"].code == 550
    assert not outcomes["nobody@example.org"].temporary
    assert outcomes["later@example.org"].temporary and outcomes["later@example.org"].code == 450
    assert {r.address for r in receipt.refused} == {"nobody@example.org", "later@example.org"}
    received = peer.messages[0]
    assert received.rcpt_tos == ["to@example.org"]
    assert received.data.replace(b"\r\n", b"\n") == envelope.without_bcc().replace(b"\r\n", b"\n")


def test_when_every_recipient_is_refused_the_error_carries_each_outcome_and_is_temporary_if_one_may_go_later(
        smtp_peer):
    peer = smtp_peer("refuse_recipients")
    message = build_message(SENDER, ["nobody@example.org", "later@example.org"], "Subject", "Body\n")
    with pytest.raises(DeliveryError) as raised:
        SMTP.send(config_for(peer), Envelope.of(message))
    error = raised.value
    assert error.step == "RCPT TO" and error.temporary and error.code == 450
    assert {r.address: r.code for r in error.recipients} == {"nobody@example.org": 550, "later@example.org": 450}
    assert peer.messages == []


def test_a_refused_password_is_a_credentials_failure(smtp_peer):
    peer = smtp_peer("reject")
    with pytest.raises(DeliveryError) as raised:
        SMTP.send(config_for(peer), Envelope.of(_message()))
    assert raised.value.step == "Authenticate" and raised.value.credentials and raised.value.code == 535


def test_a_refused_connection_is_temporary_and_not_the_credentials(smtp_peer):
    peer = smtp_peer("closed")
    with pytest.raises(DeliveryError) as raised:
        SMTP.send(config_for(peer), Envelope.of(_message()))
    assert raised.value.temporary and not raised.value.credentials and raised.value.retry_after is None


def test_a_connection_sends_each_message_with_its_own_message_id(smtp_peer):
    peer = smtp_peer("plain")
    connection = open_connection(config_for(peer))
    try:
        first = connection.send(Envelope.of(_message()))
        second = connection.send(Envelope.of(_message()))
    finally:
        connection.close()
    assert first.message_id != second.message_id
    assert [m.message["Message-ID"] for m in peer.messages] == [first.message_id, second.message_id]


def test_the_attempt_runner_records_the_failure_with_its_retry_time_and_stops():
    report = Report()
    ran = []
    with Attempt(report, Redactor(["hunter2-secret"])) as attempt:
        attempt.run("One", lambda: step_result("done with hunter2-secret"))
        attempt.run("Two", lambda: (_ for _ in ()).throw(
            StepFailed("throttled", "wait", code=429, retry_after=30.0, credentials=False)))
        ran.append("three")  # never reached
    assert ran == []
    assert [s.name for s in report.steps] == ["One", "Two"]
    assert "hunter2-secret" not in report.steps[0].summary
    failed = report.failure
    assert failed.outcome == Outcome.FAILED and failed.retry_after == 30.0 and failed.code == 429
    error = DeliveryError(report)
    assert error.retry_after == 30.0 and error.temporary and not error.credentials


def test_an_error_nobody_put_in_words_is_a_bug_and_propagates():
    with pytest.raises(ZeroDivisionError):
        with Attempt(Report(), Redactor()) as attempt:
            attempt.run("Bug", lambda: 1 / 0)


def _response(retry_after: str) -> requests.Response:
    response = requests.Response()
    response.status_code = 429
    response.headers["Retry-After"] = retry_after
    return response


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_seconds(_response("120")) == 120.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    assert 60 <= retry_seconds(_response(later)) <= 90
    assert retry_seconds(_response("")) is None
    assert retry_seconds(_response("soon")) is None
