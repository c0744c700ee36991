"""The per-merchant fixed window, with an injected clock and an in-process cache."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from pi.platform.cache import CacheError, MemoryCache, RedisCache
from pi.platform.kernel.errors import ResourceExhausted
from pi.platform.runtime.ratelimit import RATE_LIMITED, RateLimiter, create_rate_limiter, lease_size
from pi.platform.runtime.status import error_from_rpc_error, to_grpc_status, to_status_proto
from pi.transactions.settings import TransactionsSettings

START = 1_700_000_000.25  # a quarter into a one-second window


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def limiter_on(
    cache: Any, clock: Clock, limit: int = 3, service: str = "payments", **options: Any
) -> RateLimiter:
    return RateLimiter(cache, service=service, limit=limit, clock=clock, **options)


@pytest.fixture
def limiter(clock: Clock) -> RateLimiter:
    return limiter_on(MemoryCache(clock=clock), clock)


async def refused(limiter: RateLimiter, merchant_id: str) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as info:
        await limiter.check(merchant_id)
    return info.value


async def test_the_limit_passes_and_the_next_call_in_the_window_is_refused(
    limiter: RateLimiter, clock: Clock
) -> None:
    for _ in range(3):
        await limiter.check("mer_a")
    clock.advance(0.5)  # same window
    error = await refused(limiter, "mer_a")
    assert error.reason == RATE_LIMITED
    assert error.metadata == {"limit": "3", "retry_after_seconds": "1"}
    assert error.retry_after == pytest.approx(0.25)  # until the window ends
    assert "3 per second" in error.message


async def test_the_next_window_starts_from_zero(limiter: RateLimiter, clock: Clock) -> None:
    for _ in range(3):
        await limiter.check("mer_a")
    await refused(limiter, "mer_a")
    await refused(limiter, "mer_a")  # refused calls keep it refused, nothing worse
    clock.advance(0.75)  # exactly the next window
    for _ in range(3):
        await limiter.check("mer_a")
    await refused(limiter, "mer_a")


async def test_merchants_have_separate_budgets(limiter: RateLimiter) -> None:
    for _ in range(3):
        await limiter.check("mer_a")
    await refused(limiter, "mer_a")
    for _ in range(3):
        await limiter.check("mer_b")
    await refused(limiter, "mer_b")


async def test_each_service_counts_only_its_own_calls(clock: Clock) -> None:
    shared = MemoryCache(clock=clock)
    payments = limiter_on(shared, clock, limit=2, service="payments")
    transactions = limiter_on(shared, clock, limit=2, service="transactions")
    for _ in range(2):
        await payments.check("mer_a")
        await transactions.check("mer_a")
    await refused(payments, "mer_a")
    await refused(transactions, "mer_a")


async def test_counters_are_keyed_per_service_merchant_and_second(clock: Clock) -> None:
    cache = MemoryCache(clock=clock)
    limiter = limiter_on(cache, clock, service="auth")
    await limiter.check("mer_a")
    await limiter.check("mer_a")
    assert await cache.get(f"pi:rl:auth:mer_a:{int(START)}") == b"2"


async def test_a_limit_of_one_allows_exactly_one_call_per_second(clock: Clock) -> None:
    limiter = limiter_on(MemoryCache(clock=clock), clock, limit=1)
    await limiter.check("mer_a")
    error = await refused(limiter, "mer_a")
    assert error.metadata["limit"] == "1"
    clock.advance(1)
    await limiter.check("mer_a")


def test_a_limit_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RateLimiter(MemoryCache(), service="payments", limit=0)


# --- the cache fails: fail open ------------------------------------------------------------


class BrokenCache:
    """Fails every `incr`, like Redis that went away; counts how often it was asked."""

    def __init__(self) -> None:
        self.calls = 0
        self.broken = True
        self.memory = MemoryCache()

    async def incr(self, key: str, ttl: float | None = None, amount: int = 1) -> int:
        self.calls += 1
        if self.broken:
            raise CacheError("cache unavailable: ConnectionError")
        return await self.memory.incr(key, ttl, amount)

    def __getattr__(self, name: str) -> Any:  # the rest of the Cache protocol
        return getattr(self.memory, name)


async def test_a_failing_cache_lets_calls_through_and_is_left_alone_for_a_while(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = BrokenCache()
    limiter = limiter_on(cache, clock, limit=1, retry_seconds=1.0, warn_interval=60.0)
    with caplog.at_level(logging.WARNING, logger="pi.platform.runtime.ratelimit"):
        for _ in range(10):
            await limiter.check("mer_a")
        assert cache.calls == 1  # then skipped until retry_seconds have passed
        clock.advance(1.0)
        await limiter.check("mer_a")
        assert cache.calls == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # at most once per warn_interval
    assert "let through" in warnings[0].getMessage()


async def test_the_warning_repeats_once_per_interval_while_the_cache_is_down(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = limiter_on(BrokenCache(), clock, retry_seconds=1.0, warn_interval=10.0)
    with caplog.at_level(logging.WARNING, logger="pi.platform.runtime.ratelimit"):
        for _ in range(25):  # 25 seconds of calls
            await limiter.check("mer_a")
            clock.advance(1.0)
    assert len(caplog.records) == 3  # at 0, 10 and 20 s


async def test_limiting_resumes_when_the_cache_answers_again(clock: Clock) -> None:
    cache = BrokenCache()
    limiter = limiter_on(cache, clock, limit=2, retry_seconds=1.0)
    await limiter.check("mer_a")
    cache.broken = False
    clock.advance(1.0)
    await limiter.check("mer_a")
    await limiter.check("mer_a")
    await refused(limiter, "mer_a")


# --- leases ------------------------------------------------------------------------------


class GatedCache:
    """A `MemoryCache` whose `incr` waits for `gate`; records the amount of each `incr`."""

    def __init__(self, clock: Clock) -> None:
        self.memory = MemoryCache(clock=clock)
        self.gate = asyncio.Event()
        self.gate.set()
        self.incrs: list[int] = []

    async def incr(self, key: str, ttl: float | None = None, amount: int = 1) -> int:
        self.incrs.append(amount)
        await self.gate.wait()
        return await self.memory.incr(key, ttl, amount)

    def __getattr__(self, name: str) -> Any:  # the rest of the Cache protocol
        return getattr(self.memory, name)


async def settle() -> None:
    """Let every ready task run until it waits (a lease task starts a turn after its call)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def passes(limiter: RateLimiter, merchant_id: str) -> bool:
    try:
        await limiter.check(merchant_id)
    except ResourceExhausted:
        return False
    return True


