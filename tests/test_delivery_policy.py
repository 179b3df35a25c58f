"""Failover and spread, failing and held servers, probes, release of held mail and the admin
notices, with the worker run in this process against real SMTP peers."""
import re
from datetime import timedelta

from webapp import checks, db, mailservers
from webapp.audit import COMMAND_LINE
from webapp.credentials import CredentialValues
from webapp.delivery import health, notices
from webapp.delivery.sweep import sweep
from webapp.models import DeliveryPolicy, MailServer, MailState, NoticeKind, Portal, utcnow

from .delivery_fixtures import outbox, smtp_settings, wait_until  # noqa: F401  (fixtures)

ADMIN = "admin-notices@example.org"


def _portal(make, policy=DeliveryPolicy.FAILOVER, admin_address=ADMIN) -> Portal:
    portal = make.portal()
    with make.app.app_context():
        row = db.session().get(Portal, portal.id)
        row.delivery_policy, row.admin_address = policy, admin_address
        db.session().commit()
        return row


def _probe(outbox, server_id: int):
    with outbox.app.app_context():
        return health.probe(server_id, "test-prober", outbox.settings)


def test_failover_sends_via_the_alternate_marks_the_portal_and_takes_the_primary_back(outbox, make, smtp_peer):
    portal = _portal(make)
    primary_peer, alternate_peer = smtp_peer("plain"), smtp_peer("plain")
    primary_peer.stop()  # the primary refuses connections
    primary = make.server(portal, settings=smtp_settings(primary_peer), description="Primary")
    make.server(portal, settings=smtp_settings(alternate_peer), description="Alternate")

    first = outbox.queue(portal, subject="During the outage")
    outbox.run(first)  # and, over the same connection, the notice it caused
    assert outbox.mail(first).state == MailState.SENT
    [(kind, notice)] = outbox.notices(portal)
    assert kind == NoticeKind.FAILOVER_STARTED and notice.source == "notice" and notice.to_summary == ADMIN
    assert outbox.mail(notice.id).state == MailState.SENT and "Alternate" in notice.subject
    assert alternate_peer.message_ids() == [outbox.mail(first).message_id, notice.message_id]
    assert [(a.server_label, a.outcome) for a in outbox.attempts(first)] == [("Primary", "deferred"),
                                                                               ("Alternate", "sent")]
    failing = outbox.server(primary.id)
    assert failing.failing_since is not None and "connection refused" in failing.failing_reason
    marked = outbox.portal(portal.id)
    assert marked.failover_since is not None and "Primary" in marked.failover_reason
    assert "connection refused" in marked.failover_reason

    second = outbox.queue(portal, subject="Still during the outage")
    outbox.run(second)
    assert [a.server_label for a in outbox.attempts(second)] == ["Alternate"]  # the failing primary is skipped
    assert len(alternate_peer.messages) == 3 and len(outbox.notices(portal)) == 1

    assert _probe(outbox, primary.id) is False  # still down: stays failing
    assert outbox.server(primary.id).failing_since is not None
    primary_peer.restart()
    with outbox.app.app_context():  # the probe is due again
        db.session().get(MailServer, primary.id).last_check_at = utcnow() - timedelta(minutes=1)
        db.session().commit()
    assert _probe(outbox, primary.id) is True
    assert outbox.server(primary.id).failing_since is None
    assert outbox.portal(portal.id).failover_since is None
    assert [kind for kind, _ in outbox.notices(portal)] == [NoticeKind.FAILOVER_STARTED, NoticeKind.FAILOVER_ENDED]

    third = outbox.queue(portal, subject="After the outage")
    outbox.run(third)
    ended = outbox.notices(portal)[1][1]
    assert sorted(primary_peer.message_ids()) == sorted([outbox.mail(third).message_id, ended.message_id])


def test_the_failover_notice_names_the_alternate_as_it_is_called(outbox, make, smtp_peer):
    """The notice's subject quotes the server's name in typographic quotes (non-ASCII, so encoded
    words): the admin's mail client reads "“Alternate relay”", spaces and all."""
    portal = _portal(make)
    primary_peer, alternate_peer = smtp_peer("plain"), smtp_peer("plain")
    primary_peer.stop()
    make.server(portal, settings=smtp_settings(primary_peer), description="Primary relay")
    make.server(portal, settings=smtp_settings(alternate_peer), description="Alternate relay")

    outbox.run(outbox.queue(portal))

    [(_, notice)] = outbox.notices(portal)
    [received] = [m for m in alternate_peer.messages if m.rcpt_tos == [ADMIN]]
    expected = "[Mailroom] Help Desk: mail goes via the alternate server “Alternate relay”"
    assert str(received.message["Subject"]) == notice.subject == expected.replace("Help Desk", portal.name)


