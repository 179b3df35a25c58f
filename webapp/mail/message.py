"""Building the EmailMessage objects that the transports send.

Addresses: an internationalised domain (admin@bücher.example) is written in its
ASCII form (admin@xn--bcher-kva.example), which every server accepts. Only a
non-ASCII local part (jörg@example.org) needs SMTPUTF8; such messages get
email.policy.SMTPUTF8, all others email.policy.default (non-ASCII display names
and subjects become RFC 2047 encoded words).

Bcc: build_message() keeps a Bcc header on the message so the transport knows
the blind recipients. smtp.send() reads To/Cc/Bcc for RCPT TO and removes Bcc
from the copy it transmits (see smtp_steps.prepare); the caller's message is never
changed.
"""
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy as email_policy
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from functools import lru_cache

from . import simple_mime
from .config import Sender

RECIPIENT_HEADERS = ("To", "Cc", "Bcc")


def build_message(
    sender: Sender,
    to: Iterable[str],
    subject: str,
    text: str,
    *,
    cc: Iterable[str] = (),
    bcc: Iterable[str] = (),
    message_id_domain: str | None = None,
    now: datetime | None = None,
) -> EmailMessage:
    """A plain-text message from `sender`. Raises ValueError for a CR/LF in a header
    value or something that is not an email address."""
    recipients = {"To": _as_list(to), "Cc": _as_list(cc), "Bcc": _as_list(bcc)}
    _reject_line_breaks(subject, sender.address, sender.name, sender.reply_to,
                        message_id_domain or "", *[a for v in recipients.values() for a in v])
    from_ = parse_address(sender.address, sender.name)
    reply_to = parse_address(sender.reply_to) if sender.reply_to else None
    headers = {field: [parse_address(a) for a in addrs] for field, addrs in recipients.items()}

    everyone = [from_, *([reply_to] if reply_to else []), *sum(headers.values(), [])]
    message = EmailMessage(policy=_policy_for(everyone))
    _set_addresses(message, "From", [from_])
    if reply_to:
        _set_addresses(message, "Reply-To", [reply_to])
    for field, addresses in headers.items():
        if addresses:
            _set_addresses(message, field, addresses)
    _set_unstructured(message, "Subject", subject)
    message["Date"] = format_datetime(_utc(now or datetime.now(timezone.utc)))
    message["Message-ID"] = make_msgid(domain=ascii_domain(message_id_domain or from_.domain))
    message.set_content(text, cte=None if text.isascii() else "quoted-printable")
    return message


LOOKS_ENCODED = "=?"  # text that mail clients would read as an RFC 2047 encoded word


def _set_addresses(message: EmailMessage, field: str, addresses: list[Address]) -> None:
    """Text typed as a display name reaches mail clients as typed. The email package writes an
    ASCII name as it is, so one that looks like an encoded word ("=?utf-8?q?Evil=0D=0ABcc:...?=")
    would be decoded by the client into something else, a line break and another header included;
    and it folds a long non-ASCII name into encoded words with the space between two of them
    outside both, where RFC 2047 decoders drop it. Such names are written here as encoded words
    of themselves (RFC 2047, spaces inside them), and the header is kept as written."""
    if all(_plain(address.display_name) for address in addresses):
        message[field] = addresses
        return
    message.set_raw(field, ",\n ".join(_written(field, address) for address in addresses))


def _plain(name: str) -> bool:
    return name.isascii() and LOOKS_ENCODED not in name


def _written(field: str, address: Address) -> str:
    if _plain(address.display_name):
        return formataddr((address.display_name, address.addr_spec))  # quoted where it needs to be
    name = Header(address.display_name, "utf-8", header_name=field).encode()  # folded with "\n "
    return f"{name} <{address.addr_spec}>"


def sample_message(
    sender: Sender, to: str, portal_name: str, server_label: str, now: datetime
) -> EmailMessage:
    """The "Send a sample mail" message: says which portal sent it, through which server, when."""
    subject, text = sample_text(portal_name, server_label, now)
    return build_message(sender, [to], subject, text, now=now)


def sample_text(portal_name: str, server_label: str, now: datetime) -> tuple[str, str]:
    """The sample mail's subject and text. Its lines stay under 78 characters unless the names are
    long, so the mail usually goes as it is (7bit), with no quoted-printable line breaks."""
    server = server_label or "the configured mail server"
    when = _utc(now).strftime("%Y-%m-%d %H:%M:%S UTC")
    subject = f"Mailroom sample mail from {portal_name} via {server}"
    text = (
        "Hello,\n\n"
        f"this is a sample mail from Mailroom, sent by the portal {portal_name}\n"
        f"through the mail server {server}.\n\n"
        f"Portal:      {portal_name}\n"
        f"Mail server: {server}\n"
        f"Sent at:     {when}\n\n"
        "If you can read this, the portal can send mail with these settings.\n"
    )
    return subject, text


