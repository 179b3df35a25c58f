"""Microsoft Graph: send mail with POST {endpoint}/v1.0/users/{mailbox}/sendMail (OAuth only).

check(): the token (delegated Mail.Send / Mail.Send.Shared, or app-only /.default with the
Mail.Send application permission), then the mailbox read with GET /users/{mailbox}. Graph
lets nothing prove Mail.Send short of sending, so a token that may not read the mailbox's
profile is a warning, not a failure; a missing mailbox or a refused token fail. A From address
other than the one who sends is a warning: Graph takes it only with Send As or Send on Behalf.

send(): the stored message itself, in Graph's MIME form
(https://learn.microsoft.com/graph/outlook-send-mime-message, and user: sendMail's "send a new
message using MIME format"): the body of the POST is the base64 of the message's bytes with
Content-Type text/plain; 202 Accepted is success. So HTML, attachments, the From, Reply-To and
every header go as they do over SMTP, EWS and the Gmail API. What the MIME form implies:

- Recipients are the message's To, Cc and Bcc; Exchange delivers the Bcc recipients without
  the Bcc header, as it does for a message sent from Outlook.
- Graph's JSON parameter saveToSentItems does not exist for MIME: a copy is always saved to
  the mailbox's Sent Items (microsoftgraph/microsoft-graph-docs#18698), hence no setting for it.
- A request is at most 4 MB (https://learn.microsoft.com/graph/outlook-large-attachments:
  "Microsoft Graph has a 4-MB request size limit"); base64 makes 3 bytes 4, so the message may
  have about 3 MB. A larger one is refused here, before anything is sent, for good.
- The From is the message's own; Exchange checks that the one sending (the signed-in user, or
  for app-only the mailbox in the URL) may send as it: else 403 ErrorSendAsDenied
  (https://learn.microsoft.com/graph/outlook-send-mail-from-other-user).
- The server's message options (mail/options.py: importance, sensitivity, receipts, custom
  headers) arrive as headers of the message (transport.outgoing()); Exchange's MIME reader maps
  them to the message's own properties ([MS-OXCMAIL]). The rules of JSON's internetMessageHeaders
  (X- names, at most five) are the JSON form's and do not apply to MIME.
"""
import base64
from email.utils import getaddresses
from urllib.parse import quote

from . import proxy, smime
from .api import ApiCall, ApiConnection, Kept, accepted_all, json_of, retry_after, retry_seconds
from .auth import BearerAuth
from .envelope import Envelope
from .graph_protocol import Graph
from .report import DeliveryError, Outcome, Receipt, Report, Step, StepFailed, step_result

MAX_REQUEST = 4 * 1024 * 1024  # bytes of one Graph request


class GraphTransport(Graph):
    """Graph's sending code (the registry imports this module when a Graph server is first checked or used)."""

    def check(self, config) -> Report:
        call = ApiCall(config)
        with call:
            if config.network.proxy is not None:
                call.run("Proxy", lambda: proxy.tunnel_step(config.network, config.settings.graph_endpoint,
                                                            call.deadline))
            call.run("Token", lambda: call.bearer(may_send, GRANT_SEND))
            call.run("Mailbox", lambda: _read_mailbox(call))
            if not _same(config.sender.address, sender_of(config)):
                call.run("From", lambda: _from_warning(config))
        call.report.passed_summary = "Microsoft Graph accepts the token and knows the mailbox."
        return call.report

    def open(self, config) -> ApiConnection:
        return ApiConnection(self, config)

    def send(self, config, envelope: Envelope, kept: Kept | None = None) -> Receipt:
        call = ApiCall(config, kept)
        body = bytearray()
        mime = b""

        def prepare() -> Step:
            if not envelope.recipients:
                raise StepFailed("the message has no recipients", "add at least one To, Cc or Bcc address",
                                 temporary=False)
            body.extend(base64.b64encode(mime))
            if len(body) > MAX_REQUEST:
                raise StepFailed(f"the message is {_megabytes(len(mime))}: Microsoft Graph takes at most 4 MB in one "
                                 "request, which leaves about 3 MB for a message", "send it through a server of "
                                 "another protocol (SMTP or EWS take more), or make it smaller", temporary=False)
            return step_result(f"{len(envelope.recipients)} recipient(s), {_megabytes(len(mime))}, sent as MIME",
                               [("Message-ID", envelope.message_id), ("From", _from_of(envelope)),
                                ("Sent Items", "Graph keeps a copy of every message sent as MIME")])

        with call:
            mime = smime.protected(call.run, config.smime, envelope.raw, envelope.recipients)
            call.run("Message", prepare)
            call.run("Token", call.bearer)
            call.run("sendMail", lambda: _send(call, bytes(body), _from_of(envelope)))
        if not call.report.ok:
            raise DeliveryError(call.report)
        return Receipt(reply="202 Accepted", message_id=envelope.message_id, report=call.report,
                       recipients=accepted_all(envelope, "202 Accepted"))


