"""Handing mail in: the one function that accepts a message for a portal.

The HTTP API, the command line, Python code and Mailroom's own notices call `submit()`; the SMTP
submission listener, which receives complete messages, calls `store()`. It checks
the submission against the portal (the From it allows, sizes, an Idempotency-Key used before),
builds the MIME message once, stores it as a queued OutboundMail and commits: a caller answers
"queued" only after that. Nothing is sent here; the delivery worker takes the row from there.

`Submission` is the typed message (a pydantic model: the API validates its JSON body with it, and
the OpenAPI description is built from it). What it can check alone (addresses, line breaks, header
names, a body) it checks when it is made; what needs the portal, `submit()` checks.
"""
import base64
import binascii
import hashlib
import json
import mimetypes
import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Annotated

from flask import current_app
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer,
                      WithJsonSchema, field_validator, model_validator)
from pydantic_core import PydanticCustomError
from sqlalchemy import bindparam
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from . import db, delivery, senders
from .addresses import normalize_address
from .mail.envelope import Envelope
from .mail.message import (Attachment as MessageAttachment, Mailbox, content_type_problem, control_character_problem,
                           header_name_problem)
from .models import MailServer, MailState, OutboundMail, Portal, utcnow
from .one_writer import one_writer


class Source(StrEnum):
    API = "api"
    PYTHON = "python"  # code calling submit()
    COMMAND_LINE = "cli"
    NOTICE = "notice"  # Mailroom's own mail to the portal's admins
    SMTP = "smtp"  # the SMTP submission listener (webapp/submission)
    SYSTEM = "system"  # Mailroom's own mail through the system-mail server (password recovery)


@dataclass(frozen=True)
class Submitter:
    """Who hands the message in, kept on the row."""
    source: Source
    name: str  # an API key's name, a user, "command line"
    client_address: str = ""
    api_key_id: int | None = None
    owner_id: int | None = None  # the user on whose behalf it is sent (an API key's owner): their sender ID is the From


class Refused(Exception):
    """The submission cannot be accepted; `field` names what is wrong (as the API's JSON names it)."""
    status = 422
    code = "invalid"

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


class TooLarge(Refused):
    status = 413
    code = "too_large"


class IdempotencyKeyReused(Refused):
    """The same Idempotency-Key came before with a different request."""
    code = "idempotency_key_reused"


IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII, no spaces; the column holds 200


# -- the submission -------------------------------------------------------------------------------

_ANGLE = re.compile(r"(?P<name>[^<>]*)<(?P<address>[^<>]*)>\s*")


def parse_mailbox(text: str) -> Mailbox:
    """"Ann Example <ann@example.org>" or "ann@example.org" -> Mailbox with the address normalized
    (email-validator, as the forms do; intranet domains too). ValueError says why not."""
    problem = control_character_problem(text)
    if problem:
        raise ValueError(problem)
    match = _ANGLE.fullmatch(text.strip())
    name, address = (match["name"].strip(), match["address"]) if match else ("", text)
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = re.sub(r'\\(.)', r"\1", name[1:-1])
    if len(name) > 200:
        raise ValueError("a display name has at most 200 characters")
    return Mailbox(normalize_address(address.strip()), name)


def _mailbox(text: str) -> str:
    parse_mailbox(text)
    return text.strip()


def _one_line(text: str) -> str:
    problem = control_character_problem(text)
    if problem:
        raise ValueError(problem)
    return text


def _from_base64(value):
    """Standard base64 (RFC 4648), lines wrapped or not; anything else is refused, not guessed at."""
    if not isinstance(value, str):
        return value
    try:
        return base64.b64decode(re.sub(r"\s+", "", value), validate=True)
    except binascii.Error as error:
        raise ValueError(f"not valid base64 ({error})") from None


Address = Annotated[str, Field(max_length=500), AfterValidator(_mailbox)]
OneLine = Annotated[str, AfterValidator(_one_line)]
Base64Bytes = Annotated[
    bytes, BeforeValidator(_from_base64),
    PlainSerializer(lambda content: base64.b64encode(content).decode(), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "description": "the file's bytes, base64"}),
]


