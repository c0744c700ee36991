"""The payment service's background workers: the outbox dispatcher and the reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from pi.payments.app.deliver_movements import DEAD_LETTER_ATTEMPTS, DeliverMovements
from pi.payments.app.ports import MAX_MOVEMENTS_PER_CALL, Clock, Outbox, TransactionLedger
from pi.payments.app.reconcile import ReconcilePayment
from pi.platform.observability import metrics

__all__ = ["OutboxDispatcher", "Reconciler"]

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class OutboxDispatcher:
    """Delivers the outbox in rounds (`DeliverMovements`): `run` is the task, `nudge`
    wakes it. The use cases nudge it after each commit that wrote movements, so on the
    happy path a movement is delivered within milliseconds; without nudges it still polls
    every `idle_poll` seconds (rows written by another process, retries)."""

    def __init__(
        self,
        outbox: Outbox,
        ledger: TransactionLedger,
        *,
        batch_size: int = 500,
        movements_per_call: int = MAX_MOVEMENTS_PER_CALL,
        idle_poll: float = 1.0,
        base_backoff: float = 0.05,
        max_backoff: float = 2.0,
        max_attempts: int = DEAD_LETTER_ATTEMPTS,
        clock: Clock = _utc_now,
    ) -> None:
        self._outbox = outbox
        self._deliver = DeliverMovements(
            outbox,
            ledger,
            clock=clock,
            batch_size=batch_size,
            movements_per_call=movements_per_call,
            base_backoff=base_backoff,
            max_backoff=max_backoff,
            max_attempts=max_attempts,
        )
        self._idle_poll = idle_poll
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
        """One round over due movements. Returns (delivered, whether a full batch was read)."""
        delivered, more = await self._deliver()
        if delivered:
            metrics.outbox_delivered.labels("movements").inc(delivered)
        return delivered, more

    async def drain(self, timeout: float = 10.0) -> None:
        """Deliver until nothing is left (tests, shutdown); TimeoutError if it cannot."""
        async with asyncio.timeout(timeout):
            while await self._outbox.undelivered_count() > 0:
                delivered, _ = await self.deliver_once()
                if delivered == 0:
                    await asyncio.sleep(0.02)

    async def _idle_wait(self) -> float:
        try:
            due = await self._outbox.next_due()
        except Exception:
            log.exception("cannot read the outbox")
            return self._idle_poll
        if due is None:
            return self._idle_poll
        seconds = (due - self._clock()).total_seconds()
        return max(0.005, min(self._idle_poll, seconds))


class Reconciler:
    """Every `interval` seconds, reconciles the payments waiting for the processor
    (PROCESSING, CAPTURING, CANCELLING) and the PENDING refunds untouched for `grace` (so
    it does not race a request about to settle its own intent); see
    `pi.payments.app.reconcile`. `run` loops forever, `run_once` is one round."""

    def __init__(
        self,
        reconcile: ReconcilePayment,
        *,
        interval: float = 1.0,
        grace: timedelta = timedelta(seconds=2),
        batch_size: int = 100,
        clock: Clock = _utc_now,
    ) -> None:
        self._reconcile = reconcile
        self._interval = interval
        self._grace = grace
        self._batch_size = batch_size
        self._clock = clock
        self._cursor: tuple[datetime, str] | None = None
        self._refund_cursor: tuple[datetime, str] | None = None

    async def run(self) -> None:
        log.info("reconciler started")
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("reconciliation round failed")
            await asyncio.sleep(self._interval)

    async def run_once(self, *, grace: timedelta | None = None) -> int:
        """Reconcile one batch of due payments and one of due refunds; returns how many
        were settled.

        Batches continue where the previous round stopped (a cursor over update time and
        id), so payments that stay PROCESSING for long (slow transfers) cannot starve
        the ones behind them.
        """
        cutoff = self._clock() - (self._grace if grace is None else grace)
        return await self._payments(cutoff) + await self._refunds(cutoff)

    async def _refunds(self, cutoff: datetime) -> int:
        due = await self._reconcile.due_refunds(cutoff, self._batch_size, after=self._refund_cursor)
        full = len(due) >= self._batch_size
        self._refund_cursor = (due[-1].create_time, due[-1].id) if full else None
        settled = 0
        for refund in due:
            try:
                result = await self._reconcile.refund(refund)
            except Exception:
                log.exception("cannot reconcile refund", extra={"refund_id": refund.id})
                continue
            if result.status is not refund.status:
                settled += 1
                log.info(
                    "refund reconciled",
                    extra={"refund_id": refund.id, "status": result.status.value},
                )
        return settled

    async def _payments(self, cutoff: datetime) -> int:
        due = await self._reconcile.due(cutoff, self._batch_size, after=self._cursor)
        if len(due) < self._batch_size:
            self._cursor = None
        else:
            self._cursor = (due[-1].update_time, due[-1].id)
        settled = 0
        for payment in due:
            try:
                result = await self._reconcile(payment)
            except Exception:
                log.exception("cannot reconcile payment", extra={"payment_id": payment.id})
                continue
            if result.status is not payment.status:
                settled += 1
                metrics.payments_reconciled.labels(result.status.value).inc()
                log.info(
                    "payment reconciled",
                    extra={"payment_id": payment.id, "status": result.status.value},
                )
        return settled
