"""The reconciler: settles payments the processor has not given a final answer for.

A payment stays PROCESSING when its authorization timed out, when its method settles
asynchronously (bank transfer, wallet), or when the service stopped between recording
the payment and recording the processor's answer. Every `interval` seconds the
reconciler takes the PROCESSING payments untouched for `grace` (so it does not race a
request that is about to settle its own payment) and, for each, asks the processor
(`connector.status(payment id)`) and applies the rule of `domain.reconcile_action`:

- APPROVED → settled as authorized: REQUIRES_CAPTURE (manual capture) or SUCCEEDED
  (automatic), with the AUTHORIZATION (+ CAPTURE) movements;
- DECLINED → FAILED with the processor's reason; a payment the processor never received
  is DECLINED PROCESSOR_UNAVAILABLE ("nothing was charged"); the hold is released;
- PENDING → left alone: the processor is still settling it;
- TIMEOUT (the processor cannot be asked) → left alone, until the payment is older than
  `domain.UNKNOWN_OUTCOME_TIMEOUT`: then it is voided at the processor and FAILED with
  PROCESSOR_UNAVAILABLE.

Each settlement is one database transaction with its outbox movements
(`PaymentService.reconcile_payment`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from pi.payments.service import PaymentService
from pi.payments.store import PaymentStore

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Reconciler:
    """Background task: `run` loops forever, `run_once` is one round (tests)."""

    def __init__(
        self,
        store: PaymentStore,
        payments: PaymentService,
        *,
        interval: float = 1.0,
        grace: timedelta = timedelta(seconds=2),
        batch_size: int = 100,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._store = store
        self._payments = payments
        self._interval = interval
        self._grace = grace
        self._batch_size = batch_size
        self._clock = clock
        self._cursor: tuple[datetime, str] | None = None

    async def run(self) -> None:
        log.info("reconciler started")
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("reconciliation round failed")
            await asyncio.sleep(self._interval)

    async def run_once(self, *, grace: timedelta | None = None) -> int:
        """Reconcile one batch of due PROCESSING payments; returns how many were settled.

        Batches continue where the previous round stopped (a cursor over update time and
        id), so payments that stay PROCESSING for long (slow transfers) cannot starve
        the ones behind them.
        """
        cutoff = self._clock() - (self._grace if grace is None else grace)
        due = await self._store.processing_payments(cutoff, self._batch_size, after=self._cursor)
        if len(due) < self._batch_size:
            self._cursor = None
        else:
            self._cursor = (due[-1].update_time, due[-1].id)
        settled = 0
        for payment in due:
            try:
                result = await self._payments.reconcile_payment(payment)
            except Exception:
                log.exception("cannot reconcile payment", extra={"payment_id": payment.id})
                continue
            if result.status is not payment.status:
                settled += 1
                log.info(
                    "payment reconciled",
                    extra={"payment_id": payment.id, "status": result.status.value},
                )
        return settled
