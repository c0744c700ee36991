"""Delivering committed movements to the transaction service, one round at a time.

Every money change writes its movements to the outbox in the same unit. A round reads
the due ones and sends them in one `apply_movements` call (several if there are more
than one call takes), then marks the applied ones delivered:

- at least once: a movement is marked delivered only after the transaction service
  answered that it is applied; the transaction service ignores a movement id it has
  applied already;
- in order per transaction: a transaction's movements go out by `seq` in the same call,
  and the transaction service applies none after one it did not apply. That one is
  postponed, which holds back every undelivered movement of its transaction until the
  retry, so none overtakes another; the other transactions' are delivered meanwhile;
- with exponential backoff per transaction (capped at `max_backoff`) while movements
  are refused or the transaction service is down (then every transaction of the round
  waits);
- to the dead letters once a movement was refused `max_attempts` times (the transaction
  service answered, and said no; being down does not count), with every later
  undelivered movement of its transaction, logged at error level: it stops costing a
  call per round, and waits for an operator (`ListDeadLetters`, `RetryDeadLetters`).

The loop that runs rounds (woken after each commit) is
`pi.payments.entrypoints.workers.OutboxDispatcher`.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta

from pi.payments.app.ports import (
    MAX_MOVEMENTS_PER_CALL,
    Clock,
    LedgerError,
    Outbox,
    QueuedMovement,
    TransactionLedger,
)
from pi.platform.kernel.causes import on_behalf_of
from pi.platform.kernel.errors import DomainError
from pi.platform.ledger import Movement

__all__ = ["DEAD_LETTER_ATTEMPTS", "DeliverMovements"]

DEAD_LETTER_ATTEMPTS = 50
"""Refused deliveries before a movement goes to the dead letters: with the default
backoff, about a minute and a half of refusals."""

log = logging.getLogger(__name__)


def _seq(row: QueuedMovement) -> int:
    return row.seq


def _describe(error: Exception) -> str:
    if isinstance(error, DomainError):
        return f"{error.reason}: {error.message}"
    if isinstance(error, LedgerError):
        return str(error)
    return type(error).__name__


class DeliverMovements:
    def __init__(
        self,
        outbox: Outbox,
        ledger: TransactionLedger,
        *,
        clock: Clock,
        batch_size: int = 500,
        movements_per_call: int = MAX_MOVEMENTS_PER_CALL,
        base_backoff: float = 0.05,
        max_backoff: float = 2.0,
        max_attempts: int = DEAD_LETTER_ATTEMPTS,
    ) -> None:
        self._outbox = outbox
        self._ledger = ledger
        self._clock = clock
        self._batch_size = batch_size
        self._movements_per_call = min(movements_per_call, MAX_MOVEMENTS_PER_CALL)
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._max_attempts = max_attempts

    async def __call__(self) -> tuple[int, bool]:
        """One round over due movements: (delivered, whether a full batch was read)."""
        rows = await self._outbox.due(self._clock(), self._batch_size)
        if not rows:
            return 0, False
        streams: dict[str, list[QueuedMovement]] = {}
        for row in rows:
            streams.setdefault(row.transaction_id, []).append(row)
        queue = [row for stream in streams.values() for row in sorted(stream, key=_seq)]
        delivered: list[str] = []
        # Per transaction, its first movement that was not delivered, why, and whether the
        # transaction service refused it (rather than not answering): the one to
        # postpone. Nothing later of that transaction is sent in this round.
        held: dict[str, tuple[QueuedMovement, Exception, bool]] = {}
        for start in range(0, len(queue), self._movements_per_call):
            sent: list[QueuedMovement] = []
            movements: list[Movement] = []
            for row in queue[start : start + self._movements_per_call]:
                if row.transaction_id in held:
                    continue
                if row.movement is None:
                    problem = row.problem or ValueError("unreadable")
                    held[row.transaction_id] = (row, problem, True)
                    continue
                movements.append(row.movement)
                sent.append(row)
            if not sent:
                continue
            try:
                with on_behalf_of(row.traceparent for row in sent):
                    outcomes = await self._ledger.apply_movements(movements)
            except Exception as error:
                # Down or refusing every call: every transaction not done waits.
                for row in [*sent, *queue[start + self._movements_per_call :]]:
                    held.setdefault(row.transaction_id, (row, error, False))
                break
            for row, outcome in zip(sent, outcomes, strict=True):
                if row.transaction_id in held:
                    continue
                if outcome.error is None:
                    delivered.append(row.id)
                else:
                    held[row.transaction_id] = (row, outcome.error, True)
        await self._outbox.mark_delivered(delivered, self._clock())
        for row, why, refused in held.values():
            if refused and row.attempts + 1 >= self._max_attempts:
                await self._dead_letter(row, why)
            else:
                await self._postpone(row, why)
        return len(delivered), len(rows) >= self._batch_size

    async def _dead_letter(self, row: QueuedMovement, error: Exception) -> None:
        text = _describe(error)
        moved = await self._outbox.dead_letter(row.transaction_id, row.id, text, self._clock())
        log.error(
            "movement refused too often; moved to the dead letters",
            extra={
                "movement_id": row.id,
                "transaction_id": row.transaction_id,
                "attempts": row.attempts + 1,
                "moved": moved,
                "error": text,
            },
        )

    async def _postpone(self, row: QueuedMovement, error: Exception) -> None:
        attempts = row.attempts + 1
        delay = min(self._max_backoff, self._base_backoff * 2 ** min(attempts, 16))
        delay *= random.uniform(0.75, 1.0)
        retry_at = self._clock() + timedelta(seconds=delay)
        text = _describe(error)
        if attempts == 1 or attempts % 20 == 0:
            log.warning(
                "movement delivery failed; will retry",
                extra={
                    "movement_id": row.id,
                    "transaction_id": row.transaction_id,
                    "attempts": attempts,
                    "error": text,
                },
            )
        await self._outbox.postpone(row.transaction_id, row.id, retry_at, text)
