"""Batch claims (claims.claim_batch): several due messages of one portal in one statement, never
one message to two claimers, across processes, on SQLite and PostgreSQL; a run gives back at once
what it claimed and did not try; the messages waiting in a batch keep their claim; a run's outcomes
go through one connection of its own."""
import json
import subprocess
import sys
from collections import Counter
from datetime import timedelta

from sqlalchemy import event

from webapp import db
from webapp.delivery import claims
from webapp.delivery.times import aware
from webapp.delivery.worker import Run
from webapp.models import MailState, OutboundMail, utcnow

from .delivery_fixtures import ROOT, outbox, smtp_settings, workers  # noqa: F401  (fixtures)

CLAIMER = """
import json, sys
sys.path.insert(0, {root!r})
from webapp import create_app
from webapp.delivery import claims
app = create_app()
taken = []
with app.app_context():
    print("ready", flush=True)
    sys.stdin.readline()  # the go: both claim at the same time
    while True:
        batch = claims.claim_batch(sys.argv[1], 60, 5)
        if not batch:
            break
        taken += [mail.id for mail in batch]
print(json.dumps(taken), flush=True)
"""


def test_two_processes_claiming_in_batches_never_take_a_message_twice(outbox, workers, portal):
    ids = [outbox.queue(portal, subject=f"Message {n}") for n in range(600)]
    claimers = [subprocess.Popen([sys.executable, "-c", CLAIMER.format(root=str(ROOT)), f"claimer-{n}"], cwd=ROOT,
                                 env=workers.environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for n in range(2)]
    try:
        for claimer in claimers:
            assert claimer.stdout.readline().strip() == "ready"
        for claimer in claimers:
            claimer.stdin.write("go\n")
            claimer.stdin.flush()
        taken = [json.loads(claimer.communicate(timeout=120)[0]) for claimer in claimers]
    finally:
        for claimer in claimers:
            if claimer.poll() is None:
                claimer.kill()
    assert all(taken), "both processes claimed messages"
    assert Counter(taken[0] + taken[1]) == Counter(ids)  # every message claimed, and only once
    owners = {mail.id: mail.lease_owner for mail in outbox.all(portal)}
    assert {owners[i] for i in taken[0]} == {"claimer-0"} and {owners[i] for i in taken[1]} == {"claimer-1"}


def test_a_batch_is_of_one_portal_its_message_first_then_in_order_and_never_more_than_asked(outbox, make, portal):
    other = make.portal(slug="other", name="Other")
    mine = [outbox.queue(portal, subject=f"Mine {n}") for n in range(4)]
    theirs = outbox.queue(other, subject="Theirs")
    with outbox.app.app_context():
        assert [mail.id for mail in claims.claim_batch("w", 60, 3, mail_id=mine[2])] == [mine[2], mine[0], mine[1]]
        assert outbox.mail(mine[3]).state == outbox.mail(theirs).state == MailState.QUEUED
        assert [mail.id for mail in claims.claim_batch("w", 60, 10)] == [mine[3]]  # the oldest says which portal
        assert [mail.id for mail in claims.claim_batch("w", 60, 10)] == [theirs]
        assert claims.claim_batch("w", 60, 10) == []


class StopAfter:
    """A `stopping` event that is set once `messages` messages were delivered (Run asks after each)."""

    def __init__(self, messages: int):
        self.left = messages

    def is_set(self) -> bool:
        self.left -= 1
        return self.left <= 0


def test_a_run_that_stops_gives_back_at_once_what_it_claimed_and_did_not_try(outbox, make, portal, smtp_peer):
    peer = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(peer))
    ids = [outbox.queue(portal, subject=f"Message {n}") for n in range(10)]
    with outbox.app.app_context():
        assert Run(outbox.settings, "stopping-worker", stopping=StopAfter(4)).run(ids[0]) is False
    states = Counter(outbox.mail(i).state for i in ids)
    assert states == Counter({MailState.SENT: 4, MailState.QUEUED: 6}) and len(peer.messages) == 4
    # batches of 1 and 4: three messages of the second were sent, one was given back untried
    for mail in (outbox.mail(i) for i in ids if outbox.mail(i).state == MailState.QUEUED):
        assert (mail.lease_owner, mail.lease_until, mail.attempts) == ("", None, 0)
        assert aware(mail.next_attempt_at) <= utcnow()  # due as before
    assert outbox.run() is False  # the next job takes them at once, not after a lease
    assert all(outbox.mail(i).state == MailState.SENT for i in ids) and len(peer.messages) == 10


def test_the_messages_waiting_in_a_batch_keep_their_claim_unless_it_was_lost(outbox, portal):
    ids = [outbox.queue(portal, subject=f"Message {n}") for n in range(3)]
    with outbox.app.app_context():
        batch = claims.claim_batch("w", 60, 3)
        session = db.session()
        session.get(OutboundMail, ids[1]).state = MailState.QUEUED  # the sweep took it back meanwhile
        session.commit()
        later = utcnow() + timedelta(minutes=10)
        kept = claims.extend_all(batch, "w", later)
        assert [mail.id for mail in kept] == [ids[0], ids[2]]
    for mail_id in (ids[0], ids[2]):
        assert abs((aware(outbox.mail(mail_id).lease_until) - later).total_seconds()) < 1


def test_a_run_writes_its_outcomes_on_one_connection_and_gives_it_back(outbox, make, portal, smtp_peer):
    peer = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(peer))
    ids = [outbox.queue(portal, subject=f"Message {n}") for n in range(5)]
    attempts_written_on = []

    def seen(connection, _cursor, statement, *_):
        if statement.lstrip().upper().startswith("INSERT INTO DELIVERY_ATTEMPT"):
            attempts_written_on.append(connection)

    with outbox.app.app_context():
        engine = db.engine()
        event.listen(engine, "before_cursor_execute", seen)
        try:
            assert Run(outbox.settings, "one-writer").run(ids[0]) is False
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        db.session().close()
        assert engine.pool.checkedout() == 0  # the run's outcome connection went back to the pool
    assert all(outbox.mail(i).state == MailState.SENT for i in ids) and len(peer.messages) == 5
    assert len(attempts_written_on) == 5 and len(set(map(id, attempts_written_on))) == 1  # all on one connection
