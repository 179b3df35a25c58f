"""A server's message options (Privileged Identity's "Sender Information", "Priority, Sensitivity,
and Importance" and "Advanced Message Settings"): written into every message the server sends.

Each protocol carries them its own way; nothing is dropped:

- SMTP and the Gmail API send the MIME message itself: the options are its headers (apply()):
  Organization, Disposition-Notification-To (a read receipt, RFC 8098), Return-Receipt-To (a
  delivery receipt; nonstandard, but what Outlook and Exchange write and read), X-Priority and
  Priority (RFC 2156), Sensitivity (RFC 2156: Personal, Private, Company-Confidential; normal is
  its absence), Importance (RFC 2156: Low, Normal, High), and the custom headers. Over SMTP a
  return receipt also asks for a delivery status notification (RFC 3461: MAIL FROM ... RET=HDRS,
  RCPT TO ... NOTIFY=SUCCESS,FAILURE) where the server offers DSN in its EHLO answer; a server
  that does not offer it must not be given those parameters, so the header alone goes there.
- Microsoft Graph: Mailroom sends the message in Graph's MIME form, so the same headers go;
  Exchange's MIME reader ([MS-OXCMAIL] 2.2.3.2) turns Importance into the message's `importance`,
  Disposition-Notification-To into `isReadReceiptRequested`, Return-Receipt-To into
  `isDeliveryReceiptRequested`, Sensitivity into PidTagSensitivity (0x0036, a
  singleValueExtendedProperty: Graph has no field for it) and X-Priority into PidTagPriority.
- EWS: the MIME content goes with the item fields set as well (ews_fields(), read from the head
  that is sent): Importance, Sensitivity (Normal, Personal, Private, Confidential),
  IsReadReceiptRequested and IsDeliveryReceiptRequested, which Exchange uses for the item it sends.

A header the message already has (a submitter's own Importance, say) is kept, and the server's is
not added: a function of the stored message and this server's options alone, so every attempt
through this server sends the same bytes.
"""
import re
from dataclasses import dataclass, field
from email import policy as email_policy
from email.header import Header
from email.parser import BytesHeaderParser
from email.utils import formataddr, getaddresses
from enum import StrEnum
from typing import Any

from .message import FORBIDDEN_IN_HEADERS, RESERVED_HEADERS, parse_address


class Priority(StrEnum):
    UNSPECIFIED = ""
    URGENT = "urgent"
    NORMAL = "normal"
    NON_URGENT = "non-urgent"


class Sensitivity(StrEnum):
    UNSPECIFIED = ""
    NORMAL = "normal"
    PERSONAL = "personal"
    PRIVATE = "private"
    COMPANY_CONFIDENTIAL = "company-confidential"


class Importance(StrEnum):
    UNSPECIFIED = ""
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


PRIORITY_LABELS = {Priority.UNSPECIFIED: "Unspecified", Priority.URGENT: "Urgent (high)",
                   Priority.NORMAL: "Normal", Priority.NON_URGENT: "Non-urgent (low)"}
SENSITIVITY_LABELS = {Sensitivity.UNSPECIFIED: "Unspecified", Sensitivity.NORMAL: "Normal",
                      Sensitivity.PERSONAL: "Personal", Sensitivity.PRIVATE: "Private",
                      Sensitivity.COMPANY_CONFIDENTIAL: "Company confidential"}
IMPORTANCE_LABELS = {Importance.UNSPECIFIED: "Unspecified", Importance.HIGH: "High", Importance.NORMAL: "Normal",
                     Importance.LOW: "Low"}

# X-Priority (1 highest .. 5 lowest, as Outlook writes it) and Priority (RFC 2156)
PRIORITY_HEADERS = {Priority.URGENT: ("1", "urgent"), Priority.NORMAL: ("3", "normal"),
                    Priority.NON_URGENT: ("5", "non-urgent")}
SENSITIVITY_HEADER = {Sensitivity.PERSONAL: "Personal", Sensitivity.PRIVATE: "Private",
                      Sensitivity.COMPANY_CONFIDENTIAL: "Company-Confidential"}  # Normal: no header (RFC 2156)
