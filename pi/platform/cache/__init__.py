"""A small cache and pub/sub interface: Redis in production, in-process by default.

Redis only holds what can be lost (PostgreSQL is the record): callers treat
`CacheError` as a miss or, for rate limits, fail open. Publish/subscribe on
`MemoryCache` reaches subscribers in the same process only; cross-process delivery
needs Redis (verifiers also poll auth, so revocations still arrive without it).

    async with cache.subscribe("pi:revocations") as messages:  # subscribed on entry
        async for message in messages:
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from pi.platform.config import ServiceSettings


class CacheError(Exception):
    """The cache backend failed (e.g. Redis is unreachable)."""


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    async def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Set only if absent; True if this call set it."""

    async def delete(self, key: str) -> None: ...

    async def incr(self, key: str, ttl: float | None = None, amount: int = 1) -> int:
        """Add `amount` and return the new value; `ttl` applies when the key is created."""

    async def publish(self, channel: str, message: bytes) -> None: ...

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Subscribe on entry; iterate the messages published afterwards."""

    async def close(self) -> None: ...


def create_cache(settings: ServiceSettings, *, prefix: str = "") -> Cache:
    """`RedisCache` if `REDIS_URL` is set, else `MemoryCache`. Connects lazily."""
    if settings.redis_url:
        return RedisCache(settings.redis_url, prefix=prefix)
    return MemoryCache()


# Creates the key with its TTL if absent, then adds: the TTL is set once per key.
_INCR_WITH_TTL = """
redis.call('SET', KEYS[1], 0, 'PX', ARGV[2], 'NX')
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


class RedisCache:
    """`Cache` on Redis. `prefix` namespaces keys and channels (tests use a unique one)."""

    def __init__(self, url: str, *, prefix: str = "", socket_timeout: float = 2.0) -> None:
        self._prefix = prefix
        self._redis: redis_asyncio.Redis = redis_asyncio.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            health_check_interval=30,
        )
        self._url = url
        self._incr_with_ttl: Any = self._redis.register_script(_INCR_WITH_TTL)

    async def get(self, key: str) -> bytes | None:
        with _wrap_errors():
            value = await self._redis.get(self._prefix + key)
        return None if value is None else _as_bytes(value)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with _wrap_errors():
            await self._redis.set(self._prefix + key, value, px=_ms(ttl))

    async def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        with _wrap_errors():
            return bool(await self._redis.set(self._prefix + key, value, px=_ms(ttl), nx=True))

    async def delete(self, key: str) -> None:
        with _wrap_errors():
            await self._redis.delete(self._prefix + key)

    async def incr(self, key: str, ttl: float | None = None, amount: int = 1) -> int:
        full = self._prefix + key
        with _wrap_errors():
            if ttl is None:
                return int(await self._redis.incrby(full, amount))
            # One round trip, atomic; EVALSHA costs about half the client CPU of a
            # MULTI pipeline, which matters on the rate limiter's per-call path.
            return int(await self._incr_with_ttl(keys=[full], args=[amount, _ms(ttl)]))

    async def publish(self, channel: str, message: bytes) -> None:
        with _wrap_errors():
            await self._redis.publish(self._prefix + channel, message)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        pubsub: Any = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            with _wrap_errors():
                await pubsub.subscribe(self._prefix + channel)
            yield self._messages(pubsub)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.unsubscribe()
            await pubsub.aclose()

    async def _messages(self, pubsub: Any) -> AsyncIterator[bytes]:
        while True:
            with _wrap_errors():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message.get("type") == "message":
                yield bytes(message["data"])

    async def ping(self) -> bool:
        with _wrap_errors():
            return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


class MemoryCache:
    """`Cache` in this process's memory, with TTLs and in-process publish/subscribe."""

    def __init__(
        self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._subscribers: dict[str, set[asyncio.Queue[bytes]]] = {}
        self._max_entries = max_entries
        self._clock = clock

    async def get(self, key: str) -> bytes | None:
        return self._get(key)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._put(key, bytes(value), ttl)

    async def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        if self._get(key) is not None:
            return False
        self._put(key, bytes(value), ttl)
        return True

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def incr(self, key: str, ttl: float | None = None, amount: int = 1) -> int:
        current = self._get(key)
        if current is None:
            value = amount
            self._put(key, str(value).encode(), ttl)
        else:
            value = int(current) + amount
            expires = self._data[key][1]
            self._data[key] = (str(value).encode(), expires)
        return value

    async def publish(self, channel: str, message: bytes) -> None:
        for queue in tuple(self._subscribers.get(channel, ())):
            queue.put_nowait(bytes(message))

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._subscribers.setdefault(channel, set()).add(queue)
        try:
            yield _drain(queue)
        finally:
            subscribers = self._subscribers.get(channel)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[channel]

    async def close(self) -> None:
        self._data.clear()

    def _get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= self._clock():
            del self._data[key]
            return None
        return value

    def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        if len(self._data) >= self._max_entries and key not in self._data:
            self._evict()
        expires = None if ttl is None else self._clock() + ttl
        self._data[key] = (value, expires)

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
            del self._data[key]
        while len(self._data) >= self._max_entries:
            del self._data[next(iter(self._data))]


async def _drain(queue: asyncio.Queue[bytes]) -> AsyncIterator[bytes]:
    while True:
        yield await queue.get()


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _ms(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    return max(1, int(ttl * 1000))


@contextlib.contextmanager
def _wrap_errors() -> Any:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise CacheError(f"cache unavailable: {type(exc).__name__}") from exc
