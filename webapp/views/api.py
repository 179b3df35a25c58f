"""The HTTP API (/api/v1): hand a message in, read what became of it.

A request is authorized by a portal's API key (`Authorization: Bearer <key>`) and by nothing
else: it has no session, reads and sets no cookie, needs no CSRF token and has no Origin check
(sessions.sessionless). Every answer is JSON; every refusal is {"error": {"code", "message",
"field"}}. Bodies are validated by the pydantic models of `outbox` and of this module, from which
the OpenAPI 3.1 description (GET /api/v1/openapi.json) is built too.
"""
import json
from datetime import UTC, datetime
from functools import cache
from flask import Blueprint, current_app, g, request, url_for
from flask_limiter.errors import RateLimitExceeded
from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import models_json_schema
from sqlalchemy.exc import InternalError, OperationalError
from sqlmodel import select
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .. import apikeys, db, outbox
from ..limits import limiter
from ..models import MAX_ID, DeliveryAttempt, MailState, OutboundMail, Portal
from ..outbox import Refused, Source, Submission, Submitter
from ..security import SLUG
from ..sessions import SESSIONLESS_PATH

bp = Blueprint("api", __name__, url_prefix=SESSIONLESS_PATH + "v1")


# -- what the API answers ------------------------------------------------------------------------------

class ErrorDetail(BaseModel):
    code: str = Field(description="what went wrong, for programs: invalid, unauthorized, too_large, ...")
    message: str = Field(description="what went wrong, in words")
    field: str | None = Field(description="the part of the request at fault: a JSON path such as to[1] or "
                                          "attachments[0].content, or a header such as Authorization")


class ErrorBody(BaseModel):
    error: ErrorDetail


class RecipientStatus(BaseModel):
    address: str
    status: str = Field(description="pending, sent or failed (refused for good)")
    code: int | None = Field(description="the server's reply code for this recipient, once known")
    reply: str = Field(description="the server's reply for this recipient, once known")


class AttemptStatus(BaseModel):
    at: datetime
    server: str = Field(description="the mail server tried, as the portal names it")
    outcome: str = Field(description="sent, deferred (tried again later), failed or held (credentials refused)")
    code: int | None
    reply: str = Field(description="the server's reply, or what went wrong, in words")


class MessageStatus(BaseModel):
    id: int
    status: MailState = Field(
        description="queued: waiting for its next attempt; sending: being sent; held: the server refused its "
                    "credentials, waits until they are fixed; sent; failed: refused for good or too old")
    message_id: str = Field(description="the Message-ID header, the same on every attempt")
    mail_from: str = Field(description="the envelope sender")
    subject: str
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="when it is tried next (queued messages)")
    expires_at: datetime | None = Field(description="it fails if it is not sent by then")
    sent_at: datetime | None
    last_error: str
    recipients: list[RecipientStatus]
    attempts: list[AttemptStatus]


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes: they are UTC."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _status(mail: OutboundMail, read_attempts: bool = True) -> MessageStatus:
    """`read_attempts=False`: a message this request stored has none yet (no read)."""
    attempts = db.session().exec(select(DeliveryAttempt).where(DeliveryAttempt.mail_id == mail.id)
                                 .order_by(DeliveryAttempt.at, DeliveryAttempt.id)).all() if read_attempts else []
    return MessageStatus(
        id=mail.id, status=mail.state, message_id=mail.message_id, mail_from=mail.mail_from, subject=mail.subject,
        created_at=_utc(mail.created_at), sent_at=_utc(mail.sent_at), expires_at=_utc(mail.expires_at),
        next_attempt_at=_utc(mail.next_attempt_at) if mail.state in (MailState.QUEUED, MailState.HELD) else None,
        last_error=mail.last_error,
        recipients=[RecipientStatus(address=r["address"], status=r.get("state", "pending"), code=r.get("code"),
                                    reply=r.get("reply") or "") for r in mail.recipients],
        attempts=[AttemptStatus(at=_utc(a.at), server=a.server_label, outcome=a.outcome, code=a.code, reply=a.reply)
                  for a in attempts])


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.body = status, ErrorBody(error=ErrorDetail(code=code, message=message, field=field))


def _answer(model: BaseModel, status: int, **headers):
    response = current_app.response_class(model.model_dump_json(), status=status, mimetype="application/json")
    response.headers.update(headers)
    return response


