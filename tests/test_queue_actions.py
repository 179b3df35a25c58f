"""Retry now, release held, requeue failed, delete: for one message, and for all a filter selects."""
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from tests.queue_factory import T0, Outbox, outbox, utc  # noqa: F401 (a fixture)
from webapp import db, queue_actions
from webapp.models import AuditEvent, DeliveryAttempt, MailState, OutboundMail

QUEUE = "/p/help/queue/"
LATER = datetime(2030, 1, 1, tzinfo=UTC)


def events(app, action: str) -> list[AuditEvent]:
    with app.app_context():
        return list(db.session().exec(select(AuditEvent).where(AuditEvent.action == action)))


def states(app, ids) -> list[str]:
    with app.app_context():
        rows = dict(db.session().exec(select(OutboundMail.id, OutboundMail.state).where(OutboundMail.id.in_(ids))).all())
    return [rows.get(i) for i in ids]


def flash_after(client, answer) -> str:
    assert answer.status_code == 303, answer.text
    return re.search(r'<p class="flash" role="status">([^<]*)</p>', client.get(answer.headers["Location"]).text).group(1)


# -- one message ------------------------------------------------------------------------------------

def test_retry_now_makes_a_deferred_message_due(app, admin, outbox):
    mail = outbox.mail(state=MailState.QUEUED, attempts=3, next_attempt_at=LATER, last_error="421 Busy")
    before = datetime.now(UTC)
    said = flash_after(admin, admin.post(f"{QUEUE}{mail.id}/retry"))
    assert said == "The message is due now: a worker sends it next."
    row = outbox.get(mail.id)
    assert row.state == MailState.QUEUED and row.attempts == 3 and before <= utc(row.next_attempt_at) <= datetime.now(UTC)
    [event] = events(app, "mail.retried")
    assert event.subject == f"message #{mail.id} “Ticket #1 updated”" and event.actor == "admin@example.com"


def test_release_puts_held_mail_back_in_the_queue_without_counting_an_attempt(app, admin, outbox):
    mail = outbox.mail(state=MailState.HELD, attempts=1, next_attempt_at=LATER)
    said = flash_after(admin, admin.post(f"{QUEUE}{mail.id}/release"))
    assert said.startswith("Released")
    row = outbox.get(mail.id)
    assert row.state == MailState.QUEUED and row.attempts == 1 and utc(row.next_attempt_at) < LATER
    assert len(events(app, "mail.released")) == 1


def test_requeue_starts_a_failed_message_afresh_and_keeps_who_had_it(app, admin, outbox):
    mail = outbox.mail(state=MailState.FAILED, to=("ann@example.com", "bob@example.com"), attempts=7,
                       created_at=T0, expires_at=T0 + timedelta(days=5), last_error="Gave up after 5 days")
    with app.app_context():
        row = db.session().get(OutboundMail, mail.id)
        row.recipients = [{"address": "ann@example.com", "state": "sent", "code": 250, "reply": "Ok"},
                          {"address": "bob@example.com", "state": "failed", "code": 452, "reply": "Mailbox full"}]
        db.session().commit()
    before = datetime.now(UTC)
    said = flash_after(admin, admin.post(f"{QUEUE}{mail.id}/requeue"))
    assert said.startswith("Requeued")
    row = outbox.get(mail.id)
    assert row.state == MailState.QUEUED and row.attempts == 0
    assert before <= utc(row.next_attempt_at) <= datetime.now(UTC)
    assert before + timedelta(days=5) <= utc(row.expires_at) <= datetime.now(UTC) + timedelta(days=5)
    assert row.recipients == [{"address": "ann@example.com", "state": "sent", "code": 250, "reply": "Ok"},
                              {"address": "bob@example.com", "state": "pending", "code": None, "reply": ""}]
    assert len(events(app, "mail.requeued")) == 1