GRANT_SEND = ("add the delegated permission Mail.Send (Mail.Send.Shared to send from a shared mailbox) to the app in "
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


def app_only(config) -> bool:
    return isinstance(config.auth, BearerAuth) and config.auth.app_only


def sender_of(config) -> str:
    """Whom Exchange checks a From against: the signed-in user, or for app-only the mailbox in the URL."""
    return mailbox_of(config) if app_only(config) else config.auth.username


def _same(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def _users_url(config, suffix: str = "") -> str:
    return f"{config.settings.graph_endpoint.rstrip('/')}/v1.0/users/{quote(mailbox_of(config), safe='@')}{suffix}"


def _read_mailbox(call: ApiCall):
    config = call.config
    response = call.request("GET", _users_url(config), "read the mailbox",
                            params={"$select": "id,displayName,mail,userPrincipalName"})
    body = json_of(response)
    if response.status_code == 200:
        return step_result(f"the mailbox {body.get('mail') or body.get('userPrincipalName')} exists",
                           [("Display name", str(body.get("displayName") or "")), ("Id", str(body.get("id") or ""))])
    if response.status_code == 403 and _code(body) == "Authorization_RequestDenied":
        if app_only(config):
            needs = "the application permission User.Read.All (or User.ReadBasic.All)"
        elif _same(mailbox_of(config), config.auth.username):
            needs = "the delegated permission User.Read in the scope"
        else:
            needs = "the delegated permission User.ReadBasic.All in the scope"
        return step_result(f"the token may not read the mailbox's profile: that needs {needs}, which sending does "
                           "not; whether the mail may go shows only when a mail is sent", outcome=Outcome.WARNING,
                           hint=f"send a sample mail to be sure; or grant {needs} to see the mailbox here")
    raise explain(response, body, config)


def _from_warning(config) -> Step:
    who, address = sender_of(config), config.sender.address
    actor = f"the mailbox {who}" if app_only(config) else who
    return step_result(f"mail goes out From {address}: Graph sends it only if {actor} has “Send As” or “Send on "
                       f"Behalf” permission on {address} (else it refuses with ErrorSendAsDenied)",
                       outcome=Outcome.WARNING, hint="send a sample mail to be sure; an Exchange admin grants the "
                                                     "permission under the mailbox's delegation")


def _send(call: ApiCall, body: bytes, author: str):
    response = call.request("POST", _users_url(call.config, "/sendMail"), "sendMail", data=body,
                            headers={"Content-Type": "text/plain"})
    if response.status_code == 202:
        return step_result("Microsoft Graph accepted the message for delivery (202 Accepted)")
    raise explain(response, json_of(response), call.config, author)


def _from_of(envelope: Envelope) -> str:
    message = envelope.message()
    found = getaddresses([str(v) for v in message.get_all("From", [])])
    return found[0][1] if found and found[0][1] else envelope.mail_from


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB" if size >= 100 * 1024 else f"{max(1, round(size / 1024))} KB"


def _code(body: dict) -> str:
    error = body.get("error")
    return str(error.get("code", "")) if isinstance(error, dict) else ""


def explain(response, body: dict, config, author: str = "") -> StepFailed:
    """A Graph error in words, with what to do (Graph's own code and message kept in the details).
    `credentials=True` where only an admin can fix the server's side (a token, a permission, a
    consent, a mailbox): the delivery queue holds the mail instead of retrying it."""
    status, code = response.status_code, _code(body)
    message = str((body.get("error") or {}).get("message", "")) if isinstance(body.get("error"), dict) else ""
    details = [("Graph error", f"{status} {code}: {message}".strip())]
    mailbox, author = mailbox_of(config), author or config.sender.address
    if status == 401 and "scp or roles" in message:
        if app_only(config):
            return StepFailed("Microsoft Graph refused the app's token: it carries no permission, so nobody has "
                              f"granted admin consent yet (401 {code})",
                              "a tenant administrator grants admin consent (save the server, then Grant admin consent "
                              "on its page; or Entra ID → the app → API permissions), then try again", details,
                              code=status, credentials=True)
        return StepFailed(f"Microsoft Graph refused the token: it carries no permission (401 {code})", GRANT_SEND,
                          details, code=status, credentials=True)
    if status == 401 and "audience" in message.lower():
        return StepFailed(f"Microsoft Graph refused the token: it is for another service or cloud (401 {code})",
                          "the Graph endpoint must be the Graph of the chosen Cloud, and the scope Graph's of that "
                          "cloud (“Default” puts it back); then authorize again", details, code=status,
                          credentials=True)
    if status == 401:
        return StepFailed(f"Microsoft Graph refused the token (401 {code})",
                          "re-authorize; check that the token is for Microsoft Graph (the scope Mail.Send or "
                          "https://graph.microsoft.com/.default) and that the Graph endpoint matches the cloud",
                          details, code=status, credentials=True)
    if status == 403 and code == "ErrorSendAsDenied":
        # Every message with this From fails through this server until an admin grants the right: hold it.
        who = f"the mailbox {sender_of(config)}" if app_only(config) else sender_of(config)
        return StepFailed(f"{who} may not send as {author} (403 ErrorSendAsDenied)",
                          f"an Exchange admin gives {sender_of(config)} “Send As” (or “Send on Behalf”) permission on "
                          f"{author} (Exchange admin center → Recipients → Mailboxes → {author} → Delegation); or "
                          f"make the From address {sender_of(config)}", details, code=status, credentials=True)
    if status == 403:
        # A missing permission or consent: only an admin can fix it, for every message: hold the mail.
        if app_only(config):
            return StepFailed(f"the app may not send from {mailbox} (403 {code})",
                              "grant the app the application permission Mail.Send with admin consent; an Exchange "
                              "application access policy (or RBAC for Applications) may also keep it from this "
                              "mailbox", details, code=status, credentials=True)
        if _same(mailbox, config.auth.username):
            return StepFailed(f"the token may not send mail from {mailbox} (403 {code})", GRANT_SEND, details,
                              code=status, credentials=True)
        return StepFailed(f"{config.auth.username} may not send from {mailbox} (403 {code})",
                          f"the scope needs Mail.Send.Shared, and {config.auth.username} needs “Send As”, “Send on "
                          f"Behalf” or Full Access on {mailbox}", details, code=status, credentials=True)
    if status == 404:
        # The server's mailbox is wrong: every message would fail the same way until an admin fixes it: hold.
        return StepFailed(f"Microsoft Graph knows no mailbox {mailbox} (404 {code})",
                          "check the mailbox's address (its user principal name or object id)", details,
                          code=status, temporary=False, credentials=True)
    if status == 429:
        wait = retry_after(response)
        return StepFailed(f"Microsoft Graph is throttling this app (429){' for ' + wait if wait else ''}",
                          f"try again {'after ' + wait if wait else 'in a minute'}: Graph limits how fast one app "
                          "may send from one mailbox", details, code=status, retry_after=retry_seconds(response),
                          throttled=True)
    if status == 413:
        return StepFailed("the message is larger than Graph accepts (4 MB a request)", "send a smaller message",
                          details, code=status, temporary=False)
    if status == 400:
        return StepFailed(f"Microsoft Graph refused the message (400 {code}): {message}",
                          "check the recipients and the message", details, code=status, temporary=False)
    return StepFailed(f"Microsoft Graph answered {status} {code}".strip(), "try again later; if it persists, see "
                      "the details", details, code=status, temporary=status >= 500 or status == 408,
                      retry_after=retry_seconds(response))
