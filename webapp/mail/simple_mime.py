"""A simple message's bytes, written directly: exactly what the email package writes for it.

compose() builds an EmailMessage with email.policy.default, whose header registry parses every
header it is given and folds it again when the message is written; for a short plain message that
is most of the time of handing it in. For a message where the result is known in advance, this
module writes the same bytes itself: one text/plain or text/html part of ASCII lines of at most 78
characters (the email package sends those as they are, 7bit), no attachment, and headers that each
fit on one line, made of characters the email package writes unchanged (printable ASCII, single
spaces, nothing that looks like an encoded word; addresses of atoms and dots). Anything else
(`writable()` says False) is composed by the email package. tests/test_simple_mime.py compares the
two over many messages on either side of each of these limits.
"""
import re
from collections.abc import Sequence
from email import policy as email_policy
from email.headerregistry import Address

LINE = 78  # email.policy.default.max_line_length: a longer header is folded, a longer body line encoded
ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
LOCAL_PART = re.compile(rf"[{ATEXT}]+(\.[{ATEXT}]+)*")
DOMAIN = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")
DISPLAY_NAME = re.compile(rf"[.{ATEXT}]+( [.{ATEXT}]+)*")  # "." is quoted ("A. Smith"), which the package keeps
TEXT = re.compile(r"[!-~]+( [!-~]+)*")  # printable ASCII words, one space between two
REGISTERED = frozenset(email_policy.default.header_factory.registry)  # names parsed by a structure of their own
LOOKS_ENCODED = "=?"


def writable(from_: Address, reply: Address | None, addresses: dict[str, list[Address]], subject: str,
             headers: Sequence[tuple[str, str]], text: str | None, html: str | None) -> bool:
    """Whether write() gives this message's bytes (else the email package composes it)."""
    if (text is None) == (html is None):
        return False
    mailboxes = [from_, *([reply] if reply else []), *(a for field in addresses.values() for a in field)]
    if not all(_plain_address(address) for address in mailboxes):
        return False
    lines = [("From", _addresses([from_])), *((("Reply-To", _addresses([reply])),) if reply else ()),
             *((field, _addresses(values)) for field, values in addresses.items() if values),
             ("Subject", subject), *headers]
    if not all(_plain_text(value) and len(name) + 2 + len(value) <= LINE for name, value in lines):
        return False
    if any(name.lower() in REGISTERED for name, _ in headers):
        return False
    body = text if text is not None else html
    return body.isascii() and all(len(line) <= LINE for line in body.encode().splitlines())


def write(from_: Address, reply: Address | None, addresses: dict[str, list[Address]], subject: str, date: str,
          message_id: str, headers: Sequence[tuple[str, str]], text: str | None, html: str | None) -> bytes:
    """The message's bytes, CRLF line ends, Bcc kept; only for a message writable() accepts."""
    fields = [("From", _addresses([from_]))]
    if reply:
        fields.append(("Reply-To", _addresses([reply])))
    fields += [(field, _addresses(values)) for field, values in addresses.items() if values]
    fields += [("Subject", subject), ("Date", date), ("Message-ID", message_id), *headers,
               ("Content-Type", f'text/{"plain" if text is not None else "html"}; charset="utf-8"'),
               ("Content-Transfer-Encoding", "7bit"), ("MIME-Version", "1.0")]
    head = "".join(f"{name}: {value}\r\n" if value else f"{name}:\r\n" for name, value in fields)
    body = (text if text is not None else html).encode().splitlines()
    return (head + "\r\n").encode() + b"\r\n".join(body) + b"\r\n"


def _addresses(values: list[Address]) -> str:
    return ", ".join(str(address) for address in values)  # Address quotes a name with specials


def _plain_address(address: Address) -> bool:
    name = address.display_name
    return (LOCAL_PART.fullmatch(address.username) is not None and DOMAIN.fullmatch(address.domain) is not None
            and (not name or (DISPLAY_NAME.fullmatch(name) is not None and LOOKS_ENCODED not in name)))


def _plain_text(value: str) -> bool:
    return not value or (TEXT.fullmatch(value) is not None and LOOKS_ENCODED not in value)
