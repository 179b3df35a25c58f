"""Failed sign-ins per client address, counted where the web sign-in's are (the `limits` library
that Flask-Limiter uses, on the app's RATELIMIT_STORAGE_URI: Redis when REDIS_URL is set, else the
database), so that every listener process and host counts together. Past the limit the listener
answers 421 and hangs up. Call it with an app context (the database storage needs one)."""
from limits import RateLimitItem
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter


class FailedSignIns:
    def __init__(self, limit: RateLimitItem, storage_uri: str, prefix: str):
        self.limit = limit
        self.prefix = prefix
        self._limiter = FixedWindowRateLimiter(storage_from_string(storage_uri))

    def exhausted(self, client: str) -> bool:
        """True when this address may not try again yet."""
        return not self._limiter.test(self.limit, self.prefix, "smtp-auth-failed", client)

    def count(self, client: str) -> None:
        self._limiter.hit(self.limit, self.prefix, "smtp-auth-failed", client)
