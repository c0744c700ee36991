"""Failed secrets per client address in the platform cache (the app's `AddressFailures`).

One small JSON value per address that failed recently, under `pi:auth:failures:<address>`,
expiring with the throttle window: Redis shares it between auth replicas; without Redis
it lives in this process. Concurrent failures from one address may overwrite each
other's count (read, then write): the throttle is a brake, not a ledger, and the per-key
record in PostgreSQL counts every failure under a lock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from pi.auth.domain.throttle import LoginFailures
from pi.platform.cache import Cache

_PREFIX = "pi:auth:failures:"


class CacheAddressFailures:
    def __init__(self, cache: Cache, *, keep_for: timedelta) -> None:
        self._cache = cache
        self._keep_for = keep_for

    async def get(self, address: str) -> LoginFailures:
        raw = await self._cache.get(_PREFIX + address)
        if raw is None:
            return LoginFailures()
        try:
            data = json.loads(raw)
            recent = tuple(_from_ms(int(ms)) for ms in data["r"])
            until = None if data["u"] is None else _from_ms(int(data["u"]))
        except (ValueError, KeyError, TypeError):
            return LoginFailures()
        return LoginFailures(recent, until)

    async def save(self, address: str, failures: LoginFailures) -> None:
        data = {
            "r": [_to_ms(t) for t in failures.recent],
            "u": None if failures.locked_until is None else _to_ms(failures.locked_until),
        }
        await self._cache.set(
            _PREFIX + address, json.dumps(data).encode(), ttl=self._keep_for.total_seconds()
        )


def _to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)
