"""The delivery worker, run in this process against real SMTP peers: a message is claimed,
sent, and its outcome recorded; temporary failures are retried, permanent ones fail with the
server's words, recipients are handled one by one, consecutive messages share a connection."""
import itertools
from datetime import timedelta

import pytest
from sqlmodel import select

from webapp import db
from webapp.delivery import claims
from webapp.models import ConnectionLease, MailState, OutboundMail, utcnow

from .delivery_fixtures import outbox, smtp_settings, wait_until  # noqa: F401  (fixtures)


def test_a_queued_message_is_sent_and_recorded_at_once(outbox, make, portal, smtp_peer):
    peer = smtp_peer("plain")
    server = make.server(portal, settings=smtp_settings(peer))
    mail_id = outbox.queue(portal, to=["ann@example.org", "bob@example.org"], subject="Welcome")
    outbox.run(mail_id)

    mail = outbox.mail(mail_id)
    assert mail.state == MailState.SENT and mail.sent_at is not None and mail.attempts == 1
    assert mail.server_id == server.id and mail.lease_owner == "" and mail.last_code == 250
    assert [r["state"] for r in mail.recipients] == ["sent", "sent"]
    [received] = peer.messages
    assert received.message["Message-ID"] == mail.message_id and received.rcpt_tos == ["ann@example.org",
                                                                                           "bob@example.org"]
    assert received.data.replace(b"\r\n", b"\n") in mail.raw.replace(b"\r\n", b"\n")  # the stored bytes
    [attempt] = outbox.attempts(mail_id)
    assert attempt.outcome == "sent" and attempt.code == 250 and attempt.worker == "test-worker"
    assert attempt.reply.startswith("250 ") and attempt.server_label == "Relay"


def test_a_message_is_claimed_once_however_many_jobs_wake_for_it(outbox, make, portal, smtp_peer):
    peer = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(peer))
    mail_id = outbox.queue(portal)
    with outbox.app.app_context():
        first = claims.claim("one", 60, mail_id)
        second = claims.claim("two", 60, mail_id)
        assert first.id == mail_id and second is None
        db.session().get(OutboundMail, mail_id).state = MailState.QUEUED  # let it go again, untried
        db.session().commit()
    outbox.run(mail_id)
    outbox.run(mail_id)
    assert len(peer.messages) == 1 and outbox.mail(mail_id).state == MailState.SENT


def test_consecutive_messages_of_a_portal_share_one_connection(outbox, make, portal, smtp_peer):
    peer = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(peer))
    ids = [outbox.queue(portal, subject=f"Message {n}") for n in range(5)]
    outbox.run(ids[0])
    assert sorted(peer.message_ids()) == sorted(outbox.mail(i).message_id for i in ids)
    assert peer.sessions == 1
    assert all(outbox.mail(i).state == MailState.SENT for i in ids)


def test_a_temporary_refusal_is_retried_after_the_backoff_and_then_sent(outbox, make, portal, smtp_peer):
    outbox.slow_backoff()
    peer = smtp_peer("greylist")
    server = make.server(portal, settings=smtp_settings(peer))
    mail_id = outbox.queue(portal)
    outbox.run(mail_id)

    deferred = outbox.mail(mail_id)
    assert deferred.state == MailState.QUEUED and deferred.attempts == 1 and deferred.last_code == 451
    assert "451 4.7.1 Greylisted" in deferred.last_error
    assert deferred.next_attempt_at.replace(tzinfo=None) > utcnow().replace(tzinfo=None)  # not due yet
    assert outbox.server(server.id).failing_since is None  # the message was refused for now, not the server
    outbox.run()
    assert outbox.mail(mail_id).state == MailState.QUEUED and peer.messages == []  # the backoff holds it back

    wait_until(lambda: outbox.run() is not None and outbox.mail(mail_id).state == MailState.SENT, 30,
               "the retry after the backoff")
    assert [a.outcome for a in outbox.attempts(mail_id)] == ["deferred", "sent"]
    assert outbox.mail(mail_id).attempts == 2 and len(peer.messages) == 1


def test_a_permanent_refusal_fails_at_once_with_the_servers_words(outbox, make, portal, smtp_peer):
    peer = smtp_peer("refuse_message")
    make.server(portal, settings=smtp_settings(peer))
    alternate = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(alternate), description="Alternate")
    mail_id = outbox.queue(portal)
    outbox.run(mail_id)

    mail = outbox.mail(mail_id)
    assert mail.state == MailState.FAILED and mail.last_code == 554 and mail.attempts == 1
    assert '554 5.7.1 Message rejected as spam' in mail.last_error
    assert [r["state"] for r in mail.recipients] == ["failed"]
    assert alternate.messages == []  # a 5xx to the message is no reason to try another server
    outbox.make_due(mail_id)
    outbox.run()
    assert outbox.mail(mail_id).state == MailState.FAILED and len(outbox.attempts(mail_id)) == 1


