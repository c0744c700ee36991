"""Reconciling a payment the processor has not given a final answer for.

A payment stays PROCESSING when its authorization timed out, when its method settles
asynchronously (bank transfer, wallet), or when the service stopped between recording
the payment and recording the processor's answer. The reconciler
(`pi.payments.entrypoints.workers.Reconciler`) takes those untouched for a while and,
for each, asks the processor and applies the rule of `domain.reconcile_action`:

- APPROVED → settled as authorized: REQUIRES_CAPTURE (manual capture) or SUCCEEDED
  (automatic), with the AUTHORIZATION (+ CAPTURE) movements;
- DECLINED → FAILED with the processor's reason; a payment the processor never received
  is DECLINED PROCESSOR_UNAVAILABLE ("nothing was charged"); the hold is released;
- PENDING → left alone: the processor is still settling it;
- TIMEOUT (the processor cannot be asked) → left alone, until the payment is older than
  `domain.UNKNOWN_OUTCOME_TIMEOUT`: then it is voided at the processor and FAILED with
  PROCESSOR_UNAVAILABLE.

Each settlement is one locked unit with its outbox movements (`settle.py`).
"""

from __future__ import annotations

from datetime import datetime

from pi.payments.app.ports import Clock, Connector, UnitsOfWork
from pi.payments.app.settle import Settlement, SettlePayment
from pi.payments.domain import (
    ConnectorResult,
    FailureReason,
    Payment,
    PaymentStatus,
    ProcessorOutcome,
    ReconcileAction,
    VoidRequest,
    reconcile_action,
)
from pi.platform.kernel.units import Mode

__all__ = ["ReconcilePayment"]


class ReconcilePayment:
    def __init__(
        self, units: UnitsOfWork, connector: Connector, settle: SettlePayment, *, clock: Clock
    ) -> None:
        self._units = units
        self._connector = connector
        self._settle = settle
        self._clock = clock

    async def due(
        self, updated_before: datetime, limit: int, *, after: tuple[datetime, str] | None
    ) -> list[Payment]:
        """PROCESSING payments untouched since `updated_before`, in (update time, id)
        order, strictly after the cursor `after`."""
        async with self._units(Mode.READ) as unit:
            return await unit.payments.processing(updated_before, limit, after=after)

    async def __call__(self, payment: Payment) -> Payment:
        """Ask the processor about a PROCESSING payment and settle it if the answer is
        final; the payment as it is then."""
        if payment.status is not PaymentStatus.PROCESSING:
            return payment
        result = await self._connector.status(payment.id)
        action = reconcile_action(payment, result.outcome, now=self._clock())
        if action is ReconcileAction.WAIT:
            return payment
        if action is ReconcileAction.VOID_AND_FAIL:
            void = await self._connector.void(
                VoidRequest(
                    payment_id=payment.id,
                    reference=payment.processor_reference,
                    idempotency_key=f"void_{payment.id}",
                )
            )
            if void.outcome is not ProcessorOutcome.APPROVED:
                return payment
            result = ConnectorResult.declined(FailureReason.PROCESSOR_UNAVAILABLE)
        return await self._settle(Settlement(payment, result))
