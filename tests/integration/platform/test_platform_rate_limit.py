"""Per-merchant rate limits through a real in-process grpc.aio server with the real
interceptors (error → auth → rate limit), counted in real Redis and in the in-process
cache."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.platform.cache import Cache, MemoryCache, RedisCache
from pi.platform.kernel.errors import ResourceExhausted
from pi.platform.kernel.principal import current_principal
from pi.platform.runtime.interceptors import AuthInterceptor, RateLimitInterceptor
from pi.platform.runtime.ratelimit import RATE_LIMITED, RateLimiter, create_rate_limiter
from pi.platform.runtime.server import create_server
from pi.platform.runtime.wiring import authentication
from pi.platform.security.tokens import RevocationList, StaticKeySource, TokenVerifier
from tests.support.processes import free_port

ADMIN, SERVICE = "adm_rate_limit_test", "svc_rate_limit_test"
PUBLIC = ["/pi.auth.v1.AuthService/GetJwks", "/pi.auth.v1.AuthService/IssueToken"]
START = 1_700_000_000.25  # a quarter into a window


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class _Servicer(auth_pb2_grpc.AuthServiceServicer):
    """Answers with who called: `<kind>:<merchant id>`."""

    async def ListApiKeys(self, request: Any, context: Any) -> Any:
        return auth_pb2.ListApiKeysResponse(next_page_token=_caller())

    async def GetJwks(self, request: Any, context: Any) -> Any:
        return auth_pb2.GetJwksResponse(keys=[auth_pb2.JsonWebKey(kid=_caller())])

    async def IssueToken(self, request: Any, context: Any) -> Any:
        return auth_pb2.IssueTokenResponse(access_token=_caller())


def _caller() -> str:
    principal = current_principal()
    return "anonymous" if principal is None else f"{principal.kind}:{principal.merchant_id or ''}"


Serve = Callable[..., Awaitable[auth_pb2_grpc.AuthServiceStub]]


@pytest.fixture
async def serve(es256_signer: Any) -> AsyncIterator[Serve]:
    """`await serve(limiter)` (or `serve(interceptors=...)`): a stub of a fresh server."""
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []

    async def start(
        limiter: RateLimiter | None = None,
        interceptors: tuple[grpc.aio.ServerInterceptor, ...] | None = None,
    ) -> auth_pb2_grpc.AuthServiceStub:
        if interceptors is None:
            assert limiter is not None
            verifier = TokenVerifier(
                StaticKeySource({es256_signer.kid: es256_signer.public_key}),
                RevocationList(),
                "pi-platform",
                "pi-api",
            )
            auth = AuthInterceptor(verifier, ADMIN, SERVICE, public_methods=PUBLIC)
            interceptors = (auth, RateLimitInterceptor(limiter))
        server = create_server(interceptors)
        auth_pb2_grpc.add_AuthServiceServicer_to_server(_Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return auth_pb2_grpc.AuthServiceStub(channel)

    yield start
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop(None)


@pytest.fixture(params=["redis", "memory"])
async def cache(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Cache]:
    """Counters in real Redis (a prefix unique to the test) or in this process."""
    made: Cache
    if request.param == "redis":
        made = RedisCache(redis_url, prefix=request.getfixturevalue("redis_prefix"))
    else:
        made = MemoryCache()
    yield made
    await made.close()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def list_keys(stub: auth_pb2_grpc.AuthServiceStub, token: str) -> str:
    reply = await stub.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=bearer(token))
    return reply.next_page_token


async def limited(stub: auth_pb2_grpc.AuthServiceStub, token: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await list_keys(stub, token)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    return info.value


def error_details(
    error: grpc.aio.AioRpcError,
) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo]:
    status = rpc_status.from_call(error)
    assert status is not None
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert status.details[1].Unpack(retry)
    return info, retry


async def test_n_calls_pass_the_next_is_rate_limited_and_the_next_window_passes(
    serve: Serve, cache: Cache, es256_signer: Any
) -> None:
    clock = Clock()
    stub = await serve(RateLimiter(cache, service="auth", limit=3, clock=clock))
    token = es256_signer.sign("mer_a")
    for _ in range(3):
        assert await list_keys(stub, token) == "merchant:mer_a"

    error = await limited(stub, token)
    info, retry = error_details(error)
    assert (info.reason, info.domain) == (RATE_LIMITED, "pi.platform")
    assert dict(info.metadata) == {"limit": "3", "retry_after_seconds": "1"}
    assert retry.retry_delay.ToMilliseconds() == 750
    assert error.details() and "3 per second" in error.details()

    clock.now += 0.75  # the next window
    for _ in range(3):
        assert await list_keys(stub, token) == "merchant:mer_a"
    await limited(stub, token)


async def test_merchants_are_limited_independently(
    serve: Serve, cache: Cache, es256_signer: Any
) -> None:
    stub = await serve(RateLimiter(cache, service="auth", limit=2, clock=Clock()))
    a, b = es256_signer.sign("mer_a"), es256_signer.sign("mer_b")
    for _ in range(2):
        await list_keys(stub, a)
    await limited(stub, a)
    for _ in range(2):
        assert await list_keys(stub, b) == "merchant:mer_b"
    await limited(stub, b)


async def test_admin_service_and_anonymous_calls_are_not_limited(
    serve: Serve, cache: Cache, es256_signer: Any
) -> None:
    stub = await serve(RateLimiter(cache, service="auth", limit=1, clock=Clock()))
    for _ in range(5):
        assert await list_keys(stub, ADMIN) == "admin:"
        assert await list_keys(stub, SERVICE) == "service:"
        jwks = await stub.GetJwks(auth_pb2.GetJwksRequest())
        assert jwks.keys[0].kid == "anonymous"
        issued = await stub.IssueToken(auth_pb2.IssueTokenRequest(api_key_id="key_1"))
        assert issued.access_token == "anonymous"
    token = es256_signer.sign("mer_a")
    await list_keys(stub, token)  # while a merchant is limited as usual
    await limited(stub, token)


async def test_replicas_of_a_service_share_the_count_in_redis(
    serve: Serve, redis_url: str, redis_prefix: str, es256_signer: Any
) -> None:
    clock = Clock()
    caches = [RedisCache(redis_url, prefix=redis_prefix) for _ in range(2)]
    try:
        one, two = [
            await serve(RateLimiter(c, service="payments", limit=4, clock=clock)) for c in caches
        ]
        token = es256_signer.sign("mer_a")
        for stub in (one, two, one, two):
            await list_keys(stub, token)
        await limited(one, token)
        await limited(two, token)
    finally:
        for c in caches:
            await c.close()


async def test_the_counter_is_one_redis_key_per_merchant_and_second_with_a_ttl(
    serve: Serve, redis_url: str, redis_prefix: str, es256_signer: Any
) -> None:
    cache = RedisCache(redis_url, prefix=redis_prefix)
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        stub = await serve(RateLimiter(cache, service="payments", limit=5, clock=Clock()))
        token = es256_signer.sign("mer_a")
        await list_keys(stub, token)
        await list_keys(stub, token)
        key = f"{redis_prefix}pi:rl:payments:mer_a:{int(START)}"
        assert await client.get(key) == b"2"
        assert 0 < await client.pttl(key) <= 2000
    finally:
        await client.aclose()
        await cache.close()


async def test_with_redis_down_calls_fail_open_with_one_warning(
    serve: Serve, es256_signer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    down = RedisCache(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    try:
        stub = await serve(RateLimiter(down, service="payments", limit=1))
        token = es256_signer.sign("mer_a")
        with caplog.at_level(logging.WARNING, logger="pi.platform.runtime.ratelimit"):
            for _ in range(5):
                assert await list_keys(stub, token) == "merchant:mer_a"
        warnings = [r for r in caplog.records if r.name == "pi.platform.runtime.ratelimit"]
        assert len(warnings) == 1, warnings
    finally:
        await down.close()


async def test_a_redis_that_hangs_delays_calls_at_most_by_the_short_timeout(
    serve: Serve, settings_factory: Any, es256_signer: Any
) -> None:
    """A server that accepts connections and never answers, like a wedged Redis."""
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    hung = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    settings = settings_factory(
        "payments",
        database_url="postgresql://unused@127.0.0.1:1/unused",
        redis_url=f"redis://127.0.0.1:{port}/0",
        rate_limit_per_merchant=1,
    )
    limiter = create_rate_limiter(settings)
    assert limiter is not None
    try:
        stub = await serve(limiter)
        token = es256_signer.sign("mer_a")
        started = time.monotonic()
        await list_keys(stub, token)
        assert time.monotonic() - started < 1.0
        started = time.monotonic()
        for _ in range(5):  # Redis is left alone for a while: no waiting at all
            await list_keys(stub, token)
        assert time.monotonic() - started < 0.5
    finally:
        await limiter.cache.close()
        for writer in accepted:
            writer.close()
        hung.close()
        await hung.wait_closed()


# --- leases: many calls per round trip ----------------------------------------------------


class CountingCache:
    """`cache`, recording the amount of every `incr`: one entry per round trip."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.incrs: list[int] = []

    async def incr(self, key: str, ttl: float | None = None, amount: int = 1) -> int:
        self.incrs.append(amount)
        return await self.cache.incr(key, ttl, amount)

    def __getattr__(self, name: str) -> Any:  # the rest of the Cache protocol
        return getattr(self.cache, name)


