"""Failed secrets and the lockout rule (PCI DSS 8.3.4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True)
class LoginFailures:
    """Failed secrets recorded for one key-id string (whether or not that key exists).

    `recent` holds the times of the latest failures, oldest first, at most as many as the
    policy's threshold, which makes the window an exact sliding window in bounded space.
    """

    recent: tuple[datetime, ...] = ()
    locked_until: datetime | None = None


@dataclass(frozen=True)
class LockoutPolicy:
    """`max_failures` failed secrets within `window` lock the key id for `duration`.

    While locked every attempt fails, even with the right secret, and does not extend the
    lock. A success does not clear earlier failures: they age out of the window, so an
    attacker cannot reset the count by timing guesses between a client's good calls.
    """

    max_failures: int = 10
    window: timedelta = field(default=timedelta(minutes=30))
    duration: timedelta = field(default=timedelta(minutes=30))

    def is_locked(self, state: LoginFailures, now: datetime) -> bool:
        return state.locked_until is not None and now < state.locked_until

    def after_failure(self, state: LoginFailures, now: datetime) -> LoginFailures:
        """The state after one more failed attempt at `now` (only while not locked)."""
        if self.is_locked(state, now):
            return state
        horizon = now - self.window
        recent = (*(t for t in state.recent if t > horizon), now)[-self.max_failures :]
        if len(recent) >= self.max_failures:
            return LoginFailures(recent=(), locked_until=now + self.duration)
        return LoginFailures(recent=recent, locked_until=None)

    def is_stale(self, state: LoginFailures, now: datetime) -> bool:
        """Whether the record no longer affects any answer and can be deleted."""
        if self.is_locked(state, now):
            return False
        return all(t <= now - self.window for t in state.recent)
