"""The outbox as its dispatcher and its operators see it: movements committed with their
money changes, waiting for delivery, and the dead letters, movements the transaction
service kept refusing (part of `pi.payments.app.ports`, which exports these names)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pi.platform.ledger import Movement

__all__ = ["DeadLetter", "Outbox", "QueuedMovement"]


@dataclass(frozen=True, slots=True)
class QueuedMovement:
    """An undelivered movement: `movement` None (with `problem`) if it cannot be read."""

    id: str
    transaction_id: str
    seq: int
    attempts: int
    movement: Movement | None
    problem: Exception | None = None
    # The traced request that wrote it (`pi.platform.kernel.causes`), or None.
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A movement moved out of the outbox after its delivery was refused too often."""

    movement_id: str
    transaction_id: str
    seq: int
    kind: str
    attempts: int
    last_error: str | None
    create_time: datetime
    dead_time: datetime


class Outbox(Protocol):
    """Movements committed with their money changes, waiting for delivery. A transaction
    with dead letters delivers nothing until they are retried: its later movements wait
    behind them, in order."""

    async def due(self, now: datetime, limit: int) -> list[QueuedMovement]:
        """Undelivered movements due by `now`, in creation order; of each transaction only
        its first ones, so that none overtakes an earlier one that waits for a retry (or
        lies in the dead letters)."""
        ...

    async def mark_delivered(self, movement_ids: Sequence[str], now: datetime) -> None: ...

    async def postpone(
        self, transaction_id: str, head_id: str, retry_at: datetime, error: str
    ) -> None:
        """Count an attempt on `head_id` and hold back every undelivered movement of its
        transaction until `retry_at`, keeping their order."""
        ...

    async def dead_letter(
        self, transaction_id: str, head_id: str, error: str, now: datetime
    ) -> int:
        """Count an attempt on `head_id` and move it, with every undelivered movement of
        its transaction, to the dead letters; how many moved."""
        ...

    async def dead_letters(
        self, limit: int, *, after: tuple[datetime, str] | None
    ) -> list[DeadLetter]:
        """Dead letters in (dead time, movement id) order, strictly after the cursor."""
        ...

    async def retry_dead_letters(self, transaction_ids: Sequence[str], now: datetime) -> int:
        """Put these transactions' dead letters back in the outbox, due `now`, attempts
        counted from zero again; how many went back."""
        ...

    async def next_due(self) -> datetime | None:
        """When the earliest deliverable movement is due (None: nothing to deliver)."""
        ...

    async def undelivered_count(self) -> int: ...

    async def purge(self, *, delivered_before: datetime) -> int:
        """Forget movements delivered before then, and idempotency keys past their
        retention; how many rows went."""
        ...