class Attachment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: OneLine = Field(min_length=1, max_length=255, description="the file's name as recipients see it")
    content_type: str = Field("", max_length=255, description="e.g. application/pdf; empty: guessed from the name")
    content: Base64Bytes

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, filename: str) -> str:
        if "/" in filename or "\\" in filename:
            raise ValueError("a file name without a folder (no “/” or “\\”)")
        return filename

    @field_validator("content_type")
    @classmethod
    def _known_shape(cls, content_type: str) -> str:
        problem = content_type and content_type_problem(content_type)
        if problem:
            raise ValueError(problem)
        return content_type.lower()

    @property
    def mime_type(self) -> str:
        return self.content_type or mimetypes.guess_type(self.filename)[0] or "application/octet-stream"


def _present(field: str, schema: dict) -> dict:
    return {"required": [field], "properties": {field: schema}}


class Submission(BaseModel):
    """A message to send: who from (empty: the portal's From), to whom, what. Made from Python
    (`Submission(to=[...], subject=..., text=...)`) or from the API's JSON; ValidationError names the field."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={"allOf": [
        {"anyOf": [_present(field, {"type": "array", "minItems": 1}) for field in ("to", "cc", "bcc")]},
        {"anyOf": [_present(field, {"type": "string"}) for field in ("text", "html")]},
    ]})

    from_: Address | None = Field(None, alias="from", description="empty: the sender ID of the API key's "
                                  "owner, else the From of the portal's first enabled server; else one of its "
                                  "servers' From addresses or sender IDs")
    to: list[Address] = Field(default_factory=list, description="“Name <address>” or “address”")
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    reply_to: Address | None = None
    subject: OneLine = Field("", max_length=998)
    text: str | None = Field(None, description="the plain-text body")
    html: str | None = Field(None, description="the HTML body (with text: multipart/alternative)")
    headers: dict[str, Annotated[str, Field(max_length=998), AfterValidator(_one_line)]] = Field(
        default_factory=dict, max_length=50, description="further headers, e.g. {\"X-Ticket-Id\": \"42\"}")
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)

    @field_validator("headers")
    @classmethod
    def _own_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            problem = header_name_problem(name)
            if problem:
                raise ValueError(problem)
        return headers

    @model_validator(mode="after")
    def _complete(self) -> "Submission":
        if not (self.to or self.cc or self.bcc):
            raise PydanticCustomError("no_recipient", "a message needs at least one recipient in to, cc or bcc")
        if self.text is None and self.html is None:
            raise PydanticCustomError("no_body", "a message needs a text or an html body (or both)")
        return self

    def fingerprint(self) -> str:
        """Tells two requests apart for the Idempotency-Key: the same submission, the same fingerprint."""
        canonical = self.model_dump(mode="json", by_alias=True)
        return hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# The field a whole-message error is about (pydantic reports those at the root).
WHOLE_MESSAGE_FIELDS = {"no_recipient": "to", "no_body": "text"}


def error_field(error: dict) -> str:
    """Where a pydantic error is: ("to", 1) -> "to[1]", ("attachments", 0, "content") ->
    "attachments[0].content", ("headers", "X-A", "[key]") -> "headers.X-A"."""
    if not error["loc"]:
        return WHOLE_MESSAGE_FIELDS.get(error["type"], "")
    field = ""
    for part in error["loc"]:
        if part == "[key]":
            continue
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    return field


# -- accepting it ---------------------------------------------------------------------------------

def submit(portal: Portal, submission: Submission, submitter: Submitter,
           idempotency_key: str | None = None) -> OutboundMail:
    """Check, build, store as queued and commit; the committed row. Refused (422), TooLarge (413) or
    IdempotencyKeyReused (422) when it cannot be accepted: nothing is stored then.

    With an idempotency key, the same submission again returns the row stored the first time, also
    when two come at the same moment (the unique key decides)."""
    session = db.session()
    if idempotency_key is not None:
        if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise Refused(IDEMPOTENCY_HEADER, "an Idempotency-Key is 1 to 200 printable ASCII characters")
        earlier = _earlier(portal, submission, idempotency_key)
        if earlier is not None:
            return earlier
    values = _build(portal, submission, submitter, idempotency_key)
    with one_writer(db.engine()):  # the process's other writers wait on a lock, not on SQLite
        try:
            mail_id = session.connection().execute(_INSERT, values).inserted_primary_key[0]
            session.commit()
        except IntegrityError:
            session.rollback()
            earlier = _earlier(portal, submission, idempotency_key) if idempotency_key else None
            if earlier is None:
                raise
            return earlier
    delivery.wake([mail_id])  # after the commit: a worker that takes the job finds the row
    # the stored row's values, to read: in no session, with nothing to write (model_construct: not the ORM's
    # bookkeeping of every column, which the API's answer would pay for nothing)
    return OutboundMail.model_construct(id=mail_id, **values)


# One Core statement, compiled once: no unit of work for a row that is only inserted. Its id is SQLite's
# last row id (no RETURNING: SQLite's write lock is held from the INSERT to the commit, and a row to
# fetch in between is one more wait for the GIL while other threads hold it); PostgreSQL returns it.
_INSERT = OutboundMail.__table__.insert()


def _earlier(portal: Portal, submission: Submission, idempotency_key: str) -> OutboundMail | None:
    mail = db.session().exec(select(OutboundMail).where(
        OutboundMail.portal_id == portal.id, OutboundMail.idempotency_key == idempotency_key)).first()
    if mail is not None and mail.request_hash != submission.fingerprint():
        raise IdempotencyKeyReused(IDEMPOTENCY_HEADER, "this Idempotency-Key was used before for a different "
                                   "message: use a new key for a new message")
    return mail


def _build(portal: Portal, submission: Submission, submitter: Submitter, idempotency_key: str | None) -> dict:
    """The queued row's column values."""
    config = current_app.config
    sender, reply_to = _sender(portal, submission, submitter.owner_id)
    recipients = {field: [parse_mailbox(text) for text in getattr(submission, field)] for field in ("to", "cc", "bcc")}
    count = sum(map(len, recipients.values()))
    if count > config["MESSAGE_MAX_RECIPIENTS"]:
        raise Refused("to", f"{count} recipients; a message may have at most {config['MESSAGE_MAX_RECIPIENTS']} "
                            "in to, cc and bcc together: send several messages")
    files = sum(len(attachment.content) for attachment in submission.attachments)
    if files > config["ATTACHMENTS_MAX_BYTES"]:
        raise TooLarge("attachments", f"the attachments have {_size(files)} together; at most "
                                      f"{_size(config['ATTACHMENTS_MAX_BYTES'])} are accepted")
    try:
        envelope = Envelope.composed(sender, recipients["to"], submission.subject, text=submission.text,
                                     html=submission.html, cc=recipients["cc"], bcc=recipients["bcc"],
                                     reply_to=reply_to, headers=list(submission.headers.items()),
                                     attachments=[MessageAttachment(a.filename, a.mime_type, a.content)
                                                  for a in submission.attachments])
    except ValueError as error:  # Submission checked every field: what is left concerns the whole message
        raise Refused("message", str(error)) from None
    if len(envelope.raw) > config["MESSAGE_MAX_BYTES"]:
        raise TooLarge("message", f"the message has {_size(len(envelope.raw))} as sent; at most "
                                  f"{_size(config['MESSAGE_MAX_BYTES'])} are accepted")
    return _values(portal.id, envelope, submitter, submission.subject, idempotency_key,
                   submission.fingerprint() if idempotency_key else "")


