"""What a submitted message becomes in the outbox: checked, and completed as a submission server does.

The message's own bytes are kept: fields are only removed or put in front, never re-encoded, so
what the device wrote reaches the HTTP APIs (which send the stored MIME) as it was written.

Every field of the header section is read (a bare CR ends a line, as it does for the email package);
the fields the checks need (From, To, Cc, Message-ID, Subject) are read as the email package's
default policy reads them, and the body is parsed (the same way) only when it may have parts.

Refused (554 5.6.0), since no transport could send it faithfully:
- a header section that is not RFC 5322 (a line that is neither a field nor a continuation: text
  with no header, an mbox "From " line), or bytes in it that are not UTF-8 (RFC 6532);
- a field RFC 5322 allows once given more than once (From, To, Subject, Date, Message-ID, ...);
- a From field that does not hold exactly one address;
- a multipart body whose parts cannot be found (no boundary, or no part starts).

Refused (550 5.7.1): a From the credential may not use (the envelope sender is checked at MAIL FROM),
or one the portal does not allow (its servers' From addresses and its sender IDs: `allowed`).

Completed (RFC 6409 8): a missing Date and Message-ID are added; a missing From is the envelope
sender (which the credential may use). With "rewrite From", From becomes the portal's From, or the
sender ID of the credential's owner (the caller decides: `portal_sender`; the display name the
device wrote is kept) and a Sender field is dropped. Every envelope recipient
that is not in To or Cc is written into a Bcc field (any Bcc field the device sent is replaced):
the HTTP API transports read the recipients from the message, SMTP drops the field and uses the
envelope. A Received field records the submission (RFC 5321 4.4).
"""
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes
from email import policy as email_policy
from email.headerregistry import Address, BaseHeader
from email.utils import format_datetime, getaddresses, make_msgid
from functools import lru_cache

from ..mail.config import Sender
from ..mail.envelope import Envelope
from ..models import FromPolicy
from .credentials import Account

_FIELD = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")  # RFC 5322 2.2: printable ASCII but ":" then ":"
_LINE_END = re.compile(rb"\r?\n")
_HEADER_LINE_END = re.compile(rb"\r\n|\r")  # what is left of a bare CR after _LINE_END
_BROKEN_MULTIPART = ("NoBoundaryInMultipartDefect", "StartBoundaryNotFoundDefect",
                     "MultipartInvariantViolationDefect")
# How often RFC 5322 allows a field (the email package's header registry; fields not named: any number)
_MAX_COUNT = {name: kind.max_count for name, kind in email_policy.default.header_factory.registry.items()
              if kind.max_count is not None}
_HEADER_CLASSES: dict[str, type] = {}  # the registry makes a new class per lookup: made once per name here