@lru_cache(maxsize=4096)
def parse_address(text: str, name: str = "") -> Address:
    """'Jane <jane@bücher.example>' or 'jane@bücher.example' -> Address with an ASCII domain. (Addresses
    recur, and an Address cannot be changed: each is parsed once per process.)"""
    display_name, addr_spec = parseaddr(text.strip())
    local, at, domain = addr_spec.rpartition("@")
    if not (local and at and domain):
        raise ValueError(f"not an email address: {text!r}")
    return Address(display_name=name or display_name, username=local, domain=ascii_domain(domain))


def envelope_address(text: str) -> str:
    """The bare address for MAIL FROM / RCPT TO, domain in ASCII. A non-ASCII result needs SMTPUTF8."""
    return parse_address(text).addr_spec


def ascii_domain(domain: str) -> str:
    """bücher.example -> xn--bcher-kva.example (IDNA); ValueError if it can't be a domain."""
    try:
        return domain.strip().rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"not a valid domain: {domain!r}") from None


def _policy_for(addresses: list[Address]):
    """SMTPUTF8 only when a local part needs it. A header set as written (encoded words) is never
    refolded: refolding parses it, decoding its encoded words, and writes the result as text."""
    needs_utf8 = any(not address.username.isascii() for address in addresses)
    return (email_policy.SMTPUTF8 if needs_utf8 else email_policy.default).clone(refold_source="none")


# CR and LF, and what str.splitlines() and some mail software also take for a line end or refuse in
# a header: the other C0 controls but tab, DEL, NEL and the Unicode line and paragraph separators.
FORBIDDEN_IN_HEADERS = frozenset([chr(c) for c in range(0x20) if c != 0x09] + ["\x7f", "\x85", "\u2028", "\u2029"])


def _reject_line_breaks(*values: str) -> None:
    for value in values:
        if FORBIDDEN_IN_HEADERS & set(value):
            raise ValueError(f"header values may not contain line breaks or control characters: {value!r}")


def _as_list(addresses: Iterable[str] | str) -> list[str]:
    return [addresses] if isinstance(addresses, str) else list(addresses)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


# -- messages handed in (the outbox): html, attachments, reply-to, the submitter's own headers ----------

@dataclass(frozen=True)
class Mailbox:
    """An address as given (display name apart) for compose()."""
    address: str
    name: str = ""


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str  # "application/pdf"
    content: bytes


# Headers Mailroom writes itself (or that describe the MIME structure it builds): a submitter's
# headers may not set them. Resent-* and trace headers are a relay's to write, not a submitter's.
RESERVED_HEADERS = frozenset({
    "from", "sender", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id", "mime-version",
    "return-path", "received", "content-type", "content-transfer-encoding", "content-disposition",
    "content-id", "content-description", "content-length", "content-location", "content-base",
})
HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")  # RFC 5322 field-name: printable ASCII but ":", within a line
CONTENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")


def header_name_problem(name: str) -> str | None:
    """Why `name` cannot be a header a submitter sets, in words; None when it can."""
    if not HEADER_NAME.fullmatch(name):
        return "a header name is printable ASCII without spaces or “:” (e.g. X-Ticket-Id)"
    lowered = name.lower()
    if lowered in RESERVED_HEADERS or lowered.startswith(("content-", "resent-")):
        return f"{name} is a header Mailroom sets itself"
    return None


def content_type_problem(content_type: str) -> str | None:
    """Why an attachment cannot have this content type; None when it can."""
    if not CONTENT_TYPE.fullmatch(content_type):
        return "a content type looks like type/subtype (e.g. application/pdf)"
    if content_type.lower().startswith(("multipart/", "message/")):
        return (f"{content_type} parts cannot be attached as sent bytes; attach the file as "
                "application/octet-stream")
    return None


def compose(
    sender: Mailbox,
    to: Sequence[Mailbox],
    subject: str,
    *,
    text: str | None = None,
    html: str | None = None,
    cc: Sequence[Mailbox] = (),
    bcc: Sequence[Mailbox] = (),
    reply_to: Mailbox | None = None,
    headers: Sequence[tuple[str, str]] = (),
    attachments: Sequence[Attachment] = (),
    now: datetime | None = None,
) -> EmailMessage:
    """A message as submitted: text/plain, text/html, or both as multipart/alternative; with
    attachments, multipart/mixed. ValueError for a line break in a header, a header Mailroom sets
    itself, something that is not an address, or neither text nor html."""
    from_, reply, addresses = _checked(sender, to, cc, bcc, reply_to, subject, text, html, headers, attachments)
    return _composed(from_, reply, addresses, subject, text, html, headers, attachments, now)


