"""Faults the sandbox processor can inject, for fault runs (`make chaos`) only.

Off unless a setting turns them on (`PI_SANDBOX_UNKNOWN_PERCENT`,
`PI_SANDBOX_CRASH_PERCENT`; see `pi.payments.settings`):

- unknown: that share of calls answers TIMEOUT. Half of them never reach the processor
  (nothing happens), half lose the answer (the processor did it): the caller cannot tell
  which, as with a real network timeout;
- crash: after that share of APPROVED or PENDING answers, already recorded in the
  processor's book, the payment process kills itself with SIGKILL before the caller gets
  the answer: the moment between the processor's approval and the settle commit.
"""

from __future__ import annotations

import enum
import os
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from pi.payments.domain import ConnectorResult, ProcessorOutcome

__all__ = ["NO_FAULTS", "Fault", "SandboxFaults"]


class Fault(enum.Enum):
    LOST_REQUEST = "lost request"
    LOST_ANSWER = "lost answer"


def _kill_this_process() -> None:  # pragma: no cover - the process ends here
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class SandboxFaults:
    """Shares in percent (0 to 100) of calls that time out and of approvals that crash."""

    unknown_percent: float = 0.0
    crash_percent: float = 0.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)
    crash: Callable[[], None] = field(default=_kill_this_process, compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.unknown_percent > 0 or self.crash_percent > 0

    def draw(self) -> Fault | None:
        """Whether this call's request or answer is lost."""
        if self.unknown_percent <= 0 or self.rng.random() * 100 >= self.unknown_percent:
            return None
        return Fault.LOST_REQUEST if self.rng.random() < 0.5 else Fault.LOST_ANSWER

    def answer(self, result: ConnectorResult, fault: Fault | None) -> ConnectorResult:
        """What the caller gets for `result`, which the processor has recorded."""
        if fault is Fault.LOST_ANSWER:
            return ConnectorResult.timeout()
        agreed = result.outcome in (ProcessorOutcome.APPROVED, ProcessorOutcome.PENDING)
        if agreed and self.crash_percent > 0 and self.rng.random() * 100 < self.crash_percent:
            self.crash()
        return result


NO_FAULTS = SandboxFaults()
