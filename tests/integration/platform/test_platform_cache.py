"""The cache contract, on real Redis and in memory."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pi.platform.cache import Cache, CacheError, MemoryCache, RedisCache, create_cache
from pi.platform.config import ServiceSettings


@pytest.fixture(params=["redis", "memory"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    backend: Cache
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_url")
        backend = RedisCache(redis_url, prefix=request.getfixturevalue("redis_prefix"))
    else:
        backend = MemoryCache()
    yield backend
    await backend.close()


async def test_get_set_delete(cache: Cache) -> None:
    assert await cache.get("k") is None
    await cache.set("k", b"v")
    assert await cache.get("k") == b"v"
    await cache.delete("k")
    assert await cache.get("k") is None


async def test_values_expire_after_ttl(cache: Cache) -> None:
    await cache.set("short", b"v", ttl=0.1)
    await cache.set("long", b"v", ttl=10)
    await asyncio.sleep(0.25)
    assert await cache.get("short") is None
    assert await cache.get("long") == b"v"


async def test_add_only_sets_an_absent_key(cache: Cache) -> None:
    assert await cache.add("lock", b"a", ttl=5)
    assert not await cache.add("lock", b"b", ttl=5)
    assert await cache.get("lock") == b"a"


async def test_incr_counts_and_the_window_expires(cache: Cache) -> None:
    assert await cache.incr("rate", ttl=0.2) == 1
    assert await cache.incr("rate", ttl=0.2) == 2
    assert await cache.incr("rate", ttl=0.2, amount=3) == 5
    await asyncio.sleep(0.35)
    assert await cache.incr("rate", ttl=0.2) == 1


async def test_concurrent_incr_loses_no_update(cache: Cache) -> None:
    results = await asyncio.gather(*(cache.incr("n", ttl=5) for _ in range(50)))
    assert sorted(results) == list(range(1, 51))


async def test_publish_reaches_subscribers(cache: Cache) -> None:
    async with cache.subscribe("chan") as first, cache.subscribe("chan") as second:
        await cache.publish("chan", b"hello")
        await cache.publish("other", b"not for us")
        await cache.publish("chan", b"world")
        for messages in (first, second):
            got = [await asyncio.wait_for(anext(messages), 3) for _ in range(2)]
            assert got == [b"hello", b"world"]


async def test_publish_without_subscribers_is_fine(cache: Cache) -> None:
    await cache.publish("nobody", b"x")


async def test_redis_prefix_isolates_keys_and_channels(redis_url: str, redis_prefix: str) -> None:
    a = RedisCache(redis_url, prefix=redis_prefix + "a:")
    b = RedisCache(redis_url, prefix=redis_prefix + "b:")
    try:
        await a.set("k", b"a")
        assert await b.get("k") is None
    finally:
        await a.close()
        await b.close()


async def test_redis_down_raises_cache_error() -> None:
    cache = RedisCache("redis://127.0.0.1:1/0", socket_timeout=0.5)
    try:
        with pytest.raises(CacheError):
            await cache.get("k")
    finally:
        await cache.close()


def test_create_cache_picks_redis_only_when_configured(
    settings_factory: Any, redis_url: str
) -> None:
    settings: ServiceSettings = settings_factory(
        "payments", database_url="postgresql://unused@127.0.0.1:1/unused"
    )
    assert isinstance(create_cache(settings), MemoryCache)
    assert isinstance(create_cache(settings_factory("payments", redis_url=redis_url)), RedisCache)


async def test_memory_cache_evicts_when_full() -> None:
    cache = MemoryCache(max_entries=3)
    for i in range(5):
        await cache.set(f"k{i}", b"v")
    assert await cache.get("k4") == b"v"
    assert await cache.get("k0") is None
