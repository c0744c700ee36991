"""How the auth service spreads token revocations.

1. The use case commits the revocation to `revoked_tokens` (the source of truth).
2. `RevocationFanout` adds it to this process's `RevocationList` at once, so the very next
   call here with that token is rejected, and publishes it on `pi:revocations`, so every
   subscribed verifier (other services, other auth replicas) rejects it within
   milliseconds when Redis is up.
3. Independently, every other service polls `AuthInternalService.ListRevokedTokens`
   (platform `RevocationPoller`), and each auth replica polls its own store
   (`StoreRevocationPoller`), so a lost publish or a missing Redis delays a revocation by
   at most one poll interval (`PI_REVOCATION_POLL_SECONDS`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from pi.auth.domain import RevokedToken
from pi.platform.cache import Cache, CacheError
from pi.platform.security.tokens import RevocationList, publish_revocation

_log = logging.getLogger(__name__)


class RevocationFanout:
    """The `RevocationSink` of the running service."""

    def __init__(self, local: RevocationList, cache: Cache | None) -> None:
        self._local = local
        self._cache = cache

    async def revoked(self, tokens: Sequence[RevokedToken]) -> None:
        for token in tokens:
            self._local.add(token.token_id, token.expire_time.timestamp())
        if self._cache is None:
            return
        for token in tokens:
            try:
                await publish_revocation(
                    self._cache, token.token_id, int(token.expire_time.timestamp())
                )
            except CacheError as exc:
                # Pollers still deliver it; publishing only makes it faster.
                _log.warning("publishing a revocation failed: %s", exc)


class StoreRevocationPoller:
    """Keeps this replica's `RevocationList` complete from its own database."""

    OVERLAP = timedelta(seconds=60)

    def __init__(
        self,
        load: Callable[[datetime | None], Awaitable[list[RevokedToken]]],
        local: RevocationList,
        *,
        interval: float,
    ) -> None:
        self._load = load
        self._local = local
        self._interval = interval
        self._watermark: datetime | None = None

    async def poll_once(self) -> int:
        after = None if self._watermark is None else self._watermark - self.OVERLAP
        revoked = await self._load(after)
        for token in revoked:
            self._local.add(token.token_id, token.expire_time.timestamp())
            if self._watermark is None or token.revoke_time > self._watermark:
                self._watermark = token.revoke_time
        self._local.prune()
        return len(revoked)

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:
                _log.exception("loading revocations from the store failed")
            await asyncio.sleep(self._interval)
