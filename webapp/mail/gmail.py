"""The Gmail API: send mail with POST {endpoint}/gmail/v1/users/me/messages/send.

Signs in with a Google service account (domain-wide delegation: a JWT for the mailbox,
scope gmail.send) or with Google OAuth consent. check(): the token (for a service account
that is where the delegation is proven: Google refuses a token for a mailbox or scope it
was not granted), then the mailbox's profile. Reading the profile needs more than the
least scope gmail.send, so a 403 "insufficient scopes" there is a warning, not a failure.

send(): the stored message as it is (Gmail removes the Bcc header itself): as JSON {"raw":
base64url} while the request stays under Google's JSON limit (about 5 MB; above it Google's
front end answers 413), else through the upload endpoint (/upload/...?uploadType=media,
message/rfc822), which takes up to 35 MB
(https://developers.google.com/workspace/gmail/api/reference/rest/v1/users.messages/send);
a larger message is refused before anything is sent.

The From: Gmail replaces a From that is not the mailbox or one of its send-as aliases
(users.settings.sendAs: the "Send mail as" addresses) with the mailbox's address and reports
success all the same (googleapis/google-api-php-client#2393). Validate warns when the From
differs from the mailbox and checks the alias list when the token may read it
(users.settings.sendAs.list: gmail.settings.basic, gmail.readonly, gmail.modify or
mail.google.com). After a send with another From, the receipt reads the sent message's From
(users.messages.get, format=metadata: gmail.metadata, gmail.readonly, gmail.modify or
mail.google.com), or says it could not be checked.

Rate limits come as 403 userRateLimitExceeded / rateLimitExceeded / dailyLimitExceeded or 429,
the time to retry in the message ("Retry after 2026-12-06T10:00:00.000Z"), not in a header
(https://developers.google.com/workspace/gmail/api/guides/handle-errors): temporary, with that time.
"""
import base64
import re
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import getaddresses
from urllib.parse import quote

import requests

from . import proxy, smime
from .api import ApiCall, ApiConnection, Kept, accepted_all, json_of, retry_after, retry_seconds
from .deadline import DeadlineExceeded
from .egress import EgressRefused
from .envelope import Envelope
from .gmail_protocol import Gmail
from .report import DeliveryError, Outcome, Receipt, Report, Step, StepFailed, step_result

JSON_LIMIT = 5 * 1024 * 1024  # bytes of a JSON request Google takes
UPLOAD_LIMIT = 35 * 1024 * 1024  # bytes of a message through the upload endpoint
GMAIL = "https://www.googleapis.com/auth/gmail."
MAIL = "https://mail.google.com/"
SEND_AS_SCOPES = frozenset({MAIL, GMAIL + "modify", GMAIL + "readonly", GMAIL + "settings.basic"})
METADATA_SCOPES = frozenset({MAIL, GMAIL + "modify", GMAIL + "readonly", GMAIL + "metadata"})
RATE_LIMITS = frozenset({"userRateLimitExceeded", "rateLimitExceeded", "dailyLimitExceeded"})
RETRY_AT = re.compile(r"Retry after (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)")


class GmailCall(ApiCall):
    """An ApiCall that remembers the scopes the token was granted (what it may read besides sending)."""

    scopes: frozenset = frozenset()

    def bearer(self, may_send=None, grant: str = "") -> Step:
        step = super().bearer(may_send, grant)
        self.scopes = frozenset(dict(step.details).get("Scopes", "").split())  # auth.token_step names them
        return step


