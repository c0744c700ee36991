"""The outbox dispatcher: delivers committed movements to the transaction service.

Every money change writes its movements to the `outbox` table in the same database
transaction (see `service.py`). This background task delivers them in batches: each
round reads the due rows and sends them in one `TransactionLedgerService.ApplyMovements`
call (several if there are more than one call takes), then marks the applied ones
delivered with one statement:

- at least once: a row is marked delivered only after the transaction service answered
  that its movement is applied; the transaction service ignores a movement id it has
  applied already;
- in order per transaction: a transaction's rows go out by `seq` in the same call, and
  the transaction service applies none after one it did not apply. That row is
  postponed, which holds back every undelivered row of its transaction until the retry,
  so none overtakes another; the other transactions' rows are delivered meanwhile;
- with exponential backoff per transaction (capped at `max_backoff`, ~2 s) while
  movements are refused or the transaction service is down (then every transaction of
  the round waits), and a deadline on every call (the ledger client's);
- promptly: the use cases call `nudge()` after each commit, which wakes the loop, so on
  the happy path a movement is delivered within milliseconds. Without nudges the loop
  still polls every `idle_poll` seconds (rows written by another process, retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from pi.payments.ledger_client import MAX_MOVEMENTS_PER_CALL, LedgerError, TransactionLedger
from pi.payments.movements import decode_movement
from pi.payments.store import OutboxRow, PaymentStore
from pi.platform.kernel.errors import DomainError
from pi.platform.ledger import Movement

__all__ = ["OutboxDispatcher"]

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _seq(row: OutboxRow) -> int:
    return row.seq


def _describe(error: Exception) -> str:
    if isinstance(error, DomainError):
        return f"{error.reason}: {error.message}"
    if isinstance(error, LedgerError):
        return str(error)
    return type(error).__name__


class OutboxDispatcher:
    """Background delivery of outbox rows; `run` is the task, `nudge` wakes it."""

    def __init__(
        self,
        store: PaymentStore,
        ledger: TransactionLedger,
        *,
        batch_size: int = 500,
        movements_per_call: int = MAX_MOVEMENTS_PER_CALL,
        idle_poll: float = 1.0,
        base_backoff: float = 0.05,
        max_backoff: float = 2.0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._batch_size = batch_size
        self._movements_per_call = min(movements_per_call, MAX_MOVEMENTS_PER_CALL)
        self._idle_poll = idle_poll
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._clock = clock
        self._wake = asyncio.Event()

    def nudge(self) -> None:
        """Wake the loop now (called after a commit that wrote movements)."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver forever (until cancelled)."""
        log.info("outbox dispatcher started")
        while True:
            self._wake.clear()
            try:
                _, more = await self.deliver_once()
            except Exception:
                log.exception("outbox delivery round failed")
                more = False
            if more:
                continue
            wait = await self._idle_wait()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that races with its timeout, and this loop would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def deliver_once(self) -> tuple[int, bool]:
        """One round over due rows. Returns (delivered, whether a full batch was read)."""
        now = self._clock()
        rows = await self._store.due_movements(now, self._batch_size)
        if not rows:
            return 0, False
        streams: dict[str, list[OutboxRow]] = {}
        for row in rows:
            streams.setdefault(row.transaction_id, []).append(row)
        queue = [row for stream in streams.values() for row in sorted(stream, key=_seq)]
        delivered: list[str] = []
        # Per transaction, its first row that was not delivered and why: the row to
        # postpone. Nothing later of that transaction is sent in this round.
        held: dict[str, tuple[OutboxRow, Exception]] = {}
        for start in range(0, len(queue), self._movements_per_call):
            sent: list[OutboxRow] = []
            movements: list[Movement] = []
            for row in queue[start : start + self._movements_per_call]:
                if row.transaction_id in held:
                    continue
                try:
                    movements.append(decode_movement(row.payload))
                except Exception as error:
                    held[row.transaction_id] = (row, error)
                    continue
                sent.append(row)
            if not sent:
                continue
            try:
                outcomes = await self._ledger.apply_movements(movements)
            except Exception as error:
                # Down or refusing every call: every transaction not done waits.
                for row in [*sent, *queue[start + self._movements_per_call :]]:
                    held.setdefault(row.transaction_id, (row, error))
                break
            for row, outcome in zip(sent, outcomes, strict=True):
                if row.transaction_id in held:
                    continue
                if outcome.error is None:
                    delivered.append(row.id)
                else:
                    held[row.transaction_id] = (row, outcome.error)
        await self._store.mark_delivered(delivered, self._clock())
        for row, why in held.values():
            await self._postpone(row, why)
        return len(delivered), len(rows) >= self._batch_size

    async def drain(self, timeout: float = 10.0) -> None:
        """Deliver until nothing is left (tests, shutdown); TimeoutError if it cannot."""
        async with asyncio.timeout(timeout):
            while await self._store.undelivered_count() > 0:
                delivered, _ = await self.deliver_once()
                if delivered == 0:
                    await asyncio.sleep(0.02)

    async def _postpone(self, row: OutboxRow, error: Exception) -> None:
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
        await self._store.postpone(row.transaction_id, row.id, retry_at, text)

    async def _idle_wait(self) -> float:
        try:
            due = await self._store.next_movement_time()
        except Exception:
            log.exception("cannot read the outbox")
            return self._idle_poll
        if due is None:
            return self._idle_poll
        seconds = (due - self._clock()).total_seconds()
        return max(0.005, min(self._idle_poll, seconds))
