"""What Validate shows: a report made of steps, each passed, failed, warning or skipped;
and how a step ends: with a Step (step_result), or by raising StepFailed."""
from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    WARNING = "warning"
    SKIPPED = "skipped"


@dataclass
class Step:
    name: str  # "Resolve host", "Connect", "TLS", "EHLO", "Authenticate", "MAIL FROM", ...
    outcome: Outcome
    summary: str  # one line in plain words
    details: list[tuple[str, str]] = field(default_factory=list)  # ("TLS version", "TLSv1.3")
    hint: str = ""  # what to try, for a failed step
    elapsed: float = 0.0  # seconds
    code: int | None = None  # the server's reply code, when a reply failed the step
    temporary: bool = True  # for a failed step: may the same message go through later or elsewhere?
    retry_after: float | None = None  # for a failed step: seconds the service asked us to wait, if it said
    credentials: bool = False  # for a failed step: the server refused its credentials or OAuth grant (hold the mail)
    throttled: bool = False  # for a failed step: the service asks to slow down (a rate limit), with or without a time


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)  # "C: EHLO x" / "S: 250 ok", AUTH redacted
    transcript_name: str = "conversation"  # "SMTP conversation", "HTTP requests"
    notes: list[str] = field(default_factory=list)  # shown above the steps ("this server is disabled")
    passed_summary: str = ""  # what a check that passed proved, in words
    sections: list[tuple[str, list[Step]]] = field(default_factory=list)  # shown after the steps (Deliverability);
    # advice read elsewhere (DNS), which never decides `ok`

    @property
    def ok(self) -> bool:
        return all(step.outcome != Outcome.FAILED for step in self.steps)

    @property
    def failure(self) -> Step | None:
        return next((s for s in self.steps if s.outcome == Outcome.FAILED), None)

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        return step

    def step(self, name: str) -> Step | None:
        """The last step of that name (EHLO appears twice with STARTTLS)."""
        return next((s for s in reversed(self.steps) if s.name == name), None)


@dataclass(frozen=True)
class RecipientOutcome:
    address: str
    accepted: bool
    code: int | None = None  # the reply to this recipient (SMTP RCPT TO), when there was one
    reply: str = ""
    temporary: bool = False  # for a refused recipient: may it be accepted later?


@dataclass
class Receipt:
    """The server took responsibility for the message (for the accepted recipients)."""

    reply: str  # the server's answer, e.g. "250 2.0.0 Ok: queued as 4F2" or "202 Accepted"
    message_id: str
    report: Report
    recipients: list[RecipientOutcome] = field(default_factory=list)  # each envelope recipient's outcome

    @property
    def refused(self) -> list[RecipientOutcome]:
        return [r for r in self.recipients if not r.accepted]


class DeliveryError(Exception):
    """Sending failed. str() is the failed step in words; never holds a secret.

    `temporary`: the same message may go through later or through another server (a
    connection, TLS or sign-in problem, a 4xx reply); False when the server refused the
    message itself for good (a 5xx reply to MAIL FROM, RCPT TO or DATA, a malformed message).
    `code`: the server's reply code, when a reply ended the attempt.
    `retry_after`: seconds the service asked to wait (Retry-After, or the time in its message).
    `credentials`: the server refused its credentials or the OAuth grant is dead: the mail is
    held until an admin fixes them, rather than retried.
    `throttled`: the service works but limits the rate (Graph's 429, Gmail's rate-limit 403s),
    whether or not it said for how long: the server is not out of order.
    """

    def __init__(self, report: Report, recipients: list[RecipientOutcome] | None = None):
        self.report = report
        self.recipients = recipients or []  # each recipient's answer, where the server gave one (SMTP RCPT TO)
        step = report.failure
        self.step = step.name if step else ""
        self.code = step.code if step else None
        self.temporary = step.temporary if step else True
        self.retry_after = step.retry_after if step else None
        self.credentials = step.credentials if step else False
        self.throttled = step.throttled if step else False
        super().__init__(f"{step.name}: {step.summary}" if step else "delivery failed")

    @property
    def hint(self) -> str:
        step = self.report.failure
        return step.hint if step else ""


class StepFailed(Exception):
    """A step failed for a reason already put in words."""

    def __init__(self, summary: str, hint: str = "", details: list | None = None, *,
                 code: int | None = None, temporary: bool = True, retry_after: float | None = None,
                 credentials: bool = False, throttled: bool = False):
        super().__init__(summary)
        self.summary, self.hint, self.details = summary, hint, details or []
        self.code, self.temporary = code, temporary
        self.retry_after, self.credentials, self.throttled = retry_after, credentials, throttled


def step_result(summary: str, details=(), outcome: Outcome = Outcome.PASSED, hint: str = "") -> Step:
    """A step's Step; the caller that ran the step fills in its name and elapsed time."""
    return Step(name="", outcome=outcome, summary=summary, details=list(details), hint=hint)