def test_a_single_failing_server_makes_mail_wait_for_its_probe_without_trying_it(outbox, make, smtp_peer):
    portal = _portal(make)
    peer = smtp_peer("plain")
    peer.stop()
    server = make.server(portal, settings=smtp_settings(peer))
    first = outbox.queue(portal)
    outbox.run(first)
    assert outbox.mail(first).state == MailState.QUEUED and outbox.mail(first).attempts == 1
    assert outbox.server(server.id).failing_since is not None
    assert outbox.portal(portal.id).failover_since is None  # no alternate took over

    with outbox.app.app_context():
        queue = outbox.app.extensions["mailroom.delivery"]
        queue.huey.flush()
        assert sweep(queue)["probes"] == 1  # the failing server is due for a probe: a job for it
        assert queue.waiting() == 1

    second = outbox.queue(portal)
    outbox.run(second)
    waiting = outbox.mail(second)
    assert waiting.state == MailState.QUEUED and waiting.attempts == 0 and outbox.attempts(second) == []
    assert waiting.last_error.startswith("waiting for “Relay”") and waiting.server_id == server.id
    assert waiting.next_attempt_at.replace(tzinfo=None) > utcnow().replace(tzinfo=None)

    peer.restart()
    assert _probe(outbox, server.id) is True
    assert outbox.mail(second).next_attempt_at.replace(tzinfo=None) <= utcnow().replace(tzinfo=None)  # due now
    outbox.run(second)
    assert outbox.mail(second).state == MailState.SENT


def test_spread_shares_messages_across_the_enabled_servers(outbox, make, smtp_peer):
    portal = _portal(make, DeliveryPolicy.SPREAD)
    peers = [smtp_peer("plain"), smtp_peer("plain")]
    for n, peer in enumerate(peers):
        make.server(portal, settings=smtp_settings(peer), description=f"Server {n}")
    ids = [outbox.queue(portal, subject=f"Message {n}") for n in range(6)]
    outbox.run(ids[0])
    assert all(outbox.mail(i).state == MailState.SENT for i in ids)
    assert [len(p.messages) for p in peers] == [3, 3]
    assert [p.sessions for p in peers] == [1, 1]  # each server's connection was reused
    assert outbox.portal(portal.id).failover_since is None


def test_spread_skips_a_failing_server(outbox, make, smtp_peer):
    portal = _portal(make, DeliveryPolicy.SPREAD)
    down, up = smtp_peer("plain"), smtp_peer("plain")
    down.stop()
    make.server(portal, settings=smtp_settings(down), description="Down")
    make.server(portal, settings=smtp_settings(up), description="Up")
    ids = [outbox.queue(portal, subject=f"Message {n}") for n in range(4)]
    for mail_id in ids:
        outbox.run(mail_id)
    assert all(outbox.mail(i).state == MailState.SENT for i in ids) and len(up.messages) == 4
    assert outbox.portal(portal.id).failover_since is None  # spread has no primary to fail over from


def test_refused_credentials_hold_the_mail_and_saving_new_ones_releases_it(outbox, make, smtp_peer):
    portal = _portal(make)
    peer = smtp_peer("starttls")
    server = make.server(portal, settings={"host": "localhost", "port": peer.port, "security": "starttls"},
                         credential={"kind": "password", "username": peer.username})
    with outbox.app.app_context():  # a wrong password, sealed as the form saves it
        from webapp.credentials import seal

        row = db.session().get(MailServer, server.id)
        row.credential.secret = seal({"password": "wrong password"})
        row.credential.bound_to = mailservers.settings_of("smtp", row.settings).destination()
        db.session().commit()
    mail_id = outbox.queue(portal)
    outbox.run(mail_id)

    held = outbox.mail(mail_id)
    assert held.state == MailState.HELD and held.attempts == 0
    assert "refuses its credentials" in held.last_error and "535" in held.last_error
    assert [a.outcome for a in outbox.attempts(mail_id)] == ["held"]
    assert outbox.server(server.id).held_since is not None
    [(kind, notice)] = outbox.notices(portal)
    assert kind == NoticeKind.HELD and "535" in outbox.text(notice) and "Relay" in notice.subject
    assert "wrong password" not in outbox.text(notice)

    second = outbox.queue(portal)  # more mail meanwhile: held at once, the server is not tried again
    outbox.run(second)
    assert outbox.mail(second).state == MailState.HELD and outbox.attempts(second) == []

    with outbox.app.app_context():
        row = db.session().get(MailServer, server.id)
        portal_row = db.session().get(Portal, portal.id)
        values = mailservers.saved_values(row)
        columns = {name: values[name] for name in mailservers.SERVER_COLUMNS}
        mailservers.save(COMMAND_LINE, portal_row, row, str(row.version), columns, row.settings,
                         CredentialValues(kind="password", username=peer.username,
                                          secret={"password": peer.password}, mechanism="auto"))
    assert outbox.server(server.id).held_since is None
    assert {outbox.mail(i).state for i in (mail_id, second)} == {MailState.QUEUED}
    outbox.run(mail_id)
    assert {outbox.mail(i).state for i in (mail_id, second, notice.id)} == {MailState.SENT}
    assert len(peer.messages) == 3 and outbox.mail(mail_id).attempts == 1  # the notice went out once it could