IMPORTANCE_HEADER = {Importance.HIGH: "High", Importance.NORMAL: "Normal", Importance.LOW: "Low"}
EWS_SENSITIVITY = {Sensitivity.NORMAL: "Normal", Sensitivity.PERSONAL: "Personal", Sensitivity.PRIVATE: "Private",
                   Sensitivity.COMPANY_CONFIDENTIAL: "Confidential"}  # t:SensitivityChoicesType

# The headers the options above write: a custom header may not set them either.
OPTION_HEADERS = frozenset({"organization", "disposition-notification-to", "return-receipt-to", "x-priority",
                            "priority", "sensitivity", "importance"})
ADDRESS_HEADERS = frozenset({"disposition-notification-to", "return-receipt-to"})
MAX_HEADERS = 20
MAX_NAME = 76  # a name and its colon fit a line
MAX_VALUE = 900  # RFC 5322 allows 998 characters a line; an unfoldable value must fit one
FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable US-ASCII but ":"


@dataclass(frozen=True)
class CustomHeader:
    name: str
    value: str


@dataclass(frozen=True)
class MessageOptions:
    organization: str = ""
    read_receipt_to: str = ""  # Disposition-Notification-To
    return_receipt_to: str = ""  # Return-Receipt-To, and a DSN where SMTP offers it
    priority: Priority = Priority.UNSPECIFIED
    sensitivity: Sensitivity = Sensitivity.UNSPECIFIED
    importance: Importance = Importance.UNSPECIFIED
    headers: tuple[CustomHeader, ...] = field(default_factory=tuple)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "MessageOptions":
        values = values or {}
        rows = [CustomHeader(str(row.get("name") or "").strip(), str(row.get("value") or "").strip())
                for row in values.get("headers") or () if isinstance(row, dict)]
        return cls(organization=str(values.get("organization") or "").strip(),
                   read_receipt_to=str(values.get("read_receipt_to") or "").strip(),
                   return_receipt_to=str(values.get("return_receipt_to") or "").strip(),
                   priority=_choice(Priority, values.get("priority")),
                   sensitivity=_choice(Sensitivity, values.get("sensitivity")),
                   importance=_choice(Importance, values.get("importance")),
                   headers=tuple(row for row in rows if row.name))

    def to_dict(self) -> dict[str, Any]:
        if self == MessageOptions():
            return {}
        return {"organization": self.organization, "read_receipt_to": self.read_receipt_to,
                "return_receipt_to": self.return_receipt_to, "priority": self.priority.value,
                "sensitivity": self.sensitivity.value, "importance": self.importance.value,
                "headers": [{"name": h.name, "value": h.value} for h in self.headers]}

    @property
    def wants_dsn(self) -> bool:
        return bool(self.return_receipt_to)

    def mime_headers(self) -> list[tuple[str, str]]:
        """The headers these options write, in order."""
        added = []
        if self.organization:
            added.append(("Organization", self.organization))
        if self.read_receipt_to:
            added.append(("Disposition-Notification-To", written_address(self.read_receipt_to)))
        if self.return_receipt_to:
            added.append(("Return-Receipt-To", written_address(self.return_receipt_to)))
        if self.priority in PRIORITY_HEADERS:
            x_priority, priority = PRIORITY_HEADERS[self.priority]
            added += [("X-Priority", x_priority), ("Priority", priority)]
        if self.sensitivity in SENSITIVITY_HEADER:
            added.append(("Sensitivity", SENSITIVITY_HEADER[self.sensitivity]))
        if self.importance in IMPORTANCE_HEADER:
            added.append(("Importance", IMPORTANCE_HEADER[self.importance]))
        return added + [(h.name, h.value) for h in self.headers]


def _choice(kind, value):
    try:
        return kind(value or "")
    except ValueError:
        return kind("")