class Refused(Exception):
    """The whole SMTP reply for a message that is not accepted."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class Submission:
    data: bytes  # the DATA as received (dot-unstuffed)
    mail_from: str
    recipients: tuple[str, ...]  # RCPT TO, in order
    client: str  # the client's address
    helo: str
    encrypted: bool
    listener: str  # this host's name, for the Received field


@dataclass(frozen=True)
class Prepared:
    envelope: Envelope  # what is stored and sent
    subject: str  # the Subject field, decoded (the queue page's column)


def prepare(submission: Submission, account: Account, portal_sender: Sender | None, now: datetime,
            allowed: Collection[str] | None = None) -> Prepared:
    """The message to store: Refused with the reply when it cannot be accepted. `allowed`: the From
    addresses the portal allows, lower case (None: not checked)."""
    raw = _LINE_END.sub(b"\r\n", submission.data)
    if raw.startswith(b"\r\n"):  # no header field at all: only the text
        head, body = b"", raw[2:]
    else:
        head, _, body = raw.partition(b"\r\n\r\n")
        head = head.removesuffix(b"\r\n")  # a message of header fields alone
    lines = _HEADER_LINE_END.split(head) if head else []
    _check_header_section(lines)
    fields = _fields(lines)
    _check_counts(fields)
    _check_structure(raw, fields)

    mail_from = submission.mail_from
    added: list[str] = []
    dropped = {"bcc"}
    written_from = _single_address(fields)
    if account.from_policy == FromPolicy.REWRITE:
        if portal_sender is None:
            raise Refused("451 4.3.5 This portal has no enabled mail server with a From address yet: its admins "
                          "add one under Mail servers. Try again later.")
        name = written_from[0] if written_from else ""
        added.append(_fold("From", str(Address(name or portal_sender.name, addr_spec=portal_sender.address))))
        dropped |= {"from", "sender"}
        mail_from = portal_sender.address
    elif written_from is None:
        _check_allowed(mail_from, allowed)
        added.append(_fold("From", mail_from))
    elif not account.may_send_as(written_from[1]):
        raise Refused(f"550 5.7.1 The From address {written_from[1]} is not one this SMTP credential may use: "
                      "an admin of the portal adds it to the credential, or chooses “rewrite From”")
    else:
        _check_allowed(written_from[1], allowed)
    if not any(name.lower() == "date" for name, _ in fields):
        added.append(_fold("Date", format_datetime(now)))
    message_id = str(_first(fields, "message-id") or "").strip()
    if not message_id:
        message_id = make_msgid(domain=mail_from.rpartition("@")[2] or "mailroom.invalid")
        added.append(_fold("Message-ID", message_id))
    blind = _blind(fields, submission.recipients)
    if blind:
        added.append(_fold("Bcc", ", ".join(blind)))
    front = "".join([_received(submission, now), *added]).encode()
    stored = front + b"".join(line + b"\r\n" for line in _without(lines, dropped)) + b"\r\n" + body
    envelope = Envelope(mail_from=mail_from, recipients=tuple(dict.fromkeys(submission.recipients)), raw=stored,
                        message_id=message_id)
    return Prepared(envelope, str(_first(fields, "subject") or ""))  # prepare changes no Subject field


def _check_allowed(address: str, allowed: Collection[str] | None) -> None:
    if allowed is not None and address.lower() not in allowed:
        raise Refused(f"550 5.7.1 The From address {address} is not one this portal allows: its admins add it as "
                      "a sender ID (portal Settings) or use a mail server's From address")


def _check_header_section(lines: list[bytes]) -> None:
    for number, line in enumerate(lines, 1):
        if line[:1] in (b" ", b"\t"):
            if number == 1:
                raise Refused("554 5.6.0 The message starts with a continuation line instead of a header field")
            continue
        if not _FIELD.match(line):
            raise Refused(f"554 5.6.0 Line {number} of the message is not a header field (“Name: value”): a "
                          "message starts with its header fields, then an empty line, then the text")
    try:
        b"\r\n".join(lines).decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("554 5.6.0 The message's header fields hold bytes that are not UTF-8: encode non-ASCII "
                      "text as RFC 2047 (=?charset?...?=) or UTF-8") from None


def _fields(lines: list[bytes]) -> list[tuple[str, str]]:
    """Each field's name and value, unfolded, as the email package reads them from bytes (beyond
    ASCII as surrogates). `lines`: a header section _check_header_section let through."""
    fields: list[tuple[str, str]] = []
    for line in lines:
        text = line.decode("ascii", "surrogateescape")
        if text[0] in " \t":
            name, value = fields[-1]
            fields[-1] = (name, value + text)
        else:
            name, _, value = text.partition(":")
            fields.append((name.rstrip(" \t"), value.lstrip(" \t")))
    return fields


def _header(name: str, value: str) -> BaseHeader:
    """The field as email.policy.default gives it (message[name]): parsed and decoded."""
    kind = _HEADER_CLASSES.get(name.lower())
    if kind is None:
        kind = _HEADER_CLASSES[name.lower()] = email_policy.default.header_factory[name]
    return kind(name, value)


def _first(fields: list[tuple[str, str]], name: str) -> BaseHeader | None:
    """The first field called `name` (lower case), as message[name] gives it."""
    return next((_header(field, value) for field, value in fields if field.lower() == name), None)


def _check_counts(fields: list[tuple[str, str]]) -> None:
    counts: dict[str, int] = {}
    for name, _ in fields:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    counts.pop("bcc", None)  # replaced anyway (prepare)
    for name, count in counts.items():
        allowed = _MAX_COUNT.get(name)
        if allowed is not None and count > allowed:
            raise Refused(f"554 5.6.0 The message has {count} {name.title()} fields; RFC 5322 allows {allowed}")


def _check_structure(raw: bytes, fields: list[tuple[str, str]]) -> None:
    """Only a body that may have parts (multipart, or message/* that may hold one) is parsed to find them."""
    content_type = " ".join(value for name, value in fields if name.lower() == "content-type").lower()
    if "multipart" not in content_type and "message" not in content_type:
        return
    for part in message_from_bytes(raw, policy=email_policy.default).walk():
        for defect in part.defects:
            if type(defect).__name__ in _BROKEN_MULTIPART:
                raise Refused("554 5.6.0 The message's MIME structure is broken (a multipart body whose parts "
                              "cannot be found): its boundary is missing or never used")


def _single_address(fields: list[tuple[str, str]]) -> tuple[str, str] | None:
    """(display name, address) of the From field; None without one; Refused unless it names one mailbox."""
    values = tuple(value for name, value in fields if name.lower() == "from")
    if not values:
        return None
    found = [(name, address) for name, address in _addresses("from", values) if address]
    if len(found) != 1 or "@" not in found[0][1]:
        raise Refused("554 5.6.0 The message's From field must hold exactly one address (name@domain)")
    return found[0]


def _blind(fields: list[tuple[str, str]], recipients: tuple[str, ...]) -> list[str]:
    shown = {address.lower() for _, address in _addresses("to", tuple(
        value for name in ("to", "cc") for field, value in fields if field.lower() == name)) if address}
    return [address for address in dict.fromkeys(recipients) if address.lower() not in shown]


@lru_cache(maxsize=1024)  # a device writes the same From (and often To) in every message
def _addresses(name: str, values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(display name, address) of each address in these values of an address field, as getaddresses()
    reads the fields email.policy.default made of them (To and Cc are the same kind of field)."""
    try:
        return tuple(getaddresses([str(_header(name, value)) for value in values]))
    except (AttributeError, IndexError, ValueError):  # the package's parser fails on a few odd fields (a group
        return tuple(getaddresses(list(values)))     # then more text: AttributeError): read as written


def _fold(name: str, value: str) -> str:
    policy = email_policy.SMTP if value.isascii() else email_policy.SMTPUTF8
    return policy.fold(name, value)


def _received(submission: Submission, now: datetime) -> str:
    protocol = "ESMTPSA" if submission.encrypted else "ESMTPA"  # RFC 3848
    helo = "".join(ch for ch in submission.helo if ch.isprintable() and ch not in "()\\")[:100] or "unknown"
    return (f"Received: from {helo} ([{submission.client}])\r\n\tby {submission.listener} (Mailroom) with "
            f"{protocol};\r\n\t{format_datetime(now)}\r\n")


def _without(lines: list[bytes], names: set[str]) -> list[bytes]:
    """The header lines without the fields named (and their continuation lines)."""
    kept, skipping = [], False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower() in names
        if not skipping:
            kept.append(line)
    return kept
