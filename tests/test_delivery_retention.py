"""Retention: bodies of sent and failed mail are deleted after DELIVERY_PURGE_BODY_DAYS, the
messages with their attempts after DELIVERY_KEEP_DAYS; mail still to be sent is never touched.
`flask mail purge` does it on demand."""
from datetime import timedelta

from sqlmodel import select

from webapp import db
from webapp.models import DeliveryAttempt, MailState, OutboundMail, utcnow

from .delivery_fixtures import outbox  # noqa: F401  (fixture)


def _aged(outbox, portal, state, days, subject):
    then = utcnow() - timedelta(days=days)
    mail_id = outbox.queue(portal, subject=subject, state=state, created_at=then, updated_at=then,
                           sent_at=then if state == MailState.SENT else None)
    with outbox.app.app_context():
        db.session().add(DeliveryAttempt(mail_id=mail_id, at=then, outcome="sent", reply="250 ok"))
        db.session().commit()
    return mail_id


def test_bodies_then_messages_are_deleted_and_mail_to_be_sent_is_kept(app, outbox, portal):
    recent = _aged(outbox, portal, MailState.SENT, 1, "recent")
    week_old = _aged(outbox, portal, MailState.SENT, 8, "a week old")
    failed = _aged(outbox, portal, MailState.FAILED, 8, "failed a week ago")
    ancient = _aged(outbox, portal, MailState.FAILED, 91, "three months old")
    held = _aged(outbox, portal, MailState.HELD, 91, "held")  # it fails at the end of its lifetime, not here
    queued = _aged(outbox, portal, MailState.QUEUED, 91, "queued")

    result = app.test_cli_runner().invoke(args=["mail", "purge"])
    assert result.exit_code == 0, result.output
    assert "Deleted 3 message bodies and 1 old message." in result.output

    assert outbox.mail(recent).raw is not None and outbox.mail(recent).purged_at is None
    for mail_id in (week_old, failed):
        mail = outbox.mail(mail_id)
        assert mail.raw is None and mail.purged_at is not None and mail.subject and mail.recipients
        assert len(outbox.attempts(mail_id)) == 1  # the row and its attempts stay
    assert outbox.mail(ancient) is None
    with app.app_context():
        assert db.session().exec(select(DeliveryAttempt).where(DeliveryAttempt.mail_id == ancient)).all() == []
        kept = {m.id for m in db.session().exec(select(OutboundMail))}
    assert {held, queued} <= kept and outbox.mail(held).raw is not None and outbox.mail(queued).raw is not None

    again = app.test_cli_runner().invoke(args=["mail", "purge"])
    assert "Deleted 0 message bodies and 0 old messages." in again.output
