"""Outbox rows for the queue tests, written directly (the API that accepts mail is not what these
tests are about): one message as the outbox stores it, or thousands at once."""
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert
from sqlmodel import select

from webapp import db
from webapp.mail.config import Sender
from webapp.mail.envelope import Envelope
from webapp.mail.message import build_message
from webapp.models import DeliveryAttempt, MailState, OutboundMail

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def utc(value: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back (in UTC): comparable with aware ones after this."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Outbox:
    def __init__(self, app, portal):
        self.app, self.portal = app, portal

    def mail(self, state: str = MailState.QUEUED, to=("bob@example.com",), subject="Ticket #1 updated",
             cc=(), bcc=(), **values) -> OutboundMail:
        envelope = Envelope.of(build_message(Sender("helpdesk@example.com", "Help Desk"), to, subject,
                                             "The ticket was updated.", cc=cc, bcc=bcc))
        recipients = [{"address": a, "state": "pending", "code": None, "reply": ""} for a in envelope.recipients]
        values = {"submitted_by": "key “Help desk app”", "client_address": "192.0.2.7", "raw": envelope.raw,
                  **values}
        row = OutboundMail(portal_id=self.portal.id, state=state, message_id=envelope.message_id,
                           mail_from=envelope.mail_from, recipients=recipients, subject=subject,
                           to_summary=", ".join(to), size=len(envelope.raw), **values)
        with self.app.app_context():
            db.session().add(row)
            db.session().commit()
            return row

    def many(self, count: int, state: str = MailState.SENT, start: datetime = T0, step=timedelta(minutes=1),
             **values) -> list[int]:
        """`count` small messages, one a `step` apart from `start` (ids in the same order); their ids."""
        rows = [{**dict(portal_id=self.portal.id, state=state, source="api", submitted_by="bulk", client_address="",
                        request_hash="", message_id=f"<{i}@bulk.example>", mail_from="helpdesk@example.com",
                        recipients=[{"address": f"user{i}@example.com", "state": "pending", "code": None,
                                     "reply": ""}],
                        subject=f"Message {i}", to_summary=f"user{i}@example.com", size=100,
                        raw=b"Subject: x\r\n\r\nx", attempts=0, created_at=start + i * step,
                        updated_at=start + i * step, next_attempt_at=start + i * step, lease_owner="", last_error=""),
                 **values} for i in range(count)]
        with self.app.app_context():
            session = db.session()
            for first in range(0, count, 2000):
                session.execute(insert(OutboundMail), rows[first:first + 2000])
            session.commit()
            return list(session.exec(select(OutboundMail.id).where(OutboundMail.portal_id == self.portal.id)
                                     .order_by(OutboundMail.id.desc()).limit(count)))[::-1]

    def attempt(self, mail_id: int, outcome: str, at: datetime, server=None, code=None, reply="") -> None:
        with self.app.app_context():
            db.session().add(DeliveryAttempt(mail_id=mail_id, at=at, outcome=outcome, code=code, reply=reply,
                                             server_id=server.id if server else None,
                                             server_label=server.label if server else ""))
            db.session().commit()

    def get(self, mail_id: int) -> OutboundMail | None:
        with self.app.app_context():
            return db.session().get(OutboundMail, mail_id)


@pytest.fixture
def outbox(app, portal) -> Outbox:
    return Outbox(app, portal)
