"""The outbox: messages a portal has accepted, stored and committed before anyone is told so."""
from datetime import timedelta

from flask import current_app

from . import db
from .mail.envelope import Envelope
from .models import MailState, OutboundMail, Portal, utcnow


def store(portal: Portal, envelope: Envelope, *, source: str, submitted_by: str,
          client_address: str = "") -> OutboundMail:
    """Store a message that is complete already (raw MIME with its Bcc field, its envelope) as queued
    and commit; the caller says "accepted" only after this returns. Nothing is sent here."""
    now = utcnow()
    message = envelope.message()
    mail = OutboundMail(
        portal_id=portal.id, state=MailState.QUEUED, source=source, submitted_by=submitted_by[:320],
        client_address=client_address[:64], message_id=envelope.message_id[:500], mail_from=envelope.mail_from,
        recipients=[{"address": address, "state": "pending", "code": None, "reply": ""}
                    for address in envelope.recipients],
        subject=_shortened(str(message["Subject"] or ""), 300), to_summary=_shortened(", ".join(envelope.recipients),
                                                                                       500),
        size=len(envelope.raw), raw=envelope.raw, created_at=now, updated_at=now, next_attempt_at=now,
        expires_at=now + timedelta(hours=current_app.config["DELIVERY_LIFETIME_HOURS"]))
    db.session().add(mail)
    db.session().commit()
    return mail


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"