def header_name_problem(name: str) -> str | None:
    """Why `name` cannot be a custom header, in words; None when it can."""
    if not FIELD_NAME.fullmatch(name):
        return "a header name is printable ASCII without spaces or “:” (RFC 5322), e.g. X-Ticket-Id"
    if len(name) > MAX_NAME:
        return f"a header name is at most {MAX_NAME} characters"
    lowered = name.lower()
    if lowered in OPTION_HEADERS:
        return f"{name} is set by the option above: choose it there"
    if lowered in RESERVED_HEADERS or lowered.startswith(("content-", "resent-")):
        return f"{name} is a header Mailroom sets itself for every message"
    return None


def header_value_problem(value: str) -> str | None:
    if FORBIDDEN_IN_HEADERS & set(value):
        return "a header value may not contain line breaks or control characters"
    if len(value) > MAX_VALUE:
        return f"a header value is at most {MAX_VALUE} characters"
    return None


def address_problem(value: str) -> str | None:
    """The receipt addresses are one address each (a display name allowed; an international domain
    is written in its ASCII form, a local part must be ASCII: the header goes to servers without SMTPUTF8)."""
    if FORBIDDEN_IN_HEADERS & set(value):
        return "an address may not contain line breaks or control characters"
    if len(getaddresses([value])) != 1:
        return "enter one email address, e.g. receipts@example.com"
    try:
        address = parse_address(value)
    except ValueError:
        return "enter one email address, e.g. receipts@example.com"
    if not address.username.isascii() or "." not in address.domain or not address.username:
        return "enter one email address, e.g. receipts@example.com (ASCII before the @)"
    return None


def written_address(value: str) -> str:
    """The address as a header carries it: domain in ASCII, a non-ASCII name as an encoded word."""
    address = parse_address(value)
    return formataddr((address.display_name, address.addr_spec), charset="utf-8")


def apply(raw: bytes, options: MessageOptions) -> bytes:
    """The message (its CRLF bytes) with the options' headers in front, where it has none of that name."""
    added = options.mime_headers()
    if not added:
        return raw
    present = _present(raw)
    lines = []
    for name, value in added:
        key = name.lower().encode("ascii")
        if key not in present:
            present.add(key)
            lines.append(_header_line(name, value))
    return b"".join(lines) + raw


def _present(raw: bytes) -> set[bytes]:
    """The names (lower case) of the headers the message has."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return {line.split(b":", 1)[0].strip().lower() for line in head.split(b"\r\n")
            if line[:1] not in (b" ", b"\t") and b":" in line}


def _header_line(name: str, value: str) -> bytes:
    """One header as RFC 5322 wants it: ASCII as it is, anything else as encoded words (folded)."""
    if name.lower() in ADDRESS_HEADERS:  # written_address() made it ASCII
        return f"{name}: {value}\r\n".encode("ascii")
    if not value.isascii() or "=?" in value:
        value = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {value}\r\n".encode("ascii")


def ews_fields(options: MessageOptions, raw: bytes) -> dict[str, Any]:
    """exchangelib Message fields that say on the item what the message's head says (`raw`, the options
    applied): Importance, Sensitivity, and the read and delivery receipts asked for; nothing unspecified.
    A message's own Importance or Sensitivity won over the server's in apply(), and wins here too."""
    head = BytesHeaderParser(policy=email_policy.default).parsebytes(raw)
    fields: dict[str, Any] = {}
    importance = str(head.get("Importance", "")).strip().capitalize()
    if importance in IMPORTANCE_HEADER.values():
        fields["importance"] = importance
    written = str(head.get("Sensitivity", "")).strip().lower()
    sensitivity = next((value for value, header in SENSITIVITY_HEADER.items() if header.lower() == written),
                       options.sensitivity if options.sensitivity == Sensitivity.NORMAL and not written else None)
    if sensitivity in EWS_SENSITIVITY:
        fields["sensitivity"] = EWS_SENSITIVITY[sensitivity]
    if head.get("Disposition-Notification-To") is not None:
        fields["is_read_receipt_requested"] = True
    if head.get("Return-Receipt-To") is not None:
        fields["is_delivery_receipt_requested"] = True
    return fields