# -- who is asking ------------------------------------------------------------------------------------

BEARER_REALM = 'Bearer realm="Mailroom API"'


@bp.before_request
def _authorize():
    """Every route but the description needs a live key of the portal named in the path."""
    if request.endpoint == "api.openapi" or request.view_args is None:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send an API key of the portal as “Authorization: Bearer <key>” "
                                            "(an admin creates one under the portal's API keys)", "Authorization")
    found = apikeys.authenticate(token.strip())
    if found is None:
        raise ApiError(401, "invalid_key", "this API key is unknown or revoked", "Authorization")
    key, portal = found
    slug = request.view_args.get("slug", "")
    if portal.slug != slug:
        if not SLUG.fullmatch(slug) or db.session().exec(select(Portal.id).where(Portal.slug == slug)).first() is None:
            raise ApiError(404, "unknown_portal", f"there is no portal {slug!r}", "slug")
        raise ApiError(401, "invalid_key", f"this API key is not a key of the portal {slug!r}", "Authorization")
    apikeys.note_use(key)
    g.api_key, g.api_portal = key, portal


def _key_of_request() -> str:
    """Counts per key, named by its hash (an id can come back after a key is deleted)."""
    return f"api-key:{g.api_key.key_hash[:16]}"


per_key = limiter.shared_limit(lambda: current_app.config["API_LIMIT_PER_KEY"], scope="api-key",
                               key_func=_key_of_request)


# -- the routes ---------------------------------------------------------------------------------------

@bp.post("/portals/<slug>/messages")
@per_key
def submit(slug):
    """Hand a message in: 202 with its status once it is stored (committed), queued for delivery."""
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the message as JSON (Content-Type: application/json)",
                       "Content-Type")
    try:
        submission = Submission.model_validate_json(_body() or b"null")
    except ValidationError as error:
        raise _invalid(error) from None
    key, portal = g.api_key, g.api_portal
    submitter = Submitter(Source.API, key.name, request.remote_addr or "", key.id, key.owner_id)
    idempotency_key = _idempotency_key()
    try:
        mail = outbox.submit(portal, submission, submitter, idempotency_key)
    except Refused as refused:
        raise ApiError(refused.status, refused.code, refused.message, refused.field) from None
    location = url_for("api.message", slug=slug, message_id=mail.id)
    # without an Idempotency-Key the message is the one just stored: its status as committed, no attempt yet
    return _answer(_status(mail, read_attempts=idempotency_key is not None), 202, Location=location)


@bp.get("/portals/<slug>/messages/<id:message_id>")
@per_key
def message(slug, message_id):
    """A message handed in: its state, each recipient's outcome and every attempt."""
    mail = db.session().exec(select(OutboundMail).where(
        OutboundMail.id == message_id, OutboundMail.portal_id == g.api_portal.id)).first()
    if mail is None:
        raise ApiError(404, "not_found", f"this portal has no message {message_id}", "message_id")
    return _answer(_status(mail), 200)


@bp.get("/openapi.json")
def openapi():
    return current_app.response_class(openapi_json(), mimetype="application/json")


def _body() -> bytes:
    """The request's body, up to API_REQUEST_MAX_BYTES: beyond that 413, declared or chunked (never cut short)."""
    limit = current_app.config["API_REQUEST_MAX_BYTES"]
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    chunks, size = [], 0
    while size <= limit:
        chunk = request.stream.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise RequestEntityTooLarge()
    return b"".join(chunks)


def _idempotency_key() -> str | None:
    """As sent, or as an RFC 8941 string ("…"), as the IETF draft writes it."""
    value = request.headers.get(outbox.IDEMPOTENCY_HEADER)
    if value is None:
        return None
    value = value.strip()
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def _invalid(error: ValidationError) -> ApiError:
    first = error.errors(include_url=False)[0]
    field = outbox.error_field(first)
    if first["type"] == "json_invalid":
        return ApiError(400, "invalid_json", f"the body is not JSON: {first['ctx'].get('error', '')}".rstrip(": "))
    if first["type"] == "model_type":
        return ApiError(422, "invalid", "the body is a JSON object (e.g. {\"to\": [...], \"text\": ...})")
    message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
    return ApiError(422, "invalid", f"{field}: {message}" if field else message, field or None)


# -- refusals as JSON ---------------------------------------------------------------------------------

