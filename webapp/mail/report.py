"""What Validate shows: a report made of steps, each passed, failed or skipped."""
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


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)  # "C: EHLO x" / "S: 250 ok", AUTH redacted

    @property
    def ok(self) -> bool:
        return all(step.outcome != Outcome.FAILED for step in self.steps)

    @property
    def failure(self) -> Step | None:
        return next((s for s in self.steps if s.outcome == Outcome.FAILED), None)

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        return step


@dataclass
class Receipt:
    reply: str  # the server's reply to the end of DATA, e.g. "250 2.0.0 Ok: queued as 4F2"
    message_id: str
    report: Report


class DeliveryError(Exception):
    """Sending failed. str() is the failed step in words; never holds a secret."""

    def __init__(self, report: Report):
        self.report = report
        step = report.failure
        super().__init__(f"{step.name}: {step.summary}" if step else "delivery failed")

    @property
    def hint(self) -> str:
        step = self.report.failure
        return step.hint if step else ""