@pytest.mark.parametrize(
    ("limit", "lease"), [(1, 1), (39, 1), (40, 2), (100, 5), (1000, 50), (10**6, 50)]
)
def test_a_lease_is_at_most_5_percent_of_the_limit_and_at_most_50(limit: int, lease: int) -> None:
    assert lease_size(limit) == lease
    assert RateLimiter(MemoryCache(), service="payments", limit=limit).lease == lease


async def test_a_lease_serves_that_many_calls_and_only_what_is_left_near_the_limit(
    clock: Clock,
) -> None:
    cache = GatedCache(clock)
    limiter = limiter_on(cache, clock, limit=10, lease=4)
    assert [await passes(limiter, "mer_a") for _ in range(12)] == [True] * 10 + [False] * 2
    assert cache.incrs == [4, 4, 2]
    assert await cache.get(f"pi:rl:payments:mer_a:{int(START)}") == b"10"


async def test_a_lease_past_the_limit_another_replica_reached_serves_nothing(
    clock: Clock,
) -> None:
    cache = GatedCache(clock)
    mine = limiter_on(cache, clock, limit=10, lease=4)
    other = limiter_on(cache, clock, limit=10, lease=4)
    assert await passes(mine, "mer_a")  # the counter at 4, three held here
    for _ in range(6):  # leases of 4 (to 8) and of the 2 it saw left (to 10)
        assert await passes(other, "mer_a")
    assert not await passes(other, "mer_a")
    assert [await passes(mine, "mer_a") for _ in range(4)] == [True, True, True, False]
    assert cache.incrs == [4, 4, 2, 4]  # the last, from 10 to 14, served nothing


async def test_concurrent_calls_wait_for_the_one_lease_in_flight(clock: Clock) -> None:
    cache = GatedCache(clock)
    cache.gate.clear()
    limiter = limiter_on(cache, clock, limit=100, lease=5)
    calls = [asyncio.ensure_future(passes(limiter, "mer_a")) for _ in range(5)]
    await settle()
    assert cache.incrs == [5]
    cache.gate.set()
    assert await asyncio.gather(*calls) == [True] * 5
    assert cache.incrs == [5]


async def test_a_caller_that_gives_up_leaves_its_lease_to_the_others(clock: Clock) -> None:
    cache = GatedCache(clock)
    cache.gate.clear()
    limiter = limiter_on(cache, clock, limit=100, lease=5)
    leader = asyncio.ensure_future(limiter.check("mer_a"))
    follower = asyncio.ensure_future(limiter.check("mer_a"))
    await settle()
    assert cache.incrs == [5]
    leader.cancel()
    cache.gate.set()
    await follower
    assert leader.cancelled()
    for _ in range(4):  # what the cancelled call leased is served, not lost
        await limiter.check("mer_a")
    assert cache.incrs == [5]


