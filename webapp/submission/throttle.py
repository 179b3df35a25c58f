"""Failed sign-ins per client address, counted like the web sign-in's (the `limits` library that
Flask-Limiter uses, in Redis when REDIS_URL is set so that every listener host counts together,
else in the process). Past the limit the listener answers 421 and hangs up."""
from limits import RateLimitItem
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter


class FailedSignIns:
    def __init__(self, limit: RateLimitItem, storage_uri: str | None, prefix: str):
        self.limit = limit
        self.prefix = prefix
        self._limiter = FixedWindowRateLimiter(storage_from_string(storage_uri or "memory://"))

    def exhausted(self, client: str) -> bool:
        """True when this address may not try again yet."""
        return not self._limiter.test(self.limit, self.prefix, "smtp-auth-failed", client)

    def count(self, client: str) -> None:
        self._limiter.hit(self.limit, self.prefix, "smtp-auth-failed", client)