async def passed(limiter: RateLimiter, merchant_id: str) -> bool:
    try:
        await limiter.check(merchant_id)
    except ResourceExhausted:
        return False
    return True


async def test_with_leases_exactly_the_limit_passes_and_the_next_call_has_the_details(
    serve: Serve, cache: Cache, es256_signer: Any
) -> None:
    clock = Clock()
    limiter = RateLimiter(cache, service="auth", limit=100, clock=clock)
    assert limiter.lease == 5
    stub = await serve(limiter)
    token = es256_signer.sign("mer_a")
    for _ in range(100):
        assert await list_keys(stub, token) == "merchant:mer_a"

    error = await limited(stub, token)
    info, retry = error_details(error)
    assert (info.reason, info.domain) == (RATE_LIMITED, "pi.platform")
    assert dict(info.metadata) == {"limit": "100", "retry_after_seconds": "1"}
    assert retry.retry_delay.ToMilliseconds() == 750
    await limited(stub, token)

    clock.now += 0.75  # the next window
    for _ in range(100):
        await list_keys(stub, token)
    await limited(stub, token)


async def test_a_lease_that_would_cross_the_limit_takes_only_what_is_left(
    redis_url: str, redis_prefix: str
) -> None:
    client = redis_asyncio.Redis.from_url(redis_url)
    cache = CountingCache(RedisCache(redis_url, prefix=redis_prefix))
    try:
        limiter = RateLimiter(cache, service="payments", limit=103, clock=Clock())
        results = [await passed(limiter, "mer_a") for _ in range(110)]
        assert results == [True] * 103 + [False] * 7
        assert cache.incrs == [5] * 20 + [3]  # the refusals are not even asked about
        assert await client.get(f"{redis_prefix}pi:rl:payments:mer_a:{int(START)}") == b"103"
    finally:
        await client.aclose()
        await cache.close()