def test_a_purged_message_cannot_be_requeued(app, admin, outbox):
    mail = outbox.mail(state=MailState.FAILED, raw=None)
    said = flash_after(admin, admin.post(f"{QUEUE}{mail.id}/requeue"))
    assert said.startswith("Nothing changed") and outbox.get(mail.id).state == MailState.FAILED
    assert events(app, "mail.requeued") == []


def test_delete_asks_first_then_removes_the_message_and_its_attempts(app, admin, outbox):
    mail = outbox.mail(state=MailState.FAILED)
    outbox.attempt(mail.id, "failed", T0, reply="550 No")
    confirm = admin.get(f"{QUEUE}{mail.id}/delete")
    assert confirm.status_code == 200 and "Delete message #" in confirm.text and outbox.get(mail.id) is not None
    answer = admin.post(f"{QUEUE}{mail.id}/delete")
    assert answer.headers["Location"] == QUEUE and flash_after(admin, answer) == "Deleted the message."
    assert outbox.get(mail.id) is None
    with app.app_context():
        assert db.session().exec(select(DeliveryAttempt).where(DeliveryAttempt.mail_id == mail.id)).all() == []
    assert len(events(app, "mail.deleted")) == 1


def test_a_message_a_worker_is_sending_is_not_deleted(app, admin, outbox):
    mail = outbox.mail(state=MailState.SENDING)
    said = flash_after(admin, admin.post(f"{QUEUE}{mail.id}/delete"))
    assert "a worker is sending this message right now" in said and outbox.get(mail.id).state == MailState.SENDING


@pytest.mark.parametrize("action, state", [("retry", MailState.SENT), ("release", MailState.QUEUED),
                                           ("requeue", MailState.HELD), ("retry", MailState.SENDING)])
def test_an_action_that_does_not_apply_changes_nothing(app, admin, outbox, action, state):
    mail = outbox.mail(state=state, next_attempt_at=LATER, attempts=2)
    said = flash_after(admin, admin.post(f"{QUEUE}{mail.id}/{action}"))
    assert said.startswith("Nothing changed")
    row = outbox.get(mail.id)
    assert row.state == state and row.attempts == 2 and utc(row.next_attempt_at) == LATER
    with app.app_context():
        assert db.session().exec(select(AuditEvent).where(AuditEvent.action.like("mail.%"))).all() == []


def test_the_message_page_offers_what_applies_to_admins_only(admin, staff, outbox):
    failed = outbox.mail(state=MailState.FAILED)
    page = admin.get(f"{QUEUE}{failed.id}").text
    assert ">Requeue</button>" in page and "Delete…" in page and ">Retry now</button>" not in page
    assert ">Release</button>" not in page
    page = staff.get(f"{QUEUE}{failed.id}").text
    assert "Requeue" not in page and "Delete…" not in page


def test_staff_may_not_act(app, staff, outbox):
    held = outbox.mail(state=MailState.HELD)
    assert staff.post(f"{QUEUE}{held.id}/release").status_code == 403
    assert staff.post(f"{QUEUE}{held.id}/delete").status_code == 403
    assert staff.get(f"{QUEUE}{held.id}/delete").status_code == 403
    assert staff.get(f"{QUEUE}bulk/release").status_code == 403
    assert staff.post(f"{QUEUE}bulk/release", {"state": "held"}).status_code == 403
    assert outbox.get(held.id).state == MailState.HELD


# -- every message a filter selects -------------------------------------------------------------------

