"""Retention: message bodies are deleted DELIVERY_PURGE_BODY_DAYS after the message was sent
or failed (the row stays, with its recipients, subject and attempts), and the rows with their
attempts DELIVERY_KEEP_DAYS after. In small transactions, so that workers are not held up."""
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update

from .. import db
from ..models import DeliveryNotice, MailState, OutboundMail, utcnow
from .settings import DeliverySettings

CHUNK = 500
DONE = (MailState.SENT, MailState.FAILED)


@dataclass
class Purged:
    bodies: int = 0
    messages: int = 0


def purge(settings: DeliverySettings, now: datetime | None = None) -> Purged:
    now = now or utcnow()
    session = db.session()
    purged = Purged()
    body_limit, row_limit = now - settings.purge_body, now - settings.keep
    while ids := _chunk(OutboundMail.state.in_(DONE), OutboundMail.raw.is_not(None),
                        OutboundMail.updated_at < body_limit):
        purged.bodies += session.execute(update(OutboundMail).where(
            OutboundMail.id.in_(ids), OutboundMail.state.in_(DONE))
            .values(raw=None, purged_at=now).execution_options(synchronize_session=False)).rowcount
        session.commit()
    while ids := _chunk(OutboundMail.state.in_(DONE), OutboundMail.updated_at < row_limit):
        purged.messages += session.execute(delete(OutboundMail).where(
            OutboundMail.id.in_(ids), OutboundMail.state.in_(DONE))
            .execution_options(synchronize_session=False)).rowcount
        session.commit()
    session.execute(delete(DeliveryNotice).where(DeliveryNotice.at < row_limit))
    session.commit()
    return purged


def _chunk(*conditions) -> list[int]:
    ids = list(db.session().execute(select(OutboundMail.id).where(*conditions).limit(CHUNK)).scalars())
    db.session().commit()
    return ids
