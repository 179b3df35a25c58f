"""Connections kept between a worker thread's delivery jobs (delivery/kept.py): the next job to the
same server sends over the open connection; an idle one is closed and its lease given back once its
time is up; one to a server whose settings changed is replaced; the cap counts kept connections;
every kept connection is closed when the worker stops. Against real aiosmtpd peers that count
their sessions (EHLOs) and open connections."""
import threading

import pytest
from sqlmodel import select

from webapp import db
from webapp.delivery.kept import KeptConnections
from webapp.delivery.worker import Run
from webapp.models import ConnectionLease, MailServer, MailState

from .delivery_fixtures import outbox, smtp_settings, wait_until  # noqa: F401  (fixtures)

LONG = 600.0  # an idle time no test waits out


@pytest.fixture
def kept(outbox):
    def make(seconds: float = LONG) -> KeptConnections:
        connections = KeptConnections(outbox.app, seconds)
        made.append(connections)
        return connections

    made = []
    yield make
    for connections in made:
        connections.close_all()


def _job(outbox, kept: KeptConnections, mail_id: int, stopping=None) -> None:
    with outbox.app.app_context():
        Run(outbox.settings, "kept-worker", stopping=stopping, kept=kept).run(mail_id)


def _leases(outbox) -> list[ConnectionLease]:
    with outbox.app.app_context():
        return list(db.session().exec(select(ConnectionLease)))


def test_two_jobs_back_to_back_send_over_one_connection(outbox, make, portal, smtp_peer, kept):
    peer = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(peer))
    connections = kept()
    first = outbox.queue(portal, subject="First")
    _job(outbox, connections, first)
    second = outbox.queue(portal, subject="Second")
    _job(outbox, connections, second)
    assert {outbox.mail(i).state for i in (first, second)} == {MailState.SENT}
    assert peer.sessions == 1 and peer.active == 1  # one EHLO for both jobs, and still open
    assert len(_leases(outbox)) == 1  # its lease is held while it is kept
    connections.close_all()
    wait_until(lambda: peer.active == 0, what="the kept connection to be closed")
    assert _leases(outbox) == []


def test_a_connection_idle_past_its_time_is_closed_and_its_lease_given_back(outbox, make, portal, smtp_peer, kept):
    peer = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(peer))
    connections = kept(0.2)
    _job(outbox, connections, outbox.queue(portal, subject="First"))
    wait_until(lambda: peer.active == 0 and not _leases(outbox), what="the idle connection to be closed")
    later = outbox.queue(portal, subject="Later")
    _job(outbox, connections, later)
    assert outbox.mail(later).state == MailState.SENT and peer.sessions == 2


def test_a_kept_connection_to_a_server_whose_settings_changed_is_replaced(outbox, make, portal, smtp_peer, kept):
    peer = smtp_peer("plain")
    server = make.server(portal, settings=smtp_settings(peer))
    connections = kept()
    _job(outbox, connections, outbox.queue(portal, subject="Before"))
    with outbox.app.app_context():
        db.session().get(MailServer, server.id).version += 1  # an admin saved it
        db.session().commit()
    after = outbox.queue(portal, subject="After")
    _job(outbox, connections, after)
    assert outbox.mail(after).state == MailState.SENT and peer.sessions == 2
    wait_until(lambda: peer.active == 1, what="the old connection to be closed")
    assert len(_leases(outbox)) == 1


def test_a_kept_connection_counts_against_the_cap_of_every_worker(outbox, make, portal, smtp_peer, kept):
    peer = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(peer), max_connections=1)
    connections = kept()
    _job(outbox, connections, outbox.queue(portal, subject="Keeps the connection"))
    waiting = outbox.queue(portal, subject="Another worker's")
    other = threading.Thread(target=_job, args=(outbox, kept(), waiting))  # another thread, its own connections
    other.start()
    other.join(60)
    assert outbox.mail(waiting).state == MailState.QUEUED and "connection(s)" in outbox.mail(waiting).last_error
    assert peer.max_active == 1
    connections.close_all()
    outbox.make_due(waiting)
    _job(outbox, kept(), waiting)
    assert outbox.mail(waiting).state == MailState.SENT and peer.max_active == 1


def test_a_worker_that_stops_keeps_no_connection(outbox, make, portal, smtp_peer, kept):
    peer = smtp_peer("plain")
    make.server(portal, settings=smtp_settings(peer))
    stopping = threading.Event()
    stopping.set()
    mail_id = outbox.queue(portal)
    _job(outbox, kept(), mail_id, stopping=stopping)
    assert outbox.mail(mail_id).state == MailState.SENT
    wait_until(lambda: peer.active == 0, what="the connection to be closed")
    assert _leases(outbox) == []