def store(portal_id: int, envelope: Envelope, submitter: Submitter, subject: str | None = None) -> int:
    """Store a message that is complete already (raw MIME with its Bcc field, and its envelope: what
    the SMTP submission listener received) as queued and commit, together with whatever the caller's
    transaction holds (the listener's count of the message); the stored row's id. The caller answers
    "accepted" only after this returns. Nothing is sent here. `subject`: as add() takes it."""
    if subject is None:
        subject = str(envelope.message()["Subject"] or "")
    session = db.session()
    values = _values(portal_id, envelope, submitter, subject)
    mail_id = session.connection().execute(_INSERT, values).inserted_primary_key[0]
    session.commit()
    delivery.wake([mail_id])  # after the commit: a worker that takes the job finds the row
    return mail_id


def add(portal: Portal, envelope: Envelope, submitter: Submitter, pinned_server_id: int | None = None,
        expires_at=None, subject: str | None = None) -> OutboundMail:
    """The queued row for a complete message, added to the session (the caller commits, then wakes a
    worker). `pinned_server_id`: only that server may send it (system mail); `expires_at`: an earlier
    end of its lifetime (a recovery link that expires); `subject`: the decoded Subject field when the
    caller has it already (else the message is parsed for it)."""
    if subject is None:
        subject = str(envelope.message()["Subject"] or "")
    mail = OutboundMail(**_values(portal.id, envelope, submitter, subject))
    mail.pinned_server_id = pinned_server_id
    if expires_at is not None:
        mail.expires_at = min(mail.expires_at, expires_at)
    db.session().add(mail)
    return mail


