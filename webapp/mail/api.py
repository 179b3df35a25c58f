"""What the HTTP API transports share (Microsoft Graph, the Gmail API; EWS uses the same
session underneath exchangelib), in the manner of django-anymail's requests base: one
conversation under one deadline, through the egress policy, its steps recorded in a
Report, failures of the network put in words once here, the API's own errors by each
transport, and every secret (the token) kept out of the report.

    call = ApiCall(config)
    with call:                                   # stops quietly at the first failed step
        call.run("Token", call.bearer)
        call.run("Mailbox", lambda: ...)         # returns a Step (step_result) or raises StepFailed
    report = call.report                         # cleaned of the token in any encoding
"""
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests

from . import http
from .attempt import Attempt
from .auth import BearerAuth, token_step
from .config import ServerConfig
from .deadline import Deadline, DeadlineExceeded
from .envelope import Envelope
from .egress import REFUSED_HINT, EgressRefused, egress_details
from .redact import NOT_SHOWN, Redactor
from .report import Outcome, RecipientOutcome, Report, Step, StepFailed


class Kept:
    """What one message's ApiCall leaves to the next one to the same server: the HTTP session, whose
    connections stay open (keep-alive, as SMTP keeps its session), the redactor, which knows the
    token, and a library's client over such a session (EWS: exchangelib's Protocol, whose session
    pool holds the connection, its sign-in and the server's version). Each message still runs under
    its own deadline. A failed call drops them all."""

    def __init__(self):
        self.session: requests.Session | None = None
        self.redactor: Redactor | None = None
        self.client = None  # anything with close()

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        if self.client is not None:
            self.client.close()
        self.session = self.redactor = self.client = None


class ApiConnection:
    """A mail.transport Connection for an HTTP API transport whose send() takes `kept`."""

    def __init__(self, transport, config: ServerConfig):
        self.transport, self.config, self.kept = transport, config, Kept()

    def send(self, envelope: Envelope):
        return self.transport.send(self.config, envelope, self.kept)

    def close(self) -> None:
        self.kept.close()


class ApiCall(Attempt):
    def __init__(self, config: ServerConfig, kept: Kept | None = None):
        super().__init__(Report(transcript_name="HTTP requests"),
                         kept.redactor if kept is not None and kept.redactor is not None else Redactor())
        self.config, self.kept = config, kept
        self.deadline = Deadline(config.timeout)
        if kept is None or kept.session is None:
            self.session = http.session(config.network, self.deadline)
        else:
            self.session = http.rebind(kept.session, self.deadline)
        self.token = ""

    def __exit__(self, kind, error, traceback) -> bool:
        handled = super().__exit__(kind, error, traceback)
        if self.kept is None:
            self.session.close()
        elif kind is None and self.report.ok:
            self.keep(self.kept)
        else:  # the connection may be in any state: the next message starts afresh
            self.session.close()
            self.kept.close()
        return handled

    def keep(self, kept: Kept) -> None:
        """After a message that went well: what the next message to this server goes on with."""
        kept.session, kept.redactor = self.session, self.redactor

    def bearer(self, may_send=None, grant: str = "") -> Step:
        """The Token step: the access token goes into the Authorization header (never the report).
        `may_send(scopes)`: False when the token's scopes, where the provider says them, cannot send
        mail (then the step fails, with `grant` as the hint); None when the scopes do not tell."""
        auth = self.config.auth
        if not isinstance(auth, BearerAuth):
            raise StepFailed("this protocol signs in with OAuth 2.0 only", "choose Authentication “OAuth 2.0”")
        step, token = token_step(auth, self.deadline)
        self.token = token.value
        self.redactor.add(token.value)
        self.session.headers["Authorization"] = f"Bearer {token.value}"
        if may_send and token.scopes and may_send(token.scopes) is False:
            raise StepFailed(f"the token may not send mail: it was granted only {' '.join(token.scopes)}", grant,
                             step.details, temporary=False)
        return step

    def request(self, method: str, url: str, what: str = "", **kwargs) -> requests.Response:
        response = self.session.request(method, url, **kwargs)
        response.content  # noqa: B018 - read to its end (bounded), so the connection can serve the next request
        http.record(self.report.transcript, response, what)
        return response

    def words(self, name: str, error: Exception) -> StepFailed | None:
        host = http.host_of(getattr(getattr(error, "request", None), "url", "") or "")
        if isinstance(error, EgressRefused):
            return StepFailed(str(error), REFUSED_HINT, egress_details(error))
        if isinstance(error, (DeadlineExceeded, requests.Timeout)):
            return StepFailed(f"no answer within {self.deadline}{' from ' + host if host else ''}",
                              "the service is slow or a firewall drops the connection: try again, or raise the "
                              "timeout")
        if isinstance(error, requests.exceptions.SSLError):
            return StepFailed(f"the TLS certificate of {host or 'the service'} could not be verified",
                              "check the address; a server with a certificate from your own authority needs "
                              "its CA in EXTRA_CA_CERTS (or the server's CA certificate)", temporary=False)
        if isinstance(error, http.AnswerRefused):
            return StepFailed(str(error), error.hint)
        if isinstance(error, requests.ConnectionError):
            return StepFailed(f"could not connect to {host or 'the service'}: {http.reason(error)}",
                              "check the address and this machine's network")
        if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                              requests.exceptions.InvalidSchema)):
            return StepFailed("the address cannot be used", "check the address in the settings", temporary=False)
        return None

    def scrub(self) -> None:
        """As every attempt; besides, with a secret too short to look for, what the service said
        about a failure is not shown (only its HTTP status)."""
        report = self.report
        if self.redactor.blind and any(line.startswith("S: ") for line in report.transcript):
            for step in report.steps:
                if step.outcome == Outcome.FAILED:
                    step.summary = NOT_SHOWN
                    step.details = [(k, v) for k, v in step.details if k == "HTTP status"]
        super().scrub()


def json_of(response: requests.Response) -> dict:
    """The answer's JSON object; {} for anything else (an error page, not an object). JSON nested
    deeper than the interpreter can parse fails the step in words (called inside a step)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    except RecursionError:
        raise StepFailed(f"the answer from {http.host_of(response.url)} is JSON nested too deeply to read",
                         "check the address: it should lead to the service itself") from None
    return body if isinstance(body, dict) else {}


def accepted_all(envelope: Envelope, reply: str) -> list[RecipientOutcome]:
    """An HTTP API takes or refuses the message as a whole: every recipient accepted."""
    return [RecipientOutcome(address, True, reply=reply) for address in envelope.recipients]


def retry_seconds(response: requests.Response) -> float | None:
    """Retry-After in seconds (a number, or an HTTP date), or None when the service did not say."""
    value = (response.headers.get("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def retry_after(response: requests.Response) -> str:
    """The service's Retry-After in words ("30 s"), or ""."""
    value = (response.headers.get("Retry-After") or "").strip()
    return f"{value} s" if value.isdigit() else value