def test_each_recipient_has_its_outcome_and_those_refused_for_now_are_retried_alone(outbox, make, portal, smtp_peer):
    outbox.slow_backoff()
    peer = smtp_peer("refuse_recipients")
    make.server(portal, settings=smtp_settings(peer))
    mail_id = outbox.queue(portal, to=["ok@example.org", "nobody@example.org", "later@example.org"])
    outbox.run(mail_id)

    mail = outbox.mail(mail_id)
    states = {r["address"]: (r["state"], r["code"]) for r in mail.recipients}
    assert states == {"ok@example.org": ("sent", 250), "nobody@example.org": ("failed", 550),
                      "later@example.org": ("pending", 450)}
    assert mail.state == MailState.QUEUED and mail.sent_at is not None and "450 4.2.1" in mail.last_error
    assert [m.rcpt_tos for m in peer.messages] == [["ok@example.org"]]

    outbox.make_due(mail_id)
    outbox.run(mail_id)
    again = outbox.mail(mail_id)
    assert [m.rcpt_tos for m in peer.messages] == [["ok@example.org"]]  # ok@ did not get it twice
    assert again.attempts == 2 and again.state == MailState.QUEUED
    assert {r["address"]: r["state"] for r in again.recipients}["ok@example.org"] == "sent"
    last = outbox.attempts(mail_id)[-1]
    assert last.outcome == "deferred" and last.code == 450


def test_a_message_past_its_lifetime_fails_with_the_last_reason(outbox, make, portal, smtp_peer):
    peer = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(peer))
    mail_id = outbox.queue(portal, expires_at=utcnow() - timedelta(seconds=1), attempts=3,
                           last_error="RCPT TO: 451 try later")
    outbox.run(mail_id)
    mail = outbox.mail(mail_id)
    assert mail.state == MailState.FAILED and "lifetime" in mail.last_error and "451 try later" in mail.last_error
    assert peer.messages == []


def test_a_message_whose_body_was_purged_fails_in_words(outbox, make, portal, smtp_peer):
    make.server(portal, settings=smtp_settings(smtp_peer("plain")))
    mail_id = outbox.queue(portal, raw=None)
    outbox.run(mail_id)
    mail = outbox.mail(mail_id)
    assert mail.state == MailState.FAILED and "body was deleted" in mail.last_error


def test_new_mail_is_claimed_before_due_retries(outbox, portal, monkeypatch):
    old = outbox.queue(portal, attempts=3, next_attempt_at=utcnow() - timedelta(minutes=5))
    new = outbox.queue(portal)
    with outbox.app.app_context():
        monkeypatch.setattr(claims, "_turns", itertools.count(1))  # a known turn: not a retry turn
        assert claims.claim("w", 60).id == new
        assert claims.claim("w", 60).id == old  # retries when no new mail waits


def test_retries_get_their_turn_while_new_mail_keeps_coming(outbox, portal):
    old = outbox.queue(portal, attempts=3, next_attempt_at=utcnow() - timedelta(minutes=5))
    for _ in range(claims.RETRY_TURN):
        outbox.queue(portal)
    with outbox.app.app_context():
        taken = [claims.claim("w", 60).id for _ in range(claims.RETRY_TURN)]
    assert old in taken


def test_a_worker_that_died_leaves_nothing_behind(outbox, make, portal, smtp_peer):
    peer = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(peer))
    mail_id = outbox.queue(portal)
    with outbox.app.app_context():
        claims.claim("dead-worker", 0.01, mail_id)  # claimed, then the worker vanished
    wait_until(lambda: outbox.mail(mail_id).lease_until.replace(tzinfo=None) < utcnow().replace(tzinfo=None), 10,
               "the lease to run out")
    outbox.run()
    assert outbox.mail(mail_id).state == MailState.SENDING and peer.messages == []  # not before the sweep
    with outbox.app.app_context():
        assert claims.rescue_expired() == [mail_id]
    rescued = outbox.mail(mail_id)
    assert rescued.state == MailState.QUEUED and rescued.attempts == 1 and "dead-worker" in rescued.last_error
    outbox.run()
    assert outbox.mail(mail_id).state == MailState.SENT and len(peer.messages) == 1
    assert [a.outcome for a in outbox.attempts(mail_id)] == ["deferred", "sent"]


def test_a_message_whose_claim_was_taken_over_is_left_alone(outbox, make, portal, smtp_peer):
    peer = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(peer))
    mail_id = outbox.queue(portal)
    with outbox.app.app_context():
        mail = claims.claim("slow-worker", 60, mail_id)
        db.session().get(OutboundMail, mail_id).lease_owner = "another-worker"  # the sweep gave it to another
        db.session().commit()
        from webapp.delivery.worker import Run

        Run(outbox.settings, "slow-worker").deliver(mail)
    assert peer.messages == [] and outbox.mail(mail_id).lease_owner == "another-worker"


