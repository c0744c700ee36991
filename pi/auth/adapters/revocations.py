"""How the auth service spreads token revocations (the app's `RevocationSink`).

1. The use case commits the revocation to `revoked_tokens` (the source of truth).
2. `RevocationFanout` adds it to this process's `RevocationList` at once, so the very next
   call here with that token is rejected, and publishes it on `pi:revocations`, so every
   subscribed verifier (other services, other auth replicas) rejects it within
   milliseconds when Redis is up.
3. Independently, every other service polls `AuthInternalService.ListRevokedTokens`
   (platform `RevocationPoller`), and each auth replica polls its own store
   (`pi.auth.entrypoints.workers.StoreRevocationPoller`), so a lost publish or a missing
   Redis delays a revocation by at most one poll interval (`PI_REVOCATION_POLL_SECONDS`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pi.auth.domain.tokens import RevokedToken
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
