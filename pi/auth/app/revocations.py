"""ListRevokedTokens (AuthInternalService): revocations of unexpired tokens, oldest first.

Other services poll it (service credential only) to keep their verifiers' revocation
lists complete; this service's replicas read the same list through `since`.
"""

from __future__ import annotations

from datetime import datetime

from pi.auth.app.ports import Clock, UnitsOfWork
from pi.auth.domain.tokens import RevokedToken
from pi.platform.kernel.principal import Principal, require_service
from pi.platform.kernel.units import Mode


class ListRevokedTokens:
    def __init__(self, units: UnitsOfWork, clock: Clock) -> None:
        self._units = units
        self._clock = clock

    async def __call__(
        self, principal: Principal, revoked_after: datetime | None
    ) -> list[RevokedToken]:
        require_service(principal)
        return await self.since(revoked_after)

    async def since(self, revoked_after: datetime | None) -> list[RevokedToken]:
        """Revocations recorded after `revoked_after` (all if None), for any caller."""
        async with self._units(Mode.READ) as unit:
            return await unit.tokens.revoked_since(revoked_after, self._clock())