async def test_concurrent_calls_of_one_merchant_share_one_lease_at_a_time(
    redis_url: str, redis_prefix: str
) -> None:
    cache = CountingCache(RedisCache(redis_url, prefix=redis_prefix))
    try:
        limiter = RateLimiter(cache, service="payments", limit=100, clock=Clock())
        results = await asyncio.gather(*(passed(limiter, "mer_a") for _ in range(200)))
        assert results.count(True) == 100
        assert cache.incrs == [5] * 20
    finally:
        await cache.close()


async def test_1000_calls_take_one_round_trip_per_lease_and_window(
    redis_url: str, redis_prefix: str
) -> None:
    clock = Clock()
    cache = CountingCache(RedisCache(redis_url, prefix=redis_prefix))
    try:
        limiter = RateLimiter(cache, service="payments", limit=1_000_000, clock=clock)
        assert limiter.lease == 50
        windows = 4
        for _ in range(windows):
            for _ in range(250):
                await limiter.check("mer_a")
            clock.now += 1.0
        assert len(cache.incrs) <= 1000 // limiter.lease + windows
        assert len(cache.incrs) == 4 * 5  # each window: 250 calls, 5 leases of 50

        one_by_one = CountingCache(cache.cache)
        unleased = RateLimiter(one_by_one, service="auth", limit=1_000_000, clock=clock, lease=1)
        for _ in range(1000):
            await unleased.check("mer_a")
        assert len(one_by_one.incrs) == 1000
    finally:
        await cache.close()