async def test_leases_are_dropped_with_their_window(clock: Clock) -> None:
    cache = GatedCache(clock)
    limiter = limiter_on(cache, clock, limit=100, lease=5, max_leased_merchants=2)
    for merchant in ("mer_a", "mer_b"):
        await limiter.check(merchant)
    clock.advance(1)
    for merchant in ("mer_c", "mer_d", "mer_c"):
        await limiter.check(merchant)
    assert cache.incrs == [5, 5, 5, 5]  # the old window's two left room for two new ones


async def test_past_the_merchants_a_window_leases_for_calls_are_counted_one_by_one(
    clock: Clock,
) -> None:
    cache = GatedCache(clock)
    limiter = limiter_on(cache, clock, limit=3, lease=2, max_leased_merchants=1)
    await limiter.check("mer_a")
    results = [await passes(limiter, "mer_b") for _ in range(4)]
    assert results == [True, True, True, False]
    assert cache.incrs == [2, 1, 1, 1, 1]
    await limiter.check("mer_a")  # still on its lease
    assert len(cache.incrs) == 5


async def test_calls_waiting_for_a_lease_fail_open_together_when_the_cache_fails(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = BrokenCache()
    limiter = limiter_on(cache, clock, limit=100, lease=5, retry_seconds=1.0)
    with caplog.at_level(logging.WARNING, logger="pi.platform.runtime.ratelimit"):
        assert all(await asyncio.gather(*(passes(limiter, "mer_a") for _ in range(10))))
    assert cache.calls == 1
    assert len(caplog.records) == 1
    cache.broken = False
    clock.advance(1.0)
    assert [await passes(limiter, "mer_a") for _ in range(101)] == [True] * 100 + [False]
    assert cache.calls == 21


# --- the status a client sees --------------------------------------------------------------


def test_the_status_carries_error_info_and_retry_info() -> None:
    error = ResourceExhausted(
        "Too many requests.",
        reason=RATE_LIMITED,
        metadata={"limit": "3", "retry_after_seconds": "1"},
        retry_after=0.25,
    )
    proto = to_status_proto(error)
    assert proto.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert proto.details[0].Unpack(info)
    assert (info.reason, dict(info.metadata)) == (
        RATE_LIMITED,
        {"limit": "3", "retry_after_seconds": "1"},
    )
    assert proto.details[1].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 250
    assert len(proto.details) == 2


def test_resource_exhausted_without_a_delay_has_no_retry_info() -> None:
    assert len(to_status_proto(ResourceExhausted("quota")).details) == 1


def test_retry_info_survives_the_round_trip_to_a_calling_service() -> None:
    status = to_grpc_status(ResourceExhausted("slow down", reason=RATE_LIMITED, retry_after=0.5))

    class Failed(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return status.code

        def details(self) -> str:
            return str(status.details)

        def trailing_metadata(self) -> Any:
            return status.trailing_metadata

    rebuilt = error_from_rpc_error(Failed())
    assert isinstance(rebuilt, ResourceExhausted)
    assert (rebuilt.reason, rebuilt.retry_after) == (RATE_LIMITED, 0.5)
    assert status_pb2.Status.FromString(status.trailing_metadata[0][1]).message == "slow down"


# --- from settings -------------------------------------------------------------------------


def settings(**overrides: Any) -> TransactionsSettings:
    base = TransactionsSettings.from_env(
        {
            "PI_ADMIN_TOKEN": "admin-token",
            "PI_SERVICE_TOKEN": "service-token",
            "PI_MASTER_KEYS": "1=" + "A" * 43 + "=",
            "DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused",
            "PI_ENVIRONMENT": "development",
        },
    )
    return dataclasses.replace(base, **overrides)


async def test_a_limit_of_zero_builds_no_limiter() -> None:
    assert create_rate_limiter(settings(rate_limit_per_merchant=0)) is None


async def test_without_redis_the_counters_are_in_process() -> None:
    limiter = create_rate_limiter(settings())
    assert limiter is not None
    assert (limiter.limit, type(limiter.cache)) == (100, MemoryCache)
    assert limiter.lease == 1  # in process, a count costs no round trip to save


async def test_with_redis_the_counters_are_in_redis() -> None:
    limiter = create_rate_limiter(
        settings(redis_url="redis://127.0.0.1:1/0", rate_limit_per_merchant=1000)
    )
    assert limiter is not None
    assert (limiter.limit, limiter.lease) == (1000, 50)
    assert isinstance(limiter.cache, RedisCache)  # connects lazily: no I/O here
    await limiter.cache.close()