def _values(portal_id: int, envelope: Envelope, submitter: Submitter, subject: str,
            idempotency_key: str | None = None, request_hash: str = "") -> dict:
    """A queued row's columns (the others keep their defaults)."""
    now = utcnow()
    return dict(
        portal_id=portal_id, state=MailState.QUEUED, source=submitter.source.value,
        submitted_by=submitter.name[:320], client_address=submitter.client_address[:64],
        api_key_id=submitter.api_key_id, idempotency_key=idempotency_key, request_hash=request_hash,
        message_id=envelope.message_id[:500], mail_from=envelope.mail_from,
        recipients=[{"address": address, "state": "pending", "code": None, "reply": ""}
                    for address in envelope.recipients],
        subject=_shortened(subject, 300), to_summary=_summary(envelope.recipients),
        size=len(envelope.raw), raw=envelope.raw, created_at=now, updated_at=now, next_attempt_at=now,
        expires_at=now + timedelta(hours=current_app.config["DELIVERY_LIFETIME_HOURS"]))


# What _sender needs, in one query: the portal's servers with a From address, in the list's order (columns,
# not servers), each row with the sender ID of the submitter's owner (the same on every row)
_SENDING_SERVERS = select(MailServer.from_address, MailServer.sender_name, MailServer.reply_to, MailServer.enabled,
                          senders.SENDER_OF.label("own")) \
    .where(MailServer.portal_id == bindparam("portal_id"), MailServer.from_address != "") \
    .order_by(MailServer.position, MailServer.id)


def _sender(portal: Portal, submission: Submission, owner_id: int | None = None) -> tuple[Mailbox, Mailbox | None]:
    """The From and the Reply-To. From: the submission's, if the portal allows it (a server's From or a
    sender ID); else the sender ID of the owner (an API key's), else the first enabled server's. Reply-To:
    the submission's, else that of the server whose From it is (a sender ID: the first enabled server's)."""
    servers = db.session().connection().execute(_SENDING_SERVERS,
                                                {"portal_id": portal.id, "owner_id": owner_id}).all()
    if not servers:
        raise Refused("from", "this portal has no mail server with a From address yet: an admin adds one under "
                              "Mail servers")
    default = next((s for s in servers if s.enabled), servers[0])
    if submission.from_ is None:
        server = default
        sender = Mailbox(default.own or server.from_address, server.sender_name)
    else:
        sender = parse_mailbox(submission.from_)
        allowed = senders.allowed_from(portal)
        if sender.address.lower() not in allowed:
            shown = ", ".join(sorted(allowed))
            raise Refused("from", f"{sender.address} is not a From address of this portal; use one of its "
                                  f"servers' From addresses or sender IDs ({shown}) or leave it out")
        server = allowed[sender.address.lower()] or default
        address = server.from_address if allowed[sender.address.lower()] else sender.address.lower()
        sender = Mailbox(address, sender.name or server.sender_name)
    if submission.reply_to is not None:
        return sender, parse_mailbox(submission.reply_to)
    return sender, Mailbox(server.reply_to) if server.reply_to else None


def _summary(recipients: tuple[str, ...], limit: int = 500) -> str:
    summary = ", ".join(recipients)
    if len(summary) <= limit:
        return summary
    shown = []
    for address in recipients:
        more = f" and {len(recipients) - len(shown) - 1} more"
        if len(", ".join([*shown, address])) + len(more) > limit:
            break
        shown.append(address)
    return ", ".join(shown) + f" and {len(recipients) - len(shown)} more"


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _size(count: int) -> str:
    return f"{count / 1024 / 1024:.1f} MB" if count >= 1024 * 1024 else f"{count / 1024:.0f} KB"