async def test_two_replicas_never_pass_more_than_the_limit_nor_refuse_before_the_bound(
    redis_url: str, redis_prefix: str
) -> None:
    limit, lease = 100, 5
    caches = [RedisCache(redis_url, prefix=redis_prefix) for _ in range(2)]
    try:
        one, two = [RateLimiter(c, service="payments", limit=limit, clock=Clock()) for c in caches]
        assert one.lease == two.lease == lease
        # The worst case: one replica serves a call and holds the rest of its lease.
        assert await passed(one, "mer_a")
        served = 1
        while await passed(two, "mer_a"):
            served += 1
        assert served == limit - (lease - 1)  # the bound, reached
        while await passed(one, "mer_a"):  # what the first replica held still passes
            served += 1
        assert served == limit
        assert not await passed(two, "mer_a")

        # Random interleavings of both replicas, in a window (merchant) each.
        rng = random.Random(7)
        for trial in range(20):
            merchant = f"mer_{trial}"
            outcomes = [await passed(rng.choice((one, two)), merchant) for _ in range(limit + 50)]
            first_refusal = outcomes.index(False)
            assert first_refusal >= limit - (lease - 1), (trial, first_refusal)
            assert outcomes.count(True) <= limit

        # And all at once.
        concurrent = await asyncio.gather(
            *(passed(one if i % 3 else two, "mer_b") for i in range(2 * limit))
        )
        assert limit - (lease - 1) <= concurrent.count(True) <= limit
    finally:
        for c in caches:
            await c.close()


async def test_with_redis_down_leased_calls_fail_open_with_one_warning(
    es256_signer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    down = CountingCache(RedisCache(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5))
    try:
        limiter = RateLimiter(down, service="payments", limit=1000, clock=Clock())
        assert limiter.lease == 50
        with caplog.at_level(logging.WARNING, logger="pi.platform.runtime.ratelimit"):
            results = await asyncio.gather(*(passed(limiter, "mer_a") for _ in range(20)))
            results += [await passed(limiter, "mer_a") for _ in range(20)]
        assert all(results)
        assert down.incrs == [50]  # one lease tried for the 20 at once, then left alone
        warnings = [r for r in caplog.records if r.name == "pi.platform.runtime.ratelimit"]
        assert len(warnings) == 1, warnings
    finally:
        await down.close()


# --- as the services wire it ---------------------------------------------------------------


async def _at_the_start_of_a_second() -> None:
    """So that a few quick calls on the real clock fall in one window."""
    await asyncio.sleep(1.02 - time.time() % 1)


@pytest.mark.parametrize("backend", ["redis", "memory"])
async def test_services_install_auth_then_the_limit_from_settings(
    backend: str, serve: Serve, settings_factory: Any, redis_url: str, es256_signer: Any
) -> None:
    settings = settings_factory(
        "payments",
        database_url="postgresql://unused@127.0.0.1:1/unused",
        redis_url=redis_url if backend == "redis" else None,
        rate_limit_per_merchant=2,
    )
    callers = authentication(
        settings, keys=StaticKeySource({es256_signer.kid: es256_signer.public_key})
    )
    try:
        auth, rate_limit = callers.interceptors
        assert isinstance(auth, AuthInterceptor) and isinstance(rate_limit, RateLimitInterceptor)
        assert rate_limit.limiter.limit == 2
        stub = await serve(interceptors=callers.interceptors)
        token = es256_signer.sign(f"mer_{uuid.uuid4().hex}")
        await _at_the_start_of_a_second()
        await list_keys(stub, token)
        await list_keys(stub, token)
        await limited(stub, token)
        assert await list_keys(stub, settings.admin_token) == "admin:"
    finally:
        await callers.close()


async def test_a_limit_of_zero_installs_no_rate_limit(
    settings_factory: Any, es256_signer: Any
) -> None:
    settings = settings_factory(
        "payments", database_url="postgresql://unused@127.0.0.1:1/unused", rate_limit_per_merchant=0
    )
    callers = authentication(
        settings, keys=StaticKeySource({es256_signer.kid: es256_signer.public_key})
    )
    assert callers.interceptors == (callers.interceptor,)
    assert callers.caches == []
    await callers.close()