def test_a_passed_check_of_the_saved_settings_releases_the_held_mail_and_a_failed_one_does_not(outbox, make,
                                                                                                   smtp_peer):
    portal = _portal(make)
    live, stopped = smtp_peer("plain"), smtp_peer("plain")
    stopped.stop()
    server = make.server(portal, settings=smtp_settings(stopped))
    mail_id = outbox.queue(portal, state=MailState.HELD)
    with outbox.app.app_context():
        row = db.session().get(MailServer, server.id)
        row.held_since, row.held_reason = utcnow(), "535 authentication failed"
        db.session().commit()

    def check():
        with outbox.app.test_request_context():
            return checks.check(COMMAND_LINE, db.session().get(Portal, portal.id), db.session().get(MailServer, server.id))

    assert not check().ok
    assert outbox.mail(mail_id).state == MailState.HELD and outbox.server(server.id).held_since is not None
    assert outbox.server(server.id).last_check_ok is False

    with outbox.app.app_context():
        row = db.session().get(MailServer, server.id)
        row.settings = {**row.settings, "port": live.port}
        db.session().commit()
    assert check().ok
    assert outbox.mail(mail_id).state == MailState.QUEUED and outbox.server(server.id).held_since is None
    assert outbox.server(server.id).last_check_ok is True


def test_refused_credentials_with_an_alternate_send_via_the_alternate(outbox, make, smtp_peer):
    portal = _portal(make)
    refusing, alternate = smtp_peer("reject"), smtp_peer("plain")
    make.server(portal, settings={"host": "localhost", "port": refusing.port, "security": "starttls"},
                credential={"kind": "password", "username": refusing.username}, description="Primary")
    make.server(portal, settings=smtp_settings(alternate), description="Alternate")
    with outbox.app.app_context():
        from webapp.credentials import seal

        row = db.session().exec(
            __import__("sqlmodel").select(MailServer).where(MailServer.description == "Primary")).unique().one()
        row.credential.secret = seal({"password": refusing.password})
        row.credential.bound_to = mailservers.settings_of("smtp", row.settings).destination()
        db.session().commit()
    mail_id = outbox.queue(portal)
    outbox.run(mail_id)
    assert outbox.mail(mail_id).state == MailState.SENT
    assert alternate.message_ids()[0] == outbox.mail(mail_id).message_id and len(alternate.messages) == 3  # + notices
    marked = outbox.portal(portal.id)
    assert marked.failover_since is not None and "535" in marked.failover_reason
    assert [kind for kind, _ in outbox.notices(portal)] == [NoticeKind.HELD, NoticeKind.FAILOVER_STARTED]


def test_a_portal_without_an_enabled_server_holds_mail_until_one_is_enabled(outbox, make, smtp_peer):
    portal = _portal(make)
    peer = smtp_peer("plain")
    server = make.server(portal, settings=smtp_settings(peer), enabled=False)
    mail_id = outbox.queue(portal)
    outbox.run(mail_id)
    assert outbox.mail(mail_id).state == MailState.HELD
    assert "no enabled mail server" in outbox.mail(mail_id).last_error
    with outbox.app.app_context():
        mailservers.set_enabled(COMMAND_LINE, db.session().get(Portal, portal.id),
                                db.session().get(MailServer, server.id), True)
    assert outbox.mail(mail_id).state == MailState.QUEUED
    outbox.run(mail_id)
    assert outbox.mail(mail_id).state == MailState.SENT


