"""Microsoft Graph: send mail with POST {endpoint}/v1.0/users/{mailbox}/sendMail (OAuth only).

check(): the token (delegated Mail.Send / Mail.Send.Shared, or app-only /.default with the
Mail.Send application permission), then the mailbox read with GET /users/{mailbox}. Graph
lets nothing prove Mail.Send short of sending, so a token that may not read the mailbox's
profile is a warning, not a failure; a missing mailbox or a refused token fail.

send(): the message as Graph's JSON (subject, text body, recipients, reply-to,
importance, the X- headers of the settings as internetMessageHeaders, the Message-ID);
202 Accepted is success.
"""
import re
from dataclasses import asdict, dataclass, fields
from email.message import EmailMessage
from email.utils import getaddresses
from urllib.parse import quote

from .api import ApiCall, accepted_all, json_of, retry_after, retry_seconds
from .auth import AuthType
from .envelope import Envelope
from .oauth import CLOUDS, Cloud, Flow, Provider
from .report import DeliveryError, Outcome, Receipt, Report, StepFailed, step_result
from .transport import register

GLOBAL_ENDPOINT = CLOUDS[Cloud.GLOBAL][1]
IMPORTANCES = ("low", "normal", "high")
MAX_HEADERS = 5
HEADER_LINE = re.compile(r"^(X-[A-Za-z0-9-]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)$", re.IGNORECASE | re.ASCII)


@dataclass(frozen=True)
class GraphSettings:
    graph_endpoint: str = GLOBAL_ENDPOINT  # the Graph root of the Microsoft cloud
    shared_mailbox: str = ""  # send as this mailbox instead of the OAuth mailbox (Mail.Send.Shared / app-only)
    save_to_sent: bool = True
    importance: str = "normal"
    headers: str = ""  # "X-Name: value", one per line, at most five

    @classmethod
    def from_dict(cls, values: dict) -> "GraphSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})

    def to_dict(self) -> dict:
        return asdict(self)

    def destination(self) -> dict:
        return {"protocol": "graph", "endpoint": self.graph_endpoint.strip().rstrip("/").lower()}

    @property
    def address(self) -> str:
        return self.graph_endpoint

    def header_list(self) -> list[dict]:
        return [{"name": m.group(1), "value": m.group(2).strip()}
                for m in (HEADER_LINE.match(line.strip()) for line in self.headers.splitlines() if line.strip()) if m]


def _shown(line: str) -> str:
    return "".join(ch if ch.isprintable() else "�" for ch in line)


