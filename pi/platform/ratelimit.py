"""Per-merchant rate limits: each service counts a merchant's calls per one-second window.

`interceptors.RateLimitInterceptor` asks `RateLimiter.check(merchant_id)` for every call
made by a merchant principal (admin, service and anonymous calls are never counted). Over
`PI_RATE_LIMIT_PER_MERCHANT` calls in the current second the call ends with
RESOURCE_EXHAUSTED, reason `RATE_LIMITED`, `ErrorInfo` metadata `limit` and
`retry_after_seconds`, and a `google.rpc.RetryInfo`; Envoy answers HTTP/JSON clients 429.

The algorithm is a fixed window: one counter per merchant per wall-clock second, key
`pi:rl:<service>:<merchant>:<unix second>`, created with a TTL and incremented in one
round trip (`Cache.incr`: SET NX PX + INCRBY in one Lua script). With REDIS_URL every
replica of a service shares the counter; without it the counter lives in this process
(`MemoryCache`). A fixed window may let up to twice the limit through around a window
boundary: the price of one small counter and one round trip per call, acceptable for a
limit that protects the platform from a runaway client rather than meters it.

Counting per service is deliberate. Each service counts only the calls made to it, so a
merchant gets the limit at each service. A payment flow makes one merchant call to each
service it touches (create the transaction, pay it; the token is issued without one), and
calls between services carry the service principal and are not counted, so the limit per
service is a limit on flows. No service waits on another's count, and one service's
traffic never uses up another's budget.

Losing Redis must never stop payments: when the cache fails, calls are let through (fail
open), the cache is not asked again for `retry_seconds`, and a warning is logged at most
once per `warn_interval`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from pi.platform.cache import Cache, MemoryCache, RedisCache
from pi.platform.config import Settings
from pi.platform.errors import ResourceExhausted

log = logging.getLogger(__name__)

RATE_LIMITED = "RATE_LIMITED"
KEY_PREFIX = "pi:rl:"
RETRY_SECONDS = 1.0
WARN_INTERVAL_SECONDS = 60.0
REDIS_TIMEOUT_SECONDS = 0.25
"""How long a call may wait on Redis for its count before it is let through uncounted."""

# A counter outlives its one-second window a little, for replicas whose clocks disagree.
_COUNTER_TTL_SECONDS = 2.0


class RateLimiter:
    """At most `limit` calls per merchant per one-second window, counted in `cache`.

    `clock` gives wall-clock seconds: windows are Unix seconds so that every replica
    counts in the same one. Tests inject a clock.
    """

    def __init__(
        self,
        cache: Cache,
        *,
        service: str,
        limit: int,
        clock: Callable[[], float] = time.time,
        retry_seconds: float = RETRY_SECONDS,
        warn_interval: float = WARN_INTERVAL_SECONDS,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1 (a limit of 0 means no RateLimiter)")
        self.limit = limit
        self.cache = cache
        self._prefix = f"{KEY_PREFIX}{service}:"
        self._clock = clock
        self._retry_seconds = retry_seconds
        self._warn_interval = warn_interval
        self._bypass_until = 0.0
        self._next_warning = 0.0
        self._failing = False

    async def check(self, merchant_id: str) -> None:
        """Count one call by `merchant_id`; `ResourceExhausted` if it is over the limit."""
        now = self._clock()
        if now < self._bypass_until:
            return
        window = int(now)
        try:
            count = await self.cache.incr(
                f"{self._prefix}{merchant_id}:{window}", _COUNTER_TTL_SECONDS
            )
        except Exception as error:  # anything the cache raises: let the call through
            self._fail_open(now, error)
            return
        if self._failing:
            self._failing = False
            log.info("rate limiting resumed: the cache answers again")
        if count > self.limit:
            raise self._limited(window + 1 - now)

    def _limited(self, retry_after: float) -> ResourceExhausted:
        return ResourceExhausted(
            f"Too many requests: at most {self.limit} per second for a merchant. "
            "Retry after the delay in RetryInfo.",
            reason=RATE_LIMITED,
            metadata={
                "limit": str(self.limit),
                # Whole seconds, like an HTTP Retry-After header; RetryInfo is exact.
                "retry_after_seconds": str(max(1, math.ceil(retry_after))),
            },
            retry_after=retry_after,
        )

    def _fail_open(self, now: float, error: Exception) -> None:
        self._failing = True
        self._bypass_until = now + self._retry_seconds
        if now >= self._next_warning:
            self._next_warning = now + self._warn_interval
            log.warning(
                "rate limiting suspended, calls are let through: the cache failed (%s)",
                type(error).__name__,
                extra={"retry_seconds": self._retry_seconds},
            )


def create_rate_limiter(settings: Settings) -> RateLimiter | None:
    """The limiter `settings` ask for (None when PI_RATE_LIMIT_PER_MERCHANT is 0).

    With REDIS_URL its counters are in Redis, on a connection pool of its own whose short
    timeout bounds what a hung Redis can add to a call; else in this process. Close
    `limiter.cache` when done.
    """
    if settings.rate_limit_per_merchant <= 0:
        return None
    cache: Cache = (
        RedisCache(settings.redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS)
        if settings.redis_url
        else MemoryCache()
    )
    return RateLimiter(cache, service=settings.service, limit=settings.rate_limit_per_merchant)
