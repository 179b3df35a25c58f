"""How a sample mail arrived: the receiving side's verdict, read back from a mailbox.

A server that accepted a mail says nothing of what the recipient's side thought of it. The
receiving side writes that into the mail itself, as `Authentication-Results` header fields
(RFC 8601: `mx.example.net; spf=pass smtp.mailfrom=…; dkim=none; dmarc=fail header.from=…`).
`read_back()` logs in with the server's mail receiver login (mail/receiver.py: the same
connection, egress policy, proxy, TLS and deadline), finds the mail by its Message-ID, reads its
header only, and leaves it unread: IMAP `SELECT INBOX` read-only, `SEARCH HEADER Message-ID`,
`FETCH BODY.PEEK[HEADER]`; POP3 `TOP n 0` over the newest NEWEST_LOOKED_AT mails. The fields are
parsed with authres (the RFC 8601 parser of the dkimpy/OpenDMARC world), not by hand; a field
that does not parse is shown as received.
"""
import email.parser
import email.policy
import imaplib
import poplib
import re
from dataclasses import dataclass, field

import authres

from .deadline import Deadline
from .egress import Network
from .receiver import Receiver, ReceiverProtocol, login
from .report import StepFailed

NEWEST_LOOKED_AT = 50  # POP3 has no search: the newest mails whose header is read
FIELDS = ("Authentication-Results", "ARC-Authentication-Results")
MESSAGE_ID = re.compile(r"<[!-~]{1,250}>")  # visible ASCII: it goes into an IMAP quoted string
VERDICT_WORDS = {
    "pass": "passed", "fail": "failed", "softfail": "soft-failed", "neutral": "neutral", "none": "none found",
    "temperror": "a temporary error", "permerror": "a permanent error", "policy": "refused by local policy",
    "hardfail": "failed",
}


@dataclass(frozen=True)
class Verdict:
    method: str  # spf, dkim, dmarc, arc, ...
    result: str  # pass, fail, none, ...
    about: str  # the properties, e.g. "header.from=example.test"
    comment: str = ""

    @property
    def words(self) -> str:
        return VERDICT_WORDS.get(self.result, self.result)

    @property
    def good(self) -> bool:
        return self.result == "pass"


@dataclass
class Arrival:
    found: bool = False
    mailbox: str = ""  # which login and server was read, for the words
    checked_by: list[str] = field(default_factory=list)  # the authserv-ids that wrote the verdicts
    verdicts: list[Verdict] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)  # fields authres could not read, as received

    @property
    def said_nothing(self) -> bool:
        return self.found and not self.verdicts and not self.unparsed


def valid_message_id(value: str) -> bool:
    return bool(MESSAGE_ID.fullmatch(value)) and '"' not in value and "\\" not in value


def read_back(receiver: Receiver, network: Network, deadline: Deadline, message_id: str) -> Arrival:
    """Find the mail with this Message-ID in the receiver login's mailbox and read its verdicts;
    StepFailed (mail/receiver.py's words) when the login or the mailbox fails."""
    if not valid_message_id(message_id):
        raise ValueError("not a Message-ID")
    settings = receiver.settings
    arrival = Arrival(mailbox=f"{settings.username} at {settings.address}")
    headers: list[bytes] = []

    def read(client, deadline: Deadline) -> None:
        header = _imap_header(client, message_id, deadline) if settings.protocol == ReceiverProtocol.IMAP \
            else _pop3_header(client, message_id, deadline)
        if header is not None:
            headers.append(header)

    login(receiver, network, deadline, then=read)
    if headers:
        arrival.found = True
        _verdicts(arrival, headers[0])
    return arrival


def _imap_header(client: imaplib.IMAP4, message_id: str, deadline: Deadline) -> bytes | None:
    client.sock.settimeout(deadline.left())
    kind, data = client.select("INBOX", readonly=True)
    if kind != "OK":
        raise StepFailed(f"the mailbox has no INBOX to read ({_said(data)})", "check the mail receiver ID")
    client.sock.settimeout(deadline.left())
    kind, data = client.search(None, "HEADER", "Message-ID", f'"{message_id}"')
    numbers = data[0].split() if kind == "OK" and data and data[0] else []
    if not numbers:
        return None
    client.sock.settimeout(deadline.left())
    kind, data = client.fetch(numbers[-1], "(BODY.PEEK[HEADER])")
    parts = [part[1] for part in data if isinstance(part, tuple) and len(part) > 1] if kind == "OK" else []
    return parts[0] if parts else None


def _pop3_header(client: poplib.POP3, message_id: str, deadline: Deadline) -> bytes | None:
    client.sock.settimeout(deadline.left())
    count, _size = client.stat()
    for number in range(count, max(0, count - NEWEST_LOOKED_AT), -1):
        client.sock.settimeout(deadline.left())
        _reply, lines, _octets = client.top(number, 0)
        header = b"\r\n".join(lines) + b"\r\n"
        if _message_id_of(header) == message_id:
            return header
    return None


def _message_id_of(header: bytes) -> str:
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)
    return " ".join(str(parsed.get("Message-ID", "")).split())


def _verdicts(arrival: Arrival, header: bytes) -> None:
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)
    for name in FIELDS:
        for value in parsed.get_all(name) or []:
            text = " ".join(str(value).split())
            try:
                results = authres.AuthenticationResultsHeader.parse_value(
                    text if name == FIELDS[0] else _without_instance(text))
            except authres.AuthResError:
                arrival.unparsed.append(f"{name}: {text}"[:500])
                continue
            if results.authserv_id not in arrival.checked_by:
                arrival.checked_by.append(results.authserv_id)
            for result in results.results:
                about = " ".join(f"{p.type}.{p.name}={p.value}" for p in result.properties or [])
                arrival.verdicts.append(Verdict(result.method, str(result.result).lower(), about,
                                                getattr(result, "result_comment", None) or ""))


def _without_instance(value: str) -> str:
    """ARC-Authentication-Results starts with `i=N;` (RFC 8617), then is an Authentication-Results."""
    return re.sub(r"^\s*i\s*=\s*\d+\s*;", "", value)


def _said(data) -> str:
    return " ".join(part.decode("utf-8", "replace") if isinstance(part, bytes) else str(part) for part in data or [])
