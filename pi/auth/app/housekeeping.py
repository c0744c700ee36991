"""Housekeeping: forget what no longer matters to anyone (run every few minutes).

Expired tokens (issued and revoked), failure records that can no longer lock anything,
and idempotency keys past their retention.
"""

from __future__ import annotations

from datetime import timedelta

from pi.auth.app import idempotency
from pi.auth.app.ports import Clock, UnitsOfWork
from pi.auth.domain.throttle import ThrottlePolicy
from pi.platform.kernel.units import Mode


class PurgeExpired:
    def __init__(self, units: UnitsOfWork, lockout: ThrottlePolicy, clock: Clock) -> None:
        self._units = units
        self._lockout = lockout
        self._clock = clock

    async def __call__(self, idempotency_retention: timedelta = idempotency.RETENTION) -> int:
        """How many records were deleted."""
        if idempotency_retention < idempotency.RETENTION:
            raise ValueError("idempotency keys are kept at least 24 hours")
        now = self._clock()
        # Deletes only, nothing read: an optimistic unit sends them all with its BEGIN.
        async with self._units(Mode.OPTIMISTIC) as unit:
            counts = [
                unit.tokens.forget_expired(now),
                unit.failed_logins.forget_stale(now - self._lockout.window, now),
                unit.idempotency.forget_before(now - idempotency_retention),
            ]
            await unit.commit()
        return sum(count.value for count in counts)
