"""The signing-key lifecycle: the first key at start-up, rotation (`rotate-keys`),
retirement (housekeeping), and what running servers load.

Exactly one key is current (the database enforces it). A rotated key becomes previous
and keeps verifying until every token it may have signed has expired (`verify_until`),
then it is retired and its private half erased.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from pi.auth.app.ports import Clock, SigningKeyGenerator, UnitOfWork, UnitsOfWork
from pi.auth.domain import signing_keys
from pi.auth.domain.signing_keys import StoredKey
from pi.platform.kernel.errors import Aborted
from pi.platform.kernel.units import Mode, optimistically

_log = logging.getLogger(__name__)


class SigningKeyLifecycle:
    def __init__(
        self,
        units: UnitsOfWork,
        generator: SigningKeyGenerator,
        *,
        max_token_ttl: timedelta,
        signer_lag: timedelta,
        clock: Clock,
    ) -> None:
        self._units = units
        self._generator = generator
        self._max_token_ttl = max_token_ttl
        self._signer_lag = signer_lag
        self._clock = clock

    async def ensure_current(self) -> str:
        """The current key's kid, creating the first key if there is none.

        Processes starting at once may all try: one key becomes current, the others'
        attempts conflict and then read the winner's key. Under locks too: with no key
        yet there is no row to lock, so two LOCKED attempts can both find none and one
        insert loses to the other's (Aborted); the loser then reads the winner's key.
        """

        async def first_key(unit: UnitOfWork) -> str:
            async with unit:
                kid = await unit.signing_keys.current_kid()
                if kid is not None:
                    return kid
                new = self._generator.generate()
                unit.signing_keys.add_current(new, self._clock())
                await unit.commit()
                _log.info("created the first signing key", extra={"kid": new.kid})
                return new.kid

        try:
            return await optimistically(self._units, first_key)
        except Aborted:
            async with self._units(Mode.READ) as unit:
                kid = await unit.signing_keys.current_kid()
            if kid is None:
                raise
            return kid

    async def rotate(self) -> str:
        """Make a new current key; the old one verifies until its tokens have expired."""
        now = self._clock()
        new = self._generator.generate()
        async with self._units(Mode.LOCKED) as unit:
            old = await unit.signing_keys.current_kid()
            if old is not None:
                until = signing_keys.verify_until(
                    now, max_ttl=self._max_token_ttl, signer_lag=self._signer_lag
                )
                unit.signing_keys.demote(old, now=now, verify_until=until)
            unit.signing_keys.add_current(new, now)
            retired = await self._retire(unit, now)
            await unit.commit()
        _log.info(
            "rotated signing keys", extra={"kid": new.kid, "previous": old, "retired": retired}
        )
        return new.kid

    async def retire_expired(self) -> list[str]:
        """Retire the previous keys no live token can need any more; their kids."""
        async with self._units(Mode.LOCKED) as unit:
            retired = await self._retire(unit, self._clock())
            await unit.commit()
        return retired

    async def published(self) -> list[StoredKey]:
        """Current and previous keys, for the running key ring."""
        async with self._units(Mode.READ) as unit:
            return await unit.signing_keys.published()

    async def _retire(self, unit: UnitOfWork, now: datetime) -> list[str]:
        kids = await unit.signing_keys.expired_previous(now)
        if kids:
            unit.signing_keys.retire(kids)
        return kids
