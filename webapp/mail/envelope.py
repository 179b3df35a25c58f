"""What a transport sends: a message in its stored form, the raw MIME bytes and the envelope.

The outbox keeps exactly this, so every attempt (a retry, another server after a failover)
sends the same bytes with the same Message-ID. `raw` keeps the Bcc header: the HTTP APIs
(Graph's MIME send, Gmail, EWS) read the blind recipients from it and drop it themselves;
SMTP transmits `without_bcc()` and names every recipient in RCPT TO.
"""
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import getaddresses, make_msgid

from .config import Sender
from .message import (RECIPIENT_HEADERS, Mailbox, compose, compose_simple, envelope_address, sample_message,
                      sample_text)


@dataclass(frozen=True)
class Envelope:
    mail_from: str  # the envelope sender, a bare address with an ASCII domain
    recipients: tuple[str, ...]  # every envelope recipient, bare, without duplicates, in order
    raw: bytes  # the whole message, CRLF line ends, Bcc included
    message_id: str

    @classmethod
    def of(cls, message: EmailMessage, mail_from: str = "", recipients: tuple[str, ...] = ()) -> "Envelope":
        """The envelope of a built message: the sender from `mail_from` or From, the recipients
        from `recipients` or To/Cc/Bcc. A message without a Message-ID gets one here, once."""
        if message["Message-ID"] is None:
            sender_domain = envelope_address(mail_from or _first(message, "From")).rpartition("@")[2]
            message["Message-ID"] = make_msgid(domain=sender_domain or "mailroom.invalid")
        recipients = recipients or tuple(dict.fromkeys(
            envelope_address(address) for _, address in getaddresses(
                [str(value) for header in RECIPIENT_HEADERS for value in message.get_all(header, [])]) if address))
        raw = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        return cls(mail_from=envelope_address(mail_from or _first(message, "From")), recipients=recipients,
                   raw=raw, message_id=str(message["Message-ID"]))

    @classmethod
    def composed(cls, *args, **options) -> "Envelope":
        """The envelope of compose(*args, **options)'s message (ValueError as compose()): a simple
        one written directly (compose_simple, the same bytes), any other built by compose()."""
        simple = compose_simple(*args, **options)
        if simple is None:
            return cls.of(compose(*args, **options))
        raw, mail_from, recipients, message_id = simple
        return cls(mail_from=mail_from, recipients=recipients, raw=raw, message_id=message_id)

    @property
    def needs_utf8(self) -> bool:
        """SMTPUTF8 is needed when an address or a header is not ASCII."""
        head = self.raw.split(b"\r\n\r\n", 1)[0]
        return not (self.mail_from.isascii() and all(r.isascii() for r in self.recipients) and head.isascii())

    def message(self) -> EmailMessage:
        """The message parsed again, for a transport that needs its parts (never sent as such)."""
        return message_from_bytes(self.raw, policy=email_policy.default)

    def without_bcc(self) -> bytes:
        """The bytes SMTP transmits: the same message without its Bcc header (and its folded lines)."""
        head, separator, body = self.raw.partition(b"\r\n\r\n")
        if b"bcc:" not in head.lower():
            return self.raw  # nearly every message: nothing to drop
        kept, skipping = [], False
        for line in head.split(b"\r\n"):
            if line[:1] in (b" ", b"\t"):
                if not skipping:
                    kept.append(line)
                continue
            skipping = line.lower().startswith(b"bcc:")
            if not skipping:
                kept.append(line)
        return b"\r\n".join(kept) + separator + body


def _first(message: EmailMessage, header: str) -> str:
    addresses = getaddresses([str(value) for value in message.get_all(header, [])])
    return addresses[0][1] if addresses else ""


def sample_envelope(sender: Sender, to: str, portal_name: str, server_label: str, now: datetime) -> Envelope:
    """The envelope of sample_message(...): its bytes written directly when the message is simple
    enough (compose_simple: the bytes the email package writes), else built by the email package."""
    subject, text = sample_text(portal_name, server_label, now)
    try:
        simple = compose_simple(Mailbox(sender.address, sender.name), [Mailbox(to)], subject, text=text,
                                reply_to=Mailbox(sender.reply_to) if sender.reply_to else None, now=now)
    except ValueError:  # sample_message says why, in its own words
        simple = None
    if simple is None:
        return Envelope.of(sample_message(sender, to, portal_name, server_label, now))
    raw, mail_from, recipients, message_id = simple
    return Envelope(mail_from=mail_from, recipients=recipients, raw=raw, message_id=message_id)