class GmailTransport(Gmail):
    """Gmail's sending code (the registry imports this module when a Gmail server is first checked or used)."""

    def check(self, config) -> Report:
        call = GmailCall(config)
        with call:
            if config.network.proxy is not None:
                call.run("Proxy", lambda: proxy.tunnel_step(config.network, config.settings.gmail_endpoint,
                                                            call.deadline))
            call.run("Token", lambda: call.bearer(may_send, GRANT_SEND))
            call.run("Mailbox", lambda: _profile(call))
            if not _same(config.sender.address, config.auth.username):
                call.run("From", lambda: _check_from(call))
        call.report.passed_summary = "Google gives a token for the mailbox and the Gmail API accepts it."
        return call.report

    def open(self, config) -> ApiConnection:
        return ApiConnection(self, config)

    def send(self, config, envelope: Envelope, kept: Kept | None = None) -> Receipt:
        call = GmailCall(config, kept)
        with call:
            envelope = replace(envelope, raw=smime.protected(call.run, config.smime, envelope.raw, envelope.recipients))
            call.run("Message", lambda: _prepare(envelope))
            call.run("Token", call.bearer)
            sent = call.run("messages.send", lambda: _send(call, envelope))
            author = _from_of(envelope)
            if not _same(author, config.auth.username):
                call.run("From", lambda: _used_from(call, sent, author))
        if not call.report.ok:
            raise DeliveryError(call.report)
        reply = sent.summary.split(": ", 1)[-1]
        return Receipt(reply=reply, message_id=envelope.message_id, report=call.report,
                       recipients=accepted_all(envelope, reply))


SENDING_SCOPES = frozenset({MAIL, *(f"{GMAIL}{name}" for name in ("send", "compose", "modify"))})
GRANT_SEND = ("use the scope https://www.googleapis.com/auth/gmail.send (for a service account, allow it for its "
              "client ID under Domain-wide delegation in the Workspace admin console)")


def may_send(scopes: tuple[str, ...]) -> bool:
    """Whether Google's granted scopes let messages.send through (Google names every scope in full)."""
    return any(scope in SENDING_SCOPES for scope in scopes)


def _url(config, suffix: str, upload: bool = False) -> str:
    root = config.settings.gmail_endpoint.rstrip("/")
    return f"{root}{'/upload' if upload else ''}/gmail/v1/users/me{suffix}"