def compose_simple(
    sender: Mailbox,
    to: Sequence[Mailbox],
    subject: str,
    *,
    text: str | None = None,
    html: str | None = None,
    cc: Sequence[Mailbox] = (),
    bcc: Sequence[Mailbox] = (),
    reply_to: Mailbox | None = None,
    headers: Sequence[tuple[str, str]] = (),
    attachments: Sequence[Attachment] = (),
    now: datetime | None = None,
) -> tuple[bytes, str, tuple[str, ...], str] | None:
    """compose()'s message written directly when it is simple enough (simple_mime.writable): its bytes
    (CRLF line ends, Bcc kept, the very bytes the email package writes), the envelope sender, the
    envelope recipients and the Message-ID; None for any other message. ValueError as compose()."""
    from_, reply, addresses = _checked(sender, to, cc, bcc, reply_to, subject, text, html, headers, attachments)
    if attachments or not simple_mime.writable(from_, reply, addresses, subject, headers, text, html):
        return None
    date = format_datetime(_utc(now or datetime.now(timezone.utc)))
    message_id = make_msgid(domain=ascii_domain(from_.domain))
    raw = simple_mime.write(from_, reply, addresses, subject, date, message_id, headers, text, html)
    recipients = tuple(dict.fromkeys(address.addr_spec for field in RECIPIENT_HEADERS for address in addresses[field]))
    return raw, from_.addr_spec, recipients, message_id


def _checked(sender, to, cc, bcc, reply_to, subject, text, html, headers, attachments):
    """The From, Reply-To and recipients as Addresses, once every header value, name and attachment
    is known to be acceptable (else ValueError)."""
    if text is None and html is None:
        raise ValueError("a message needs a text or an html body")
    people = {"To": list(to), "Cc": list(cc), "Bcc": list(bcc)}
    _reject_line_breaks(subject, sender.address, sender.name, *(
        value for mailbox in (*sum(people.values(), []), *([reply_to] if reply_to else []))
        for value in (mailbox.address, mailbox.name)), *(value for pair in headers for value in pair))
    _reject_controls(subject, sender.name, *(value for _, value in headers),
                     *(mailbox.name for mailbox in (*sum(people.values(), []), *([reply_to] if reply_to else []))))
    for name, _ in headers:
        problem = header_name_problem(name)
        if problem:
            raise ValueError(problem)
    from_ = parse_address(sender.address, sender.name)
    reply = parse_address(reply_to.address, reply_to.name) if reply_to else None
    addresses = {field: [parse_address(m.address, m.name) for m in mailboxes] for field, mailboxes in people.items()}
    for attachment in attachments:
        problem = content_type_problem(attachment.content_type)
        if problem or "\r" in attachment.filename or "\n" in attachment.filename:
            raise ValueError(problem or "a file name may not contain line breaks")
    return from_, reply, addresses


def _composed(from_, reply, addresses, subject, text, html, headers, attachments, now) -> EmailMessage:
    message = EmailMessage(policy=_policy_for([from_, *([reply] if reply else []), *sum(addresses.values(), [])]))
    _set_addresses(message, "From", [from_])
    if reply:
        _set_addresses(message, "Reply-To", [reply])
    for field, values in addresses.items():
        if values:
            _set_addresses(message, field, values)
    _set_unstructured(message, "Subject", subject)
    message["Date"] = format_datetime(_utc(now or datetime.now(timezone.utc)))
    message["Message-ID"] = make_msgid(domain=ascii_domain(from_.domain))
    for name, value in headers:
        _set_unstructured(message, name, value)
    _set_body(message, text, html)
    for attachment in attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(attachment.content, maintype=maintype.lower(), subtype=subtype.lower(),
                               filename=attachment.filename)
    return message


# Unicode's categories Cc (C0, DEL, C1), Zl (U+2028) and Zp (U+2029), tab excepted
CONTROL_CHARACTER = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def control_character_problem(value: str) -> str | None:
    """Header text may not hold control characters or what some software takes for a line end
    (VT, FF, NEL, U+2028, U+2029), tab excepted."""
    if CONTROL_CHARACTER.search(value):
        return "line breaks and control characters are not allowed in a header"
    return None


def _reject_controls(*values: str) -> None:
    for value in values:
        problem = control_character_problem(value)
        if problem:
            raise ValueError(f"{problem}: {value!r}")


def _set_unstructured(message: EmailMessage, name: str, value: str) -> None:
    """Text reaches mail clients as typed: text that looks like an RFC 2047 encoded word is itself
    encoded, and so is non-ASCII text (unless the message is SMTPUTF8, which carries it as it is):
    the email package folds it into encoded words with the space between two of them outside
    both, where RFC 2047 decoders drop it ("“Alternate relay”" read as "“Alternaterelay”")."""
    if LOOKS_ENCODED in value or not (value.isascii() or message.policy.utf8):
        message.set_raw(name, Header(value, "utf-8", header_name=name).encode())
    else:
        message[name] = value


def _set_body(message: EmailMessage, text: str | None, html: str | None) -> None:
    if text is not None:
        message.set_content(text, cte=_text_cte(text))
        if html is not None:
            message.add_alternative(html, subtype="html", cte=_text_cte(html))
    else:
        message.set_content(html, subtype="html", cte=_text_cte(html))


def _text_cte(text: str) -> str | None:
    """ASCII as it is (the email package folds long lines into quoted-printable itself), else quoted-printable."""
    return None if text.isascii() else "quoted-printable"
