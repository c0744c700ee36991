"""Failed secrets and the throttle rule (PCI DSS 8.3.4): progressive delays, no lockout.

Failures are counted twice: per client address (the attacker's cost) and per API key
(the target's exposure). Key ids are not secret (every token carries one), so a rule that
locked a key for everyone would let anyone lock any merchant out. Instead:

- an address that keeps failing waits longer and longer before its next attempt, whatever
  key it tries;
- a key that keeps failing makes *failing* clients wait longer and longer before they may
  try it again, while a client with no recent failure still gets its answer at once
  (the right secret works; a wrong one makes that client a failing one).

Credential stuffing then costs an address per guess at a key under attack, and each
address a growing delay per guess at any key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True)
class LoginFailures:
    """Failed secrets recorded for one subject (a key id, or a client address).

    `recent` holds the times of the latest failures, oldest first, at most `tracked` of
    the policy's, so the record stays small. `locked_until` is when the next attempt is
    allowed (None: now).
    """

    recent: tuple[datetime, ...] = ()
    locked_until: datetime | None = None


@dataclass(frozen=True)
class ThrottlePolicy:
    """`free_failures` failures within `window` cost nothing; each further one delays the
    next attempt by `base_delay`, doubled per failure, up to `max_delay`.

    Attempts while delayed are refused without counting and do not extend the delay.
    Success does not clear failures: they age out of the window, so an attacker cannot
    reset the count by slipping a good call in between guesses.
    """

    free_failures: int = 5
    base_delay: timedelta = field(default=timedelta(seconds=1))
    max_delay: timedelta = field(default=timedelta(minutes=15))
    window: timedelta = field(default=timedelta(minutes=30))

    @property
    def tracked(self) -> int:
        # Enough failures to reach the longest delay; older ones change no answer.
        steps = 0
        while self.base_delay * 2**steps < self.max_delay:
            steps += 1
        return self.free_failures + steps + 2

    def delay_after(self, failures: int) -> timedelta:
        """The wait imposed after the `failures`-th failure within the window."""
        if failures <= self.free_failures:
            return timedelta(0)
        doublings = min(failures - self.free_failures - 1, 40)
        delay: timedelta = self.base_delay * 2**doublings
        return min(delay, self.max_delay)

    def is_locked(self, state: LoginFailures, now: datetime) -> bool:
        return state.locked_until is not None and now < state.locked_until

    def is_failing(self, state: LoginFailures, now: datetime) -> bool:
        """Whether the subject failed within the window (its key-throttle exemption ends)."""
        return any(t > now - self.window for t in state.recent)

    def after_failure(self, state: LoginFailures, now: datetime) -> LoginFailures:
        """The state after one more failed attempt at `now` (only while not delayed)."""
        if self.is_locked(state, now):
            return state
        horizon = now - self.window
        recent = (*(t for t in state.recent if t > horizon), now)[-self.tracked :]
        delay = self.delay_after(len(recent))
        return LoginFailures(recent=recent, locked_until=now + delay if delay else None)

    def is_stale(self, state: LoginFailures, now: datetime) -> bool:
        """Whether the record no longer affects any answer and can be deleted."""
        if self.is_locked(state, now):
            return False
        return all(t <= now - self.window for t in state.recent)


#: Per API key: a key whose secret is being guessed slows failing clients down early.
KEY_POLICY = ThrottlePolicy(free_failures=5)
#: Per client address: room for a few typos and a misconfigured deploy or two behind NAT.
ADDRESS_POLICY = ThrottlePolicy(free_failures=10)