def test_no_free_connection_delays_the_message_without_counting_an_attempt(outbox, make, portal, smtp_peer):
    peer = smtp_peer("plain")
    server = make.server(portal, settings=smtp_settings(peer), max_connections=1)
    with outbox.app.app_context():
        db.session().add(ConnectionLease(server_id=server.id, owner="elsewhere",
                                         expires_at=utcnow() + timedelta(minutes=5)))
        db.session().commit()
    mail_id = outbox.queue(portal)
    outbox.run(mail_id)

    waiting = outbox.mail(mail_id)
    assert waiting.state == MailState.QUEUED and waiting.attempts == 0 and outbox.attempts(mail_id) == []
    assert "1 connection(s)" in waiting.last_error and peer.messages == []
    with outbox.app.app_context():
        for lease in db.session().exec(select(ConnectionLease)):
            lease.expires_at = utcnow() - timedelta(seconds=1)  # the other worker died: its lease expires
        db.session().commit()
    outbox.make_due(mail_id)
    outbox.run(mail_id)
    assert outbox.mail(mail_id).state == MailState.SENT


def test_mail_waiting_for_a_connection_gets_a_job_of_its_own_for_when_it_is_due(outbox, make, portal, smtp_peer):
    """The runs holding the server's connections may end before it is due: it must not wait for the sweep."""
    peer = smtp_peer("plain")
    server = make.server(portal, settings=smtp_settings(peer), max_connections=1)
    with outbox.app.app_context():
        db.session().add(ConnectionLease(server_id=server.id, owner="elsewhere",
                                         expires_at=utcnow() + timedelta(minutes=5)))
        db.session().commit()
    huey = outbox.app.extensions["mailroom.delivery"].huey
    huey.flush()
    mail_id = outbox.queue(portal)
    outbox.run(mail_id)

    waiting = outbox.mail(mail_id)
    assert waiting.state == MailState.QUEUED and peer.messages == []
    [job] = huey.pending()  # Huey queues it with its time; the consumer keeps it aside until then
    assert job.name == "deliver" and job.args == (mail_id,)
    due = waiting.next_attempt_at.replace(tzinfo=None)  # Huey's times are naive UTC
    assert abs((job.eta - due).total_seconds()) < 1


def test_the_job_queue_on_sqlite_commits_without_waiting_for_the_disk(outbox):
    """synchronous=NORMAL with WAL, as the app's database (FULL: an fsync at every job added or taken)."""
    storage = outbox.app.extensions["mailroom.delivery"].huey.storage
    assert storage.conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert storage.conn.execute("pragma synchronous").fetchone()[0] == 1  # NORMAL


def test_a_send_rate_delays_mail_to_a_later_slot_instead_of_failing_it(outbox, make, portal, smtp_peer):
    peer = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(peer), rate_per_minute=2)
    ids = [outbox.queue(portal, subject=f"Message {n}") for n in range(3)]
    outbox.run(ids[0])

    states = [outbox.mail(i).state for i in ids]
    assert states.count(MailState.SENT) == 2 and states.count(MailState.QUEUED) == 1
    later = next(outbox.mail(i) for i in ids if outbox.mail(i).state == MailState.QUEUED)
    assert later.attempts == 0 and "2 message(s) per minute" in later.last_error
    wait_seconds = (later.next_attempt_at.replace(tzinfo=None) - utcnow().replace(tzinfo=None)).total_seconds()
    assert 30 < wait_seconds <= 62  # the slot: when the first of the two leaves the minute
    assert len(peer.messages) == 2


def test_waking_never_fails_the_caller_when_the_queue_is_unreachable(app, outbox, portal, caplog):
    from webapp import delivery

    from .peers.smtp import free_port

    app.config["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    delivery.init_app(app)
    mail_id = outbox.queue(portal)
    with app.app_context():
        delivery.wake([mail_id])  # the row is committed: the sweep sends it all the same
    assert "could not wake the delivery worker" in caplog.text
    assert outbox.mail(mail_id).state == MailState.QUEUED


def test_a_sent_message_is_recorded_even_when_the_database_is_busy_for_a_moment(app, outbox, make, portal, smtp_peer,
                                                                                database_url, monkeypatch):
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock: PostgreSQL waits for a row lock instead of refusing")
    import sqlite3
    import threading
    import time

    from webapp.delivery import outcomes

    app.extensions["mailroom.engine"].dispose()
    app.extensions["mailroom.engine"] = db.make_engine(database_url, busy_timeout=0.2)  # refuse quickly
    monkeypatch.setattr(outcomes, "WRITE_RETRIES", (0.5, 0.5, 5))
    peer = smtp_peer("slow")
    peer.delay = 0.5
    make.server(portal, settings=smtp_settings(peer))
    mail_id = outbox.queue(portal)

    def hold_the_write_lock():
        wait_until(lambda: peer.active == 1, 30, "the send to start")
        other = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=30)
        other.execute("BEGIN IMMEDIATE")  # another writer, for longer than the busy timeout
        time.sleep(1.5)
        other.rollback()
        other.close()

    locker = threading.Thread(target=hold_the_write_lock)
    locker.start()
    outbox.run(mail_id)
    locker.join(timeout=30)
    assert outbox.mail(mail_id).state == MailState.SENT and len(peer.messages) == 1
