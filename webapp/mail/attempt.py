"""The attempt runner every transport shares: one check or send as a list of steps.

    attempt = Attempt(report, redactor, words)
    with attempt:                        # stops quietly at the first failed step
        attempt.run("Connect", connect)  # returns a Step (step_result) or raises
    report = attempt.report              # every text cleaned of the secrets, in any encoding

Each step is timed and recorded. A step that raises StepFailed, or an error the transport's
`words(name, error)` puts in words, becomes a failed Step (with its reply code, whether it is
temporary, the retry time the service asked for and whether the credentials are to blame) and
ends the attempt; anything else is a bug and propagates. Transports turn a report with a failed
step into a DeliveryError (send) or return it (check).
"""
from collections.abc import Callable
from time import monotonic

from .redact import Redactor
from .report import Outcome, Report, Step, StepFailed

Words = Callable[[str, Exception], StepFailed | None]


class Stop(Exception):
    """A step failed and is in the report: the attempt ends here."""


class Attempt:
    def __init__(self, report: Report, redactor: Redactor, words: Words | None = None):
        self.report, self.redactor = report, redactor
        if words is not None:
            self.words = words

    def words(self, name: str, error: Exception) -> StepFailed | None:
        """`error` (not a StepFailed) in words, or None when it is a bug; transports override or pass `words`."""
        return None

    def __enter__(self) -> "Attempt":
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        self.scrub()
        return kind is Stop

    def run(self, name: str, action: Callable[[], Step]) -> Step:
        started = monotonic()
        try:
            step = action()
        except Exception as error:  # noqa: BLE001 - put in words, or re-raised
            failure = error if isinstance(error, StepFailed) else self.words(name, error)
            if failure is None:
                raise
            self.report.add(failed_step(name, failure, monotonic() - started))
            raise Stop from None
        step.name, step.elapsed = name, monotonic() - started
        return self.report.add(step)

    def scrub(self) -> None:
        """Last line of defence: no secret, in any encoding, in any text of the report."""
        redactor, report = self.redactor, self.report
        if not redactor:
            return
        report.transcript[:] = [redactor.clean(line) for line in report.transcript]
        report.notes[:] = [redactor.clean(note) for note in report.notes]
        for step in report.steps:
            step.summary, step.hint = redactor.clean(step.summary), redactor.clean(step.hint)
            step.details = [(redactor.clean(k), redactor.clean(v)) for k, v in step.details]


def failed_step(name: str, failure: StepFailed, elapsed: float = 0.0) -> Step:
    return Step(name, Outcome.FAILED, failure.summary, failure.details, failure.hint, elapsed, code=failure.code,
                temporary=failure.temporary, retry_after=failure.retry_after, credentials=failure.credentials,
                throttled=failure.throttled)