def test_notices_of_a_kind_go_at_most_once_per_period_and_not_without_an_admin_address(outbox, make):
    portal = _portal(make)
    quiet = make.portal(slug="quiet", name="Quiet")
    with outbox.app.app_context():
        for _ in range(3):
            notices.held(db.session().get(Portal, portal.id), "mail is held", "reason one")
        notices.failover_ended(db.session().get(Portal, portal.id), "Primary")
        notices.held(db.session().get(Portal, quiet.id), "mail is held", "nobody to tell")
    assert [kind for kind, _ in outbox.notices(portal)] == [NoticeKind.HELD, NoticeKind.FAILOVER_ENDED]
    assert outbox.notices(quiet) == [] and outbox.all(quiet) == []


def test_held_mail_past_its_lifetime_fails_with_a_notice(outbox, make, smtp_peer):
    portal = _portal(make)
    mail_id = outbox.queue(portal, state=MailState.HELD, last_error="held: “Relay” refuses its credentials: 535",
                           expires_at=utcnow() - timedelta(seconds=1))
    with outbox.app.app_context():
        result = sweep(outbox.app.extensions["mailroom.delivery"])
    assert result["expired"] == 1
    gone = outbox.mail(mail_id)
    assert gone.state == MailState.FAILED and gone.last_error.startswith("held until the end of its lifetime")
    assert "535" in gone.last_error
    assert [kind for kind, _ in outbox.notices(portal)] == [NoticeKind.HELD_EXPIRED]


def test_the_daily_summary_lists_the_failures_once(outbox, make, smtp_peer):
    portal = _portal(make)
    make.server(portal, settings=smtp_settings(smtp_peer("refuse_message")))
    ids = [outbox.queue(portal, subject=f"Invoice {n}") for n in range(2)]
    outbox.run(ids[0])
    assert {outbox.mail(i).state for i in ids} == {MailState.FAILED}
    with outbox.app.app_context():
        assert notices.daily_summary(outbox.settings) == 1
        assert notices.daily_summary(outbox.settings) == 0
    [(kind, summary)] = outbox.notices(portal)
    text = outbox.text(summary)
    assert kind == NoticeKind.SUMMARY and "2 message(s)" in summary.subject
    assert "Invoice 0" in text and "Invoice 1" in text and "554 5.7.1 Message rejected as spam" in text


def test_the_sweep_gives_due_mail_without_a_job_one(outbox, portal):
    queue = outbox.app.extensions["mailroom.delivery"]
    queue.huey.flush()
    ids = [outbox.queue(portal) for _ in range(3)]
    with outbox.app.app_context():
        first = sweep(queue)
        again = sweep(queue)
    assert first["due"] == 3 and first["jobs"] == 3 and queue.waiting() == 3
    assert again["jobs"] == 0  # the jobs are still waiting: none added
    assert ids


def test_the_server_list_says_which_server_is_failing_and_which_holds_its_mail(outbox, make, portal, admin,
                                                                                smtp_peer):
    """What the worker found out shows in the list, beside a last check that may be older: a server
    that refuses its credentials says its mail is held, one that does not answer that it is failing."""
    down, refusing = smtp_peer("plain"), smtp_peer("starttls")
    down.stop()
    make.server(portal, settings=smtp_settings(down), description="Office relay")
    backup = make.server(portal, settings={"host": "localhost", "port": refusing.port, "security": "starttls"},
                         credential={"kind": "password", "username": refusing.username}, description="Backup relay")
    with outbox.app.app_context():  # a wrong password, sealed as the form saves it
        from webapp.credentials import seal

        row = db.session().get(MailServer, backup.id)
        row.credential.secret = seal({"password": "wrong password"})
        row.credential.bound_to = mailservers.settings_of("smtp", row.settings).destination()
        row.last_check_at, row.last_check_ok, row.last_check_summary = utcnow(), True, "All checks passed"
        db.session().commit()
    page = admin.get("/p/help/servers/").text
    assert "Mail held" not in page and "Failing" not in page

    mail_id = outbox.queue(portal)
    outbox.run(mail_id)

    assert [a.outcome for a in outbox.attempts(mail_id)] == ["deferred", "held"]  # waits for the office relay
    rows = dict(re.findall(r"<strong>(Office relay|Backup relay)</strong>(.*?)</tr>", admin.get("/p/help/servers/").text,
                           re.S))
    assert "Failing" in rows["Office relay"] and "Mail held" not in rows["Office relay"]
    assert "Mail held" in rows["Backup relay"] and "refuses its credentials" in rows["Backup relay"]
    assert "Failing" not in rows["Backup relay"]