def test_bulk_requeue_changes_what_the_filter_selects_after_a_confirmation_with_the_count(app, admin, make, outbox):
    older = outbox.many(10, state=MailState.FAILED, start=T0 - timedelta(days=3))  # outside the time range
    ours = outbox.many(30, state=MailState.FAILED, start=T0)
    queued = outbox.many(5, state=MailState.QUEUED, start=T0)
    foreign = Outbox(app, make.portal(slug="other", name="Other")).many(5, state=MailState.FAILED, start=T0)
    query = "since=2026-11-01T00:00&state=failed"

    page = admin.get(f"{QUEUE}?{query}").text
    confirm_url = re.search(r'<a href="([^"]+)">Requeue failed</a>', page).group(1).replace("&amp;", "&")
    confirm = admin.get(confirm_url).text
    assert "Requeue: 30 failed messages" in confirm and "The filter: state failed, from 2026-11-01 00:00 UTC." in confirm
    assert states(app, ours) == ["failed"] * 30  # asking changed nothing

    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', confirm))
    answer = admin.post(f"{QUEUE}bulk/requeue", form)
    assert flash_after(admin, answer).startswith("Requeued 30 messages")
    assert answer.headers["Location"] == f"{QUEUE}?state=failed&since=2026-11-01T00:00"
    assert states(app, ours) == ["queued"] * 30
    assert states(app, older) == ["failed"] * 10 and states(app, queued) == ["queued"] * 5
    assert states(app, foreign) == ["failed"] * 5
    [event] = events(app, "mail.requeued")
    assert event.subject == "30 failed messages"
    assert event.changes == {"filter": [None, "state failed, from 2026-11-01 00:00 UTC"], "count": [None, 30]}
    history = admin.get("/p/help/history").text
    assert "Requeued 30 failed messages" in history and "Filter:</span>" in history


def test_bulk_actions_go_in_batches_over_every_state_they_apply_to(app, admin, outbox, monkeypatch):
    monkeypatch.setattr(queue_actions, "BATCH", 7)
    held = outbox.many(50, state=MailState.HELD, next_attempt_at=LATER)
    sent = outbox.many(5, state=MailState.SENT)
    answer = admin.post(f"{QUEUE}bulk/release", {})
    assert flash_after(admin, answer).startswith("Released 50 messages")
    assert states(app, held) == ["queued"] * 50 and states(app, sent) == ["sent"] * 5
    [event] = events(app, "mail.released")
    assert event.changes == {"filter": [None, "every message"], "count": [None, 50]}


def test_bulk_delete_by_recipient_domain_and_search(app, admin, outbox):
    keep = outbox.mail(to=("ann@example.org",), subject="Invoice")
    gone = [outbox.mail(to=(f"u{i}@example.com",), subject="Invoice", state=state)
            for i, state in enumerate([MailState.SENT, MailState.FAILED, MailState.QUEUED])]
    sending = outbox.mail(to=("x@example.com",), subject="Invoice", state=MailState.SENDING)
    other = outbox.mail(to=("y@example.com",), subject="Welcome")
    confirm = admin.get(f"{QUEUE}bulk/delete?recipient=%40example.com&q=invoice").text
    assert "Delete: 3 messages" in confirm
    answer = admin.post(f"{QUEUE}bulk/delete", {"recipient": "@example.com", "q": "invoice"})
    assert flash_after(admin, answer) == "Deleted 3 messages."
    assert [outbox.get(m.id) for m in gone] == [None, None, None]
    assert outbox.get(keep.id) and outbox.get(sending.id) and outbox.get(other.id)


def test_bulk_retry_with_nothing_to_do_says_so(admin, outbox):
    outbox.many(3, state=MailState.SENT)
    confirm = admin.get(f"{QUEUE}bulk/retry").text
    assert "Retry now: 0 queued messages" in confirm and "nothing to do" in confirm
    assert '<button type="submit"' not in confirm.split("<main", 1)[1]


def test_a_bulk_action_that_finds_nothing_to_change_records_nothing(app, admin, outbox):
    outbox.many(3, state=MailState.SENT)
    answer = admin.post(f"{QUEUE}bulk/requeue", {"state": "sent"})
    assert flash_after(admin, answer).startswith("Nothing changed")
    assert events(app, "mail.requeued") == []


def test_a_bulk_action_with_a_bad_filter_changes_nothing(app, admin, outbox):
    failed = outbox.many(3, state=MailState.FAILED)
    answer = admin.post(f"{QUEUE}bulk/delete", {"recipient": "nobody", "state": "failed"})
    assert answer.status_code == 422 and "Enter an address" in answer.text
    assert states(app, failed) == ["failed"] * 3 and events(app, "mail.deleted") == []
