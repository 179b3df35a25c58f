"""Delivery through OAuth servers, against the real authorization server on loopback: a revoked
grant holds the mail (attempts not counted, the admins told) and the mailbox owner's new
consent sends it; Microsoft Graph's 429 with Retry-After and the Gmail API's rate-limit 403s are
waited out, never sooner than the service says."""
from datetime import timedelta

import pytest

from webapp import db
from webapp.mail.config import Sender
from webapp.models import MailState, NoticeKind, Portal, utcnow

from .delivery_fixtures import outbox, wait_until  # noqa: F401  (fixtures)
from .peers.graph import graph_peer  # noqa: F401  (fixture)
from .test_gmail import gmail, gmail_form, key  # noqa: F401  (fixtures)
from .test_graph import graph_form
from .test_oauth import (CLIENT_ID, CLIENT_SECRET, MAILBOX, OWNER_PASSWORD, REDIRECT_URI, an_hour_passes,
                         authorize, oauth_form, save)

ADMIN = "postmaster@example.org"


def outbox_sender() -> Sender:
    return Sender(MAILBOX, "Help Desk")  # the mailbox the grant may send as


def _admin_address(app, portal):
    with app.app_context():
        db.session().get(Portal, portal.id).admin_address = ADMIN
        db.session().commit()


def test_a_revoked_grant_holds_the_mail_and_a_new_consent_sends_it(app, outbox, admin, portal, oauth_server,
                                                                  xoauth2_peer, test_ca_file):
    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
    relay = xoauth2_peer(oauth_server)
    _admin_address(app, portal)
    server = save(app, admin, oauth_form(oauth_server, relay))
    authorize(admin, server, test_ca_file)
    oauth_server.revoke_grant(MAILBOX)  # the owner withdrew the consent (or changed the password)
    an_hour_passes(app, oauth_server, server.id)

    mail_id = outbox.queue(portal, sender=outbox_sender())
    outbox.run(mail_id)
    held = outbox.mail(mail_id)
    assert held.state == MailState.HELD and held.attempts == 0, held.last_error
    assert "AADSTS50173" in held.last_error and relay.messages == []
    assert outbox.server(server.id).held_since is not None
    kinds = [kind for kind, _ in outbox.notices(portal)]
    assert NoticeKind.REAUTHORIZATION in kinds and NoticeKind.HELD in kinds

    assert authorize(admin, server, test_ca_file).status_code == 200  # the owner consents again
    assert outbox.mail(mail_id).state == MailState.QUEUED and outbox.server(server.id).held_since is None
    outbox.run(mail_id)
    sent = outbox.mail(mail_id)
    assert sent.state == MailState.SENT and sent.attempts == 1
    assert [m.message["Message-ID"] for m in relay.messages][0] == sent.message_id
    assert relay.messages[0].user == MAILBOX


def test_graph_throttling_is_waited_out_never_sooner_than_retry_after(app, outbox, admin, portal, oauth_server,
                                                                     graph_peer, test_ca_file):
    oauth_server.add_user(MAILBOX, OWNER_PASSWORD)
    oauth_server.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI], app_roles={"Mail.Send"})
    graph = graph_peer(oauth_server, users={MAILBOX: {"id": "5f0c8a2e-7b1d-4c3e-9a6f-2d8e1b4c7a90",
                                                      "displayName": "Sender"}})
    server = save(app, admin, graph_form(oauth_server, graph, headers=""))
    authorize(admin, server, test_ca_file)
    graph.throttle(1, retry_after=3)  # far longer than the tests' first backoff (0.3 s)

    mail_id = outbox.queue(portal, sender=outbox_sender())
    outbox.run(mail_id)
    deferred = outbox.mail(mail_id)
    assert deferred.state == MailState.QUEUED and deferred.last_code == 429 and deferred.attempts == 1
    assert "429" in deferred.last_error and graph.sent == []
    wait = deferred.next_attempt_at - deferred.last_attempt_at
    assert wait >= timedelta(seconds=3)  # Retry-After, not the backoff
    assert outbox.server(server.id).failing_since is None  # throttled is not broken
    outbox.run()
    assert outbox.mail(mail_id).state == MailState.QUEUED  # not before its time

    wait_until(lambda: outbox.mail(mail_id).next_attempt_at.replace(tzinfo=None) <= utcnow().replace(tzinfo=None),
               30, "the Retry-After to pass")
    outbox.run(mail_id)
    assert outbox.mail(mail_id).state == MailState.SENT
    [sent] = graph.sent
    assert sent.mime["Message-ID"] == deferred.message_id


def _due(outbox, mail_id: int) -> bool:
    return outbox.mail(mail_id).next_attempt_at.replace(tzinfo=None) <= utcnow().replace(tzinfo=None)


@pytest.mark.parametrize("reason", ["userRateLimitExceeded", "429"])
def test_gmail_rate_limits_are_waited_out_never_sooner_than_googles_retry_time(app, outbox, admin, portal, gmail,  # noqa: F811
                                                                               key, reason):  # noqa: F811
    """Google answers a user over its rate with 403 userRateLimitExceeded (or 429 RESOURCE_EXHAUSTED) and
    writes the time to retry in the message, not in a Retry-After header (Gmail API, "Resolve errors")."""
    server = save(app, admin, gmail_form(gmail, key))
    gmail.throttle(1, retry_after=3, reason=reason)  # far longer than the tests' first backoff (0.3 s)

    mail_id = outbox.queue(portal, sender=outbox_sender())
    outbox.run(mail_id)
    deferred = outbox.mail(mail_id)
    assert deferred.state == MailState.QUEUED and deferred.attempts == 1, deferred.last_error
    assert deferred.last_code == (429 if reason == "429" else 403) and gmail.sent == []
    assert "Google is limiting how fast" in deferred.last_error
    assert deferred.next_attempt_at - deferred.last_attempt_at >= timedelta(seconds=2)  # Google's time, not 0.3 s
    assert outbox.server(server.id).failing_since is None and outbox.server(server.id).held_since is None
    outbox.run()
    assert outbox.mail(mail_id).state == MailState.QUEUED and gmail.sent == []  # not before its time

    wait_until(lambda: _due(outbox, mail_id), 30, "Google's retry time to pass")
    outbox.run(mail_id)
    sent = outbox.mail(mail_id)
    assert sent.state == MailState.SENT and sent.attempts == 2
    [delivered] = gmail.sent
    assert delivered.mime["Message-ID"] == deferred.message_id


def test_a_gmail_rate_limit_without_a_time_is_retried_after_the_backoff(app, outbox, admin, portal, gmail,  # noqa: F811
                                                                        key):  # noqa: F811
    """403 rateLimitExceeded (the project's per-minute quota) says no time: the backoff decides."""
    save(app, admin, gmail_form(gmail, key))
    gmail.throttle(1, reason="rateLimitExceeded")
    outbox.slow_backoff()

    mail_id = outbox.queue(portal, sender=outbox_sender())
    outbox.run(mail_id)
    deferred = outbox.mail(mail_id)
    assert deferred.state == MailState.QUEUED and deferred.last_code == 403 and deferred.attempts == 1
    assert "403 rateLimitExceeded" in deferred.last_error and gmail.sent == []

    wait_until(lambda: _due(outbox, mail_id), 30, "the backoff to pass")
    outbox.run(mail_id)
    assert outbox.mail(mail_id).state == MailState.SENT and len(gmail.sent) == 1
