"""Per-merchant rate limits: each service counts a merchant's calls per one-second window.

`interceptors.RateLimitInterceptor` asks `RateLimiter.check(merchant_id)` for every call
made by a merchant principal (admin, service and anonymous calls are never counted). Over
`PI_RATE_LIMIT_PER_MERCHANT` calls in the current second the call ends with
RESOURCE_EXHAUSTED, reason `RATE_LIMITED`, `ErrorInfo` metadata `limit` and
`retry_after_seconds`, and a `google.rpc.RetryInfo`; Envoy answers HTTP/JSON clients 429.

The algorithm is a fixed window: one counter per merchant per wall-clock second, key
`pi:rl:<service>:<merchant>:<unix second>`, created with a TTL and incremented atomically
(`Cache.incr`: SET NX PX + INCRBY in one Lua script). With REDIS_URL every replica of a
service shares the counter; without it the counter lives in this process (`MemoryCache`).
A fixed window may let up to twice the limit through around a window boundary: the price
of one small counter per merchant and second, acceptable for a limit that protects the
platform from a runaway client rather than meters it.

A round trip per call was about an eighth of a service's CPU, so a replica leases calls:
it adds `lease_size(limit)` = max(1, min(limit // 20, 50)) to the counter at once and
serves that many calls from memory before it asks again (limits under 40 lease 1, one
round trip per call as before). A lease that would cross the limit takes only what is
left as far as this replica last saw, and once the counter has reached the limit the rest
of the window is refused without asking. The bound: the counter runs ahead of the calls
served by at most the unused part of each replica's lease, lease - 1 (all of it if every
call waiting for it was cancelled). So no more than `limit` calls pass in a window; one
replica lets exactly `limit` through; with R replicas a merchant is refused after at least
limit - (lease - 1) * (R - 1) calls, i.e. early by under 5% of the limit per extra replica.
One lease per merchant is in flight at a time; the calls that arrive meanwhile wait for
it. Leases live for their window only, for at most `MAX_LEASED_MERCHANTS` merchants a
window; further merchants are counted one round trip per call.

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

import asyncio
import logging
import math
import time
from collections.abc import Callable

from pi.platform.cache import Cache, MemoryCache, RedisCache
from pi.platform.config import ServiceSettings
from pi.platform.kernel.errors import ResourceExhausted
from pi.platform.observability import metrics

log = logging.getLogger(__name__)

RATE_LIMITED = "RATE_LIMITED"
KEY_PREFIX = "pi:rl:"
RETRY_SECONDS = 1.0
WARN_INTERVAL_SECONDS = 60.0
REDIS_TIMEOUT_SECONDS = 0.25
"""How long a call may wait on Redis for its count before it is let through uncounted."""
MAX_LEASE = 50
MAX_LEASED_MERCHANTS = 10_000
"""Merchants a replica keeps leases for in one window (a few hundred bytes each)."""

# A counter outlives its one-second window a little, for replicas whose clocks disagree.
_COUNTER_TTL_SECONDS = 2.0


def lease_size(limit: int) -> int:
    """Calls a replica takes from the shared counter at once: at most 5% of `limit`."""
    return max(1, min(limit // 20, MAX_LEASE))


class _Lease:
    """What this replica holds of one merchant's counter in the current window."""

    __slots__ = ("left", "seen", "taking")

    def __init__(self) -> None:
        self.left = 0  # calls leased and not yet served
        self.seen = 0  # the counter as the last lease left it
        self.taking: asyncio.Task[Exception | None] | None = None


class RateLimiter:
    """At most `limit` calls per merchant per one-second window, counted in `cache`.

    `clock` gives wall-clock seconds: windows are Unix seconds so that every replica
    counts in the same one. Tests inject a clock. `lease` is how many calls a replica
    takes from the counter at once (default `lease_size(limit)`; 1: a round trip a call).
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
        lease: int | None = None,
        max_leased_merchants: int = MAX_LEASED_MERCHANTS,
        subject: str = "a merchant",
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1 (a limit of 0 means no RateLimiter)")
        self.limit = limit
        self._subject = subject
        self.lease = lease_size(limit) if lease is None else max(1, min(lease, limit))
        self.cache = cache
        self._prefix = f"{KEY_PREFIX}{service}:"
        self._clock = clock
        self._retry_seconds = retry_seconds
        self._warn_interval = warn_interval
        self._max_leased = max_leased_merchants
        self._bypass_until = 0.0
        self._next_warning = 0.0
        self._failing = False
        self._window = 0
        self._leases: dict[str, _Lease] = {}

    async def check(self, merchant_id: str) -> None:
        """Count one call by `merchant_id`; `ResourceExhausted` if it is over the limit."""
        now = self._clock()
        if now < self._bypass_until:
            return
        window = int(now)
        if self.lease == 1:
            await self._count_one(merchant_id, now, window)
            return
        if window != self._window:
            # Leases in flight keep their own entry; the calls waiting on them were
            # counted in the window they started in.
            self._window = window
            self._leases = {}
        entry = self._leases.get(merchant_id)
        if entry is None:
            if len(self._leases) >= self._max_leased:
                await self._count_one(merchant_id, now, window)
                return
            entry = self._leases[merchant_id] = _Lease()
        while entry.left == 0:
            if entry.seen >= self.limit:
                raise self._limited(window + 1 - now)
            if entry.taking is None:
                key = f"{self._prefix}{merchant_id}:{window}"
                entry.taking = asyncio.create_task(self._take(key, entry))
            # Shielded: a caller that gives up must not cancel the lease the others wait for.
            error = await asyncio.shield(entry.taking)
            if error is not None:
                self._fail_open(now, error)
                return
            self._resumed()
        entry.left -= 1

    async def _take(self, key: str, entry: _Lease) -> Exception | None:
        """Lease up to `self.lease` calls into `entry`; the cache's error, if it failed."""
        # Never more than was left when this replica last looked: near the limit a replica
        # then holds only what it may serve, and alone it leaves the counter at the limit.
        amount = min(self.lease, self.limit - entry.seen)
        try:
            count = await self.cache.incr(key, _COUNTER_TTL_SECONDS, amount)
        except Exception as error:  # anything the cache raises: the callers fail open
            return error
        finally:
            entry.taking = None
        # The counter values this lease added are ours; those past the limit are refusals.
        entry.seen = count
        entry.left += max(0, min(count, self.limit) - (count - amount))
        return None

    async def _count_one(self, merchant_id: str, now: float, window: int) -> None:
        try:
            count = await self.cache.incr(
                f"{self._prefix}{merchant_id}:{window}", _COUNTER_TTL_SECONDS
            )
        except Exception as error:  # anything the cache raises: let the call through
            self._fail_open(now, error)
            return
        self._resumed()
        if count > self.limit:
            raise self._limited(window + 1 - now)

    def _resumed(self) -> None:
        if self._failing:
            self._failing = False
            log.info("rate limiting resumed: the cache answers again")

    def _limited(self, retry_after: float) -> ResourceExhausted:
        metrics.rate_limited.inc()
        return ResourceExhausted(
            f"Too many requests: at most {self.limit} per second for {self._subject}. "
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


def create_rate_limiter(settings: ServiceSettings) -> RateLimiter | None:
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
    # In process a count costs no round trip, so there is nothing to save by leasing.
    lease = 1 if isinstance(cache, MemoryCache) else None
    return RateLimiter(
        cache, service=settings.service, limit=settings.rate_limit_per_merchant, lease=lease
    )
