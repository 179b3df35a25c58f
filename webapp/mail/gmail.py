"""The Gmail API: send mail with POST {endpoint}/gmail/v1/users/me/messages/send {"raw": ...}.

Signs in with a Google service account (domain-wide delegation: a JWT for the mailbox,
scope gmail.send) or with Google OAuth consent. check(): the token (for a service account
that is where the delegation is proven: Google refuses a token for a mailbox or scope it
was not granted), then the mailbox's profile. Reading the profile needs more than the
least scope gmail.send, so a 403 "insufficient scopes" there is a warning, not a failure.
send(): the whole message, base64url; Gmail removes the Bcc header itself.
"""
import base64
from dataclasses import asdict, dataclass, fields
from .api import ApiCall, accepted_all, json_of, retry_after, retry_seconds
from .auth import AuthType
from .envelope import Envelope
from .oauth import Flow, Provider
from .report import DeliveryError, Outcome, Receipt, Report, StepFailed, step_result
from .transport import register

ENDPOINT = "https://gmail.googleapis.com"


@dataclass(frozen=True)
class GmailSettings:
    gmail_endpoint: str = ENDPOINT

    @classmethod
    def from_dict(cls, values: dict) -> "GmailSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v})

    def to_dict(self) -> dict:
        return asdict(self)

    def destination(self) -> dict:
        return {"protocol": "gmail", "endpoint": self.gmail_endpoint.strip().rstrip("/").lower()}

    @property
    def address(self) -> str:
        return self.gmail_endpoint


@register
class GmailTransport:
    protocol = "gmail"
    label = "Gmail API"
    settings_type = GmailSettings
    auth_types = (AuthType.SERVICE_ACCOUNT, AuthType.OAUTH)
    mechanisms: dict = {}
    oauth_flows = (Flow.DELEGATED,)
    oauth_providers = (Provider.GOOGLE, Provider.OTHER)

    def check(self, config) -> Report:
        call = ApiCall(config)
        with call:
            call.run("Token", lambda: call.bearer(may_send, GRANT_SEND))
            call.run("Mailbox", lambda: _profile(call))
        call.report.passed_summary = "Google gives a token for the mailbox and the Gmail API accepts it."
        return call.report

    def send(self, config, envelope: Envelope) -> Receipt:
        call = ApiCall(config)
        with call:
            call.run("Token", call.bearer)
            sent = call.run("messages.send", lambda: _send(call, envelope))
        if not call.report.ok:
            raise DeliveryError(call.report)
        reply = sent.summary.split(": ", 1)[-1]
        return Receipt(reply=reply, message_id=envelope.message_id, report=call.report,
                       recipients=accepted_all(envelope, reply))


SENDING_SCOPES = frozenset({"https://mail.google.com/", *(f"https://www.googleapis.com/auth/gmail.{name}"
                                                         for name in ("send", "compose", "modify"))})
GRANT_SEND = ("use the scope https://www.googleapis.com/auth/gmail.send (for a service account, allow it for its "
              "client ID under Domain-wide delegation in the Workspace admin console)")


def may_send(scopes: tuple[str, ...]) -> bool:
    """Whether Google's granted scopes let messages.send through (Google names every scope in full)."""
    return any(scope in SENDING_SCOPES for scope in scopes)


def _url(config, suffix: str) -> str:
    return f"{config.settings.gmail_endpoint.rstrip('/')}/gmail/v1/users/me{suffix}"


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


def _send(call: ApiCall, envelope: Envelope):
    if not envelope.recipients:
        raise StepFailed("the message has no recipients", "add at least one To, Cc or Bcc address", temporary=False)
    raw = base64.urlsafe_b64encode(envelope.raw).decode("ascii")
    response = call.request("POST", _url(call.config, "/messages/send"), "messages.send", json={"raw": raw})
    body = json_of(response)
    if response.status_code == 200:
        return step_result(f"Gmail accepted the message: 200 OK, id {body.get('id', '')}")
    raise explain(response, body, call.config.auth.username)


def _reason(body: dict) -> str:
    error = body.get("error")
    if not isinstance(error, dict):
        return ""
    errors = error.get("errors") or [{}]
    return str(errors[0].get("reason") or error.get("status") or "")


def explain(response, body: dict, mailbox: str) -> StepFailed:
    status, reason = response.status_code, _reason(body)
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    message = str(error.get("message", ""))
    details = [("Gmail error", f"{status} {error.get('status', '')} {reason}: {message}".strip())]
    if status == 401:
        return StepFailed(f"the Gmail API refused the token (401 {reason})",
                          "re-authorize, or check the service account's key", details, code=status, credentials=True)
    if status == 403 and message.startswith("Delegation denied"):
        return StepFailed(f"the token may not act for {mailbox} (403: {message})",
                          "the mailbox must be the one the token was made for", details, code=status)
    if status == 403:
        return StepFailed(f"the Gmail API refused: {message} (403 {reason})",
                          "the scope must include gmail.send; for a service account, the Workspace admin must "
                          "allow that scope for its client ID (domain-wide delegation)", details, code=status)
    if status == 400 and reason == "failedPrecondition":
        return StepFailed(f"{mailbox} has no Gmail mailbox, or the service account may not act for it "
                          "(400 Precondition check failed)",
                          "check the mailbox's address, that it is a Google Workspace user with Gmail, and the "
                          "domain-wide delegation", details, code=status, temporary=False)
    if status == 429:
        wait = retry_after(response)
        return StepFailed(f"the Gmail API is limiting this mailbox (429){' for ' + wait if wait else ''}",
                          f"try again {'after ' + wait if wait else 'later'}", details, code=status,
                          retry_after=retry_seconds(response))
    if status == 400:
        return StepFailed(f"Gmail refused the message (400): {message}", "check the recipients", details,
                          code=status, temporary=False)
    return StepFailed(f"the Gmail API answered {status} {reason}".strip(), "try again later", details, code=status,
                      temporary=status >= 500)
