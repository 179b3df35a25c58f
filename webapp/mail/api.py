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
from time import monotonic

import requests

from . import http
from .auth import BearerAuth, token_step
from .config import ServerConfig
from .deadline import Deadline, DeadlineExceeded
from .egress import REFUSED_HINT, EgressRefused, egress_details
from .redact import NOT_SHOWN, Redactor
from .report import Outcome, Report, Step, StepFailed


class _Stop(Exception):
    """A step failed and is in the report."""


class ApiCall:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.deadline = Deadline(config.timeout)
        self.report = Report(transcript_name="HTTP requests")
        self.redactor = Redactor()
        self.session = http.session(config.network, self.deadline)
        self.token = ""

    def __enter__(self) -> "ApiCall":
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        self.session.close()
        self._scrub()
        return kind is _Stop

    def run(self, name: str, action) -> Step:
        started = monotonic()
        try:
            step = action()
        except Exception as error:  # noqa: BLE001 - every failure is put in words or re-raised
            failure = error if isinstance(error, StepFailed) else self._words(error)
            if failure is None:
                raise
            self.report.add(Step(name, Outcome.FAILED, failure.summary, failure.details, failure.hint,
                                 monotonic() - started, code=failure.code, temporary=failure.temporary))
            raise _Stop from None
        step.name, step.elapsed = name, monotonic() - started
        return self.report.add(step)

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
        http.record(self.report.transcript, response, what)
        return response

    def _words(self, error: Exception) -> StepFailed | None:
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

    def _scrub(self) -> None:
        redactor = self.redactor
        if not redactor:
            return
        report = self.report
        report.transcript[:] = [redactor.clean(line) for line in report.transcript]
        answered = any(line.startswith("S: ") for line in report.transcript)
        for step in report.steps:
            if redactor.blind and answered and step.outcome == Outcome.FAILED:
                # a secret too short to look for: what the service said about the failure is not shown
                step.summary = NOT_SHOWN
                step.details = [(k, v) for k, v in step.details if k == "HTTP status"]
            step.summary, step.hint = redactor.clean(step.summary), redactor.clean(step.hint)
            step.details = [(redactor.clean(k), redactor.clean(v)) for k, v in step.details]


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


def retry_after(response: requests.Response) -> str:
    """The service's Retry-After in words ("30 s"), or ""."""
    value = (response.headers.get("Retry-After") or "").strip()
    return f"{value} s" if value.isdigit() else value
