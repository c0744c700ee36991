"""The auth service's background work, besides the platform's (revocation listeners):

- `StoreRevocationPoller`: keeps this replica's `RevocationList` complete from the
  database, whatever pub/sub delivered.
- `Housekeeping`: forgets expired tokens, stale failure records and old idempotency
  keys, and retires signing keys no token can need any more.

The key ring refreshes itself (`KeyRing.run_refresher`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from pi.auth.app.housekeeping import PurgeExpired
from pi.auth.app.signing_keys import SigningKeyLifecycle
from pi.auth.domain.tokens import RevokedToken
from pi.platform.security.tokens import RevocationList

_log = logging.getLogger(__name__)

#: How often housekeeping runs, in seconds.
HOUSEKEEPING_SECONDS = 600.0


class Housekeeping:
    """One pass: purge what expired, then retire signing keys (`periodic` runs it)."""

    def __init__(self, purge_expired: PurgeExpired, signing_keys: SigningKeyLifecycle) -> None:
        self._purge_expired = purge_expired
        self._signing_keys = signing_keys

    async def __call__(self) -> None:
        await self._purge_expired()
        await self._signing_keys.retire_expired()


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
        started = self._local.now()
        revoked = await self._load(after)
        for token in revoked:
            self._local.add(token.token_id, token.expire_time.timestamp())
            if self._watermark is None or token.revoke_time > self._watermark:
                self._watermark = token.revoke_time
        self._local.prune()
        self._local.viewed(started)
        return len(revoked)

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:
                _log.exception("loading revocations from the store failed")
            await asyncio.sleep(self._interval)