@bp.errorhandler(ApiError)
def _api_error(error: ApiError):
    headers = {"WWW-Authenticate": BEARER_REALM + (', error="invalid_token"' if error.body.error.code == "invalid_key"
                                                   else "")} if error.status == 401 else {}
    return _answer(error.body, error.status, **headers)


@bp.errorhandler(RateLimitExceeded)
def _too_many(error: RateLimitExceeded):
    return _answer(ErrorBody(error=ErrorDetail(
        code="rate_limited", message=f"too many requests with this key ({error.description}): wait, then try again",
        field="Authorization")), 429)


@bp.errorhandler(OperationalError)
@bp.errorhandler(InternalError)
def _database_unwritable(error):
    db.session().rollback()
    current_app.logger.error("the database refused an API request to %s: %s", request.path,
                             str(error.orig).splitlines()[0] if error.orig else error)
    return _answer(ErrorBody(error=ErrorDetail(
        code="unavailable", message="Mailroom cannot use its database right now; nothing was stored: try again "
                                    "in a moment", field=None)), 503, **{"Retry-After": "5"})


HTTP_FIELDS = {413: "body", 415: "Content-Type"}


def http_error(error: HTTPException):
    """Any other HTTP error on an API path (an unknown route, a wrong method, a body too large) as JSON."""
    code = "too_large" if error.code == 413 else (error.name or "error").lower().replace(" ", "_")
    message = ("the request is larger than the API accepts "
               f"({current_app.config['API_REQUEST_MAX_BYTES'] // 1024 // 1024} MB)" if error.code == 413
               else error.description or error.name)
    response = _answer(ErrorBody(error=ErrorDetail(code=code, message=message, field=HTTP_FIELDS.get(error.code))),
                       error.code or 500)
    if error.code == 405 and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


# -- the description ----------------------------------------------------------------------------------

ERRORS = {
    "400": "The body is not JSON.",
    "401": "No API key, or one that is unknown, revoked or of another portal (see WWW-Authenticate).",
    "404": "No such portal or message.",
    "413": "The request, the attachments or the message is larger than Mailroom accepts.",
    "415": "The body is not application/json.",
    "422": "A field is not valid (the error names it), or the Idempotency-Key was used for another message.",
    "429": "Too many requests with this key: wait for Retry-After seconds.",
    "503": "The database is busy: nothing was stored; try again.",
}


@cache
def openapi_json() -> str:
    _, schemas = models_json_schema(
        [(Submission, "validation"), (MessageStatus, "serialization"), (ErrorBody, "serialization")],
        ref_template="#/components/schemas/{model}")

    def error(*codes):
        return {code: {"description": ERRORS[code], "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorBody"}}}} for code in codes}

    status = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/MessageStatus"}}}}
    slug = {"name": "slug", "in": "path", "required": True, "description": "the portal's slug",
            "schema": {"type": "string", "pattern": SLUG.pattern}}
    document = {
        "openapi": "3.1.0",
        "info": {"title": "Mailroom API", "version": "1",
                 "description": "Hand mail to a portal of Mailroom, which delivers it through the portal's mail "
                                "servers. Authorize with an API key of the portal (its admins create keys under "
                                "API keys)."},
        "paths": {
            "/api/v1/portals/{slug}/messages": {"post": {
                "operationId": "submitMessage", "summary": "Hand a message in",
                "description": "Answers 202 once the message is stored; it is then delivered by Mailroom's worker.",
                "parameters": [slug, {
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "The same key with the same message returns the message stored the first time; "
                                   "with another message it is refused (422).",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]+$"}}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Submission"}}}},
                "responses": {"202": {**status, "description": "Stored and queued.", "headers": {
                    "Location": {"description": "where to read its status", "schema": {"type": "string"}}}},
                    **error("400", "401", "404", "413", "415", "422", "429", "503")},
            }},
            "/api/v1/portals/{slug}/messages/{message_id}": {"get": {
                "operationId": "getMessage", "summary": "What became of a message",
                "parameters": [slug, {"name": "message_id", "in": "path", "required": True,
                                      "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}],
                "responses": {"200": {**status, "description": "Its state, recipients and attempts."},
                              **error("401", "404", "429", "503")},
            }},
        },
        "components": {"schemas": schemas["$defs"],
                       "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                                      "description": "an API key of the portal"}}},
        "security": [{"apiKey": []}],
    }
    return json.dumps(document, indent=1)
