"""When a message that failed temporarily is tried again: Postfix's schedule (a first wait,
doubling up to a longest one) with jitter, so that mail deferred together does not come back
together, and never sooner than the service asked (Retry-After)."""
import random

from .settings import DeliverySettings


def retry_delay(failures: int, settings: DeliverySettings, retry_after: float | None = None,
                rng: random.Random | None = None) -> float:
    """Seconds to wait after the `failures`-th temporary failure of a message (1, 2, ...)."""
    base = min(settings.retry_first * 2 ** max(failures - 1, 0), settings.retry_max)
    jitter = settings.retry_jitter
    delay = base * (rng or random).uniform(1 - jitter, 1 + jitter)
    return max(delay, retry_after or 0.0)