def _same(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def _from_of(envelope: Envelope) -> str:
    found = getaddresses([str(v) for v in envelope.message().get_all("From", [])])
    return found[0][1] if found and found[0][1] else envelope.mail_from


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _json_size(envelope: Envelope) -> int:
    return 4 * -(-len(envelope.raw) // 3) + len('{"raw": ""}')


def _prepare(envelope: Envelope) -> Step:
    if not envelope.recipients:
        raise StepFailed("the message has no recipients", "add at least one To, Cc or Bcc address", temporary=False)
    if len(envelope.raw) > UPLOAD_LIMIT:
        raise StepFailed(f"the message is {_megabytes(len(envelope.raw))}: Gmail takes at most 35 MB",
                         "send a smaller message (fewer or smaller attachments)", temporary=False)
    how = "as JSON" if _json_size(envelope) <= JSON_LIMIT else "through the upload endpoint (over 5 MB as JSON)"
    return step_result(f"{len(envelope.recipients)} recipient(s), {max(1, len(envelope.raw) // 1024)} KB, sent {how}",
                       [("Message-ID", envelope.message_id), ("From", _from_of(envelope))])


def _profile(call: ApiCall):
    response = call.request("GET", _url(call.config, "/profile"), "read the mailbox profile")
    body = json_of(response)
    if response.status_code == 200:
        return step_result(f"the mailbox {body.get('emailAddress')} is a Gmail mailbox",
                           [("Messages", str(body.get("messagesTotal", "")))])
    if response.status_code == 403 and _reason(body) == "insufficientPermissions":
        return step_result("the token may not read the mailbox's profile (that needs more than gmail.send): "
                           "the token for the mailbox was granted, which is what sending needs",
                           outcome=Outcome.WARNING, hint="send a sample mail to be sure")
    raise explain(response, body, call.config.auth.username)


def _check_from(call: GmailCall) -> Step:
    """Is the configured From one Gmail will keep? The alias list says, where the token may read it."""
    address, mailbox = call.config.sender.address, call.config.auth.username
    replaced = (f"Gmail sends mail From {address} only if it is a verified “Send mail as” address of {mailbox}; "
                f"otherwise it puts {mailbox} in its place and reports success all the same")
    add_alias = (f"add {address} to {mailbox} under Gmail Settings → Accounts → “Send mail as” (or as the user's "
                 f"alias in the Workspace admin console), or make the From address {mailbox}")
    if not call.scopes & SEND_AS_SCOPES:
        return step_result(f"{replaced}. Whether it is could not be checked: reading the alias list needs the "
                           "scope gmail.settings.basic (or gmail.readonly)", outcome=Outcome.WARNING, hint=add_alias)
    response = call.request("GET", _url(call.config, "/settings/sendAs"), "read the send-as addresses")
    body = json_of(response)
    if response.status_code != 200:
        return step_result(f"{replaced}. The alias list could not be read ({response.status_code} "
                           f"{_reason(body)})".rstrip(), outcome=Outcome.WARNING, hint=add_alias)
    entries = [entry for entry in body.get("sendAs") or [] if isinstance(entry, dict)]
    entry = next((e for e in entries if _same(str(e.get("sendAsEmail", "")), address)), None)
    if entry is None:
        return step_result(f"{address} is not a “Send mail as” address of {mailbox}: Gmail will send mail From "
                           f"{mailbox} instead (and report success)", outcome=Outcome.WARNING, hint=add_alias,
                           details=[("Send-as addresses", ", ".join(str(e.get("sendAsEmail")) for e in entries))])
    if entry.get("verificationStatus") == "pending":
        return step_result(f"{address} is a “Send mail as” address of {mailbox} that is not verified yet: until it "
                           f"is, Gmail sends mail From {mailbox} instead", outcome=Outcome.WARNING,
                           hint=f"confirm the verification mail sent to {address}")
    return step_result(f"{address} is a “Send mail as” address of {mailbox}: Gmail keeps it as the From")


def _send(call: ApiCall, envelope: Envelope):
    if _json_size(envelope) <= JSON_LIMIT:
        raw = base64.urlsafe_b64encode(envelope.raw).decode("ascii")
        response = call.request("POST", _url(call.config, "/messages/send"), "messages.send", json={"raw": raw})
    else:
        response = call.request("POST", _url(call.config, "/messages/send", upload=True), "messages.send (upload)",
                                params={"uploadType": "media"}, data=envelope.raw,
                                headers={"Content-Type": "message/rfc822"})
    body = json_of(response)
    if response.status_code == 200:
        return step_result(f"Gmail accepted the message: 200 OK, id {body.get('id', '')}",
                           [("Id", str(body.get("id")))])
    raise explain(response, body, call.config.auth.username)


def _used_from(call: GmailCall, sent: Step, author: str) -> Step:
    """Which From Google sent the message with (the mail went: whatever happens here, it is no failure)."""
    mailbox = call.config.auth.username
    message_id = dict(sent.details).get("Id", "")
    if not call.scopes & METADATA_SCOPES or not message_id:
        words = (f"Which From Google used could not be checked (reading the sent message needs the scope "
                 f"gmail.metadata or gmail.readonly): unless {author} is a verified “Send mail as” address of "
                 f"{mailbox}, the mail went From {mailbox}.")
        call.report.notes.append(words)
        return step_result(words, outcome=Outcome.WARNING)
    try:
        response = call.request("GET", _url(call.config, f"/messages/{quote(message_id, safe='')}"),
                                "read the sent message's From",
                                params={"format": "metadata", "metadataHeaders": "From"})
    except (requests.RequestException, DeadlineExceeded, EgressRefused) as error:
        words = f"Which From Google used could not be checked: {type(error).__name__}."
        call.report.notes.append(words)
        return step_result(words, outcome=Outcome.WARNING)
    headers = ((json_of(response).get("payload") or {}).get("headers") or []) if response.status_code == 200 else []
    used = next((str(h.get("value", "")) for h in headers if isinstance(h, dict)
                 and str(h.get("name", "")).lower() == "from"), "")
    used_address = (getaddresses([used]) or [("", "")])[0][1]
    if not used_address:
        words = f"Which From Google used could not be checked (Gmail answered {response.status_code})."
        call.report.notes.append(words)
        return step_result(words, outcome=Outcome.WARNING)
    if _same(used_address, author):
        call.report.notes.append(f"Google sent it From {used}.")
        return step_result(f"Google sent it From {used}", [("From", used)])
    words = (f"Google replaced the From {author} with {used_address}: {author} is not a verified “Send mail as” "
             f"address of {mailbox}.")
    call.report.notes.append(words)
    return step_result(words, [("From", used)], outcome=Outcome.WARNING,
                       hint=f"add {author} to {mailbox} under Gmail Settings → Accounts → “Send mail as”")


def _reason(body: dict) -> str:
    error = body.get("error")
    if not isinstance(error, dict):
        return ""
    errors = error.get("errors") or [{}]
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    return str(first.get("reason") or error.get("status") or "")


def _retry_seconds(message: str, response) -> float | None:
    """Google's time to retry, from its message ("Retry after 2026-12-06T10:00:00.000Z"), else Retry-After."""
    match = RETRY_AT.search(message)
    if match:
        when = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return retry_seconds(response)


def explain(response, body: dict, mailbox: str) -> StepFailed:
    """A Gmail API error in words. `credentials=True` where only an admin can fix the server's side (a token, a
    scope, the delegation, the mailbox): the delivery queue holds the mail instead of retrying it."""
    status, reason = response.status_code, _reason(body)
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    message = str(error.get("message", ""))
    details = [("Gmail error", f"{status} {error.get('status', '')} {reason}: {message}".strip())]
    if status == 429 or (status == 403 and reason in RATE_LIMITS):
        wait = _retry_seconds(message, response)
        when = f"after {round(wait)} s" if wait is not None else "later"
        if reason == "dailyLimitExceeded":
            return StepFailed(f"the mailbox {mailbox} reached Google's daily sending limit ({status} {reason})",
                              "mail goes again when Google's daily limit resets (within 24 hours); Google Workspace "
                              "allows about 2,000 messages a day per user", details, code=status, retry_after=wait,
                              throttled=True)
        return StepFailed(f"Google is limiting how fast {mailbox} may send ({status} {reason})"
                          f"{', retry ' + when if wait is not None else ''}",
                          f"try again {when}: the Gmail API limits each mailbox's sending rate", details, code=status,
                          retry_after=wait, throttled=True)
    if status == 401:
        return StepFailed(f"the Gmail API refused the token (401 {reason})",
                          "re-authorize, or check the service account's key", details, code=status, credentials=True)
    if status == 403 and message.startswith("Delegation denied"):
        return StepFailed(f"the token may not act for {mailbox} (403: {message})",
                          "the mailbox must be the one the token was made for", details, code=status,
                          credentials=True)
    if status == 403:
        return StepFailed(f"the Gmail API refused: {message} (403 {reason})",
                          "the scope must include gmail.send; for a service account, the Workspace admin must "
                          "allow that scope for its client ID (domain-wide delegation)", details, code=status,
                          credentials=True)
    if status == 400 and reason == "failedPrecondition":
        # The server's mailbox or delegation is wrong: every message fails the same way until an admin fixes it.
        return StepFailed(f"{mailbox} has no Gmail mailbox, or the service account may not act for it "
                          "(400 Precondition check failed)",
                          "check the mailbox's address, that it is a Google Workspace user with Gmail, and the "
                          "domain-wide delegation", details, code=status, temporary=False, credentials=True)
    if status == 413:
        return StepFailed("the message is larger than Gmail accepts (413)", "send a smaller message", details,
                          code=status, temporary=False)
    if status == 400:
        return StepFailed(f"Gmail refused the message (400): {message}", "check the recipients", details,
                          code=status, temporary=False)
    wait = retry_after(response)
    return StepFailed(f"the Gmail API answered {status} {reason}".strip(),
                      f"try again {'after ' + wait if wait else 'later'}", details, code=status,
                      temporary=status >= 500 or status == 408, retry_after=retry_seconds(response))
