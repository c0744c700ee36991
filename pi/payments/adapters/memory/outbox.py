"""The outbox's delivery queue in memory (`pi.payments.app.ports.Outbox`), on the same
state and lock as the memory units."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from pi.payments.adapters.memory.state import MemoryState, OutboxRow
from pi.payments.app.ports import DeadLetter, QueuedMovement
from pi.platform.kernel.idempotency import RETENTION

__all__ = ["MemoryOutbox"]


class MemoryOutbox:
    def __init__(self, state: MemoryState, lock: asyncio.Lock) -> None:
        self._state = state
        self._lock = lock

    async def due(self, now: datetime, limit: int) -> list[QueuedMovement]:
        async with self._lock:
            waiting = self._deliverable()
            due = [
                row
                for row in waiting
                if row.next_attempt_time <= now
                # Held back behind an earlier row of its transaction due later (see the
                # PostgreSQL query): none overtakes another.
                and not any(
                    earlier.transaction_id == row.transaction_id
                    and earlier.seq < row.seq
                    and earlier.next_attempt_time > row.next_attempt_time
                    for earlier in waiting
                )
            ]
            due.sort(key=lambda row: (row.next_attempt_time, row.transaction_id, row.seq))
            return [
                QueuedMovement(row.id, row.transaction_id, row.seq, row.attempts, row.movement)
                for row in due[:limit]
            ]

    async def mark_delivered(self, movement_ids: Sequence[str], now: datetime) -> None:
        async with self._lock:
            for movement_id in movement_ids:
                row = self._state.outbox.get(movement_id)
                if row is not None and row.delivered_time is None:
                    row.delivered_time = now

    async def postpone(
        self, transaction_id: str, head_id: str, retry_at: datetime, error: str
    ) -> None:
        async with self._lock:
            head = self._state.outbox[head_id]
            head.attempts += 1
            head.last_error = error[:500]
            for row in self._undelivered():
                if row.transaction_id == transaction_id:
                    row.next_attempt_time = retry_at

    async def next_due(self) -> datetime | None:
        async with self._lock:
            return min((row.next_attempt_time for row in self._deliverable()), default=None)

    async def dead_letter(
        self, transaction_id: str, head_id: str, error: str, now: datetime
    ) -> int:
        async with self._lock:
            head = self._state.outbox[head_id]
            head.attempts += 1
            head.last_error = error[:500]
            moving = [r for r in self._undelivered() if r.transaction_id == transaction_id]
            for row in moving:
                del self._state.outbox[row.id]
                self._state.dead_letters[row.id] = (row, now)
            return len(moving)

    async def dead_letters(
        self, limit: int, *, after: tuple[datetime, str] | None
    ) -> list[DeadLetter]:
        async with self._lock:
            dead = sorted(
                (
                    (died, row)
                    for row, died in self._state.dead_letters.values()
                    if after is None or (died, row.id) > after
                ),
                key=lambda pair: (pair[0], pair[1].id),
            )
            return [
                DeadLetter(
                    row.id,
                    row.transaction_id,
                    row.seq,
                    row.movement.kind.value,
                    row.attempts,
                    row.last_error,
                    row.create_time,
                    died,
                )
                for died, row in dead[:limit]
            ]

    async def retry_dead_letters(self, transaction_ids: Sequence[str], now: datetime) -> int:
        async with self._lock:
            wanted = set(transaction_ids)
            back = [
                row for row, _ in self._state.dead_letters.values() if row.transaction_id in wanted
            ]
            for row in sorted(back, key=lambda r: r.seq):
                del self._state.dead_letters[row.id]
                row.attempts, row.next_attempt_time = 0, now
                self._state.outbox[row.id] = row
            return len(back)

    async def undelivered_count(self) -> int:
        async with self._lock:
            return len(self._undelivered())

    async def purge(self, *, delivered_before: datetime) -> int:
        async with self._lock:
            outbox, keys = self._state.outbox, self._state.keys
            old_rows = [
                row.id
                for row in outbox.values()
                if row.delivered_time is not None and row.delivered_time < delivered_before
            ]
            cutoff = datetime.now(UTC) - RETENTION
            old_keys = [key for key, stored in keys.items() if stored.create_time < cutoff]
            for movement_id in old_rows:
                del outbox[movement_id]
            for key in old_keys:
                del keys[key]
            return len(old_rows) + len(old_keys)

    def _undelivered(self) -> list[OutboxRow]:
        return [row for row in self._state.outbox.values() if row.delivered_time is None]

    def _deliverable(self) -> list[OutboxRow]:
        """Undelivered rows of transactions with no dead letter (those wait behind it)."""
        dead = {row.transaction_id for row, _ in self._state.dead_letters.values()}
        return [row for row in self._undelivered() if row.transaction_id not in dead]