def parse_headers(text: str) -> list[str]:
    """Errors of a custom-header list, in words (empty: fine)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    errors = [f"“{_shown(line)}”: a header is written Name: value, its name starts with X- (Graph allows only "
              "those) and its value holds no control characters" for line in lines if not HEADER_LINE.match(line)]
    if len(lines) > MAX_HEADERS:
        errors.append(f"Graph takes at most {MAX_HEADERS} custom headers; there are {len(lines)}")
    return errors


@register
class GraphTransport:
    protocol = "graph"
    label = "Microsoft Graph"
    settings_type = GraphSettings
    auth_types = (AuthType.OAUTH,)
    mechanisms: dict = {}
    oauth_flows = (Flow.DELEGATED, Flow.APP)
    oauth_providers = (Provider.MICROSOFT, Provider.OTHER)

    def check(self, config) -> Report:
        call = ApiCall(config)
        with call:
            call.run("Token", lambda: call.bearer(may_send, GRANT_SEND))
            call.run("Mailbox", lambda: _read_mailbox(call))
        call.report.passed_summary = "Microsoft Graph accepts the token and knows the mailbox."
        return call.report

    def send(self, config, envelope: Envelope) -> Receipt:
        call = ApiCall(config)
        message, message_id = envelope.message(), envelope.message_id
        payload: dict = {}

        def build():
            payload.update(_payload(config, message, message_id))
            count = sum(len(payload["message"][k]) for k in ("toRecipients", "ccRecipients", "bccRecipients"))
            return step_result(f"{count} recipient(s); saved to Sent Items: "
                               f"{'yes' if payload['saveToSentItems'] else 'no'}", [("Message-ID", str(message_id))])

        with call:
            call.run("Message", build)
            call.run("Token", call.bearer)
            call.run("sendMail", lambda: _send(call, payload))
        if not call.report.ok:
            raise DeliveryError(call.report)
        return Receipt(reply="202 Accepted", message_id=str(message_id), report=call.report,
                       recipients=accepted_all(envelope, "202 Accepted"))


GRANT_SEND = ("add the delegated permission Mail.Send (Mail.Send.Shared to send as a shared mailbox) to the app in "
              "Microsoft Entra ID, put it in the scope, then authorize again")


def may_send(scopes: tuple[str, ...]) -> bool | None:
    """Delegated tokens name their scopes (Mail.Send, or https://graph.microsoft.com/Mail.Send); an
    app-only token's /.default says nothing of its application permissions."""
    names = {scope.rsplit("/", 1)[-1].lower() for scope in scopes}
    if ".default" in names:
        return None
    return bool(names & {"mail.send", "mail.send.shared"})


def mailbox_of(config) -> str:
    return config.settings.shared_mailbox.strip() or config.auth.username


def _users_url(config, suffix: str = "") -> str:
    return f"{config.settings.graph_endpoint.rstrip('/')}/v1.0/users/{quote(mailbox_of(config), safe='@')}{suffix}"


def _read_mailbox(call: ApiCall):
    response = call.request("GET", _users_url(call.config), "read the mailbox",
                            params={"$select": "id,displayName,mail,userPrincipalName"})
    body = json_of(response)
    if response.status_code == 200:
        return step_result(f"the mailbox {body.get('mail') or body.get('userPrincipalName')} exists",
                           [("Display name", str(body.get("displayName") or "")), ("Id", str(body.get("id") or ""))])
    if response.status_code == 403 and _code(body) == "Authorization_RequestDenied":
        return step_result("the token may not read the mailbox's profile: that needs User.Read.All, which sending "
                           "does not; whether Mail.Send is granted shows only when a mail is sent",
                           outcome=Outcome.WARNING,
                           hint="send a sample mail to be sure; or grant User.Read.All to see the mailbox here")
    raise explain(response, body, mailbox_of(call.config))


def _payload(config, message: EmailMessage, message_id: str) -> dict:
    body = {"message": {
        "subject": str(message["Subject"] or ""),
        "body": {"contentType": "Text", "content": _text(message)},
        "toRecipients": _recipients(message, "To"), "ccRecipients": _recipients(message, "Cc"),
        "bccRecipients": _recipients(message, "Bcc"), "replyTo": _recipients(message, "Reply-To"),
        "importance": config.settings.importance if config.settings.importance in IMPORTANCES else "normal",
        "internetMessageId": str(message_id),
    }, "saveToSentItems": bool(config.settings.save_to_sent)}
    headers = config.settings.header_list()
    if headers:  # never an empty list: Graph refuses it
        body["message"]["internetMessageHeaders"] = headers[:MAX_HEADERS]
    if config.sender.name or config.settings.shared_mailbox:
        body["message"]["from"] = {"emailAddress": {"address": config.sender.address, "name": config.sender.name}}
    if not any(body["message"][k] for k in ("toRecipients", "ccRecipients", "bccRecipients")):
        raise StepFailed("the message has no recipients", "add at least one To, Cc or Bcc address", temporary=False)
    return body


def _send(call: ApiCall, body: dict):
    response = call.request("POST", _users_url(call.config, "/sendMail"), "sendMail", json=body)
    if response.status_code == 202:
        return step_result("Microsoft Graph accepted the message for delivery (202 Accepted)")
    raise explain(response, json_of(response), mailbox_of(call.config))


def _recipients(message: EmailMessage, header: str) -> list[dict]:
    values = [str(v) for v in message.get_all(header, [])]
    return [{"emailAddress": {"address": address, **({"name": name} if name else {})}}
            for name, address in getaddresses(values) if address]


def _text(message: EmailMessage) -> str:
    part = message.get_body(("plain",)) if message.is_multipart() else message
    return part.get_content() if part is not None else ""


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or "mailroom.invalid"


def _code(body: dict) -> str:
    error = body.get("error")
    return str(error.get("code", "")) if isinstance(error, dict) else ""


def explain(response, body: dict, mailbox: str) -> StepFailed:
    """A Graph error in words, with what to do (Graph's own code and message kept in the details)."""
    status, code = response.status_code, _code(body)
    message = str((body.get("error") or {}).get("message", "")) if isinstance(body.get("error"), dict) else ""
    details = [("Graph error", f"{status} {code}: {message}".strip())]
    if status == 401:
        return StepFailed(f"Microsoft Graph refused the token (401 {code})",
                          "re-authorize; check that the token is for Microsoft Graph (the scope Mail.Send or "
                          "https://graph.microsoft.com/.default) and that the Graph endpoint matches the cloud",
                          details, code=status, credentials=True)
    if status == 403:
        return StepFailed(f"the app may not send as {mailbox} (403 {code})",
                          "app-only: grant the Mail.Send application permission with admin consent (an "
                          "application access policy may also restrict the mailboxes). Delegated: the consenting "
                          "user can send only as themselves, unless the mailbox is shared with them and the scope "
                          "is Mail.Send.Shared", details, code=status)
    if status == 404:
        return StepFailed(f"Microsoft Graph knows no mailbox {mailbox} (404 {code})",
                          "check the mailbox's address (its user principal name or object id)", details,
                          code=status, temporary=False)
    if status == 429:
        wait = retry_after(response)
        return StepFailed(f"Microsoft Graph is throttling this app (429){' for ' + wait if wait else ''}",
                          f"try again {'after ' + wait if wait else 'in a minute'}: Graph limits how fast one app "
                          "may send from one mailbox", details, code=status, retry_after=retry_seconds(response))
    if status == 413:
        return StepFailed("the message is larger than Graph accepts (about 4 MB)", "send a smaller message",
                          details, code=status, temporary=False)
    if status == 400:
        return StepFailed(f"Microsoft Graph refused the message (400 {code}): {message}",
                          "check the recipients and the custom headers (names must start with X-, at most five)",
                          details, code=status, temporary=False)
    return StepFailed(f"Microsoft Graph answered {status} {code}".strip(), "try again later; if it persists, see "
                      "the details", details, code=status, temporary=status >= 500)
