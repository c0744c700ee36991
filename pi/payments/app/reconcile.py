"""Reconciling what the processor has not given a final answer for: every intent left
pending.

A payment stays PROCESSING when its authorization timed out, when its method settles
asynchronously (bank transfer, wallet), or when the service stopped between recording
the payment and recording the processor's answer; a payment stays CAPTURING or
CANCELLING, a refund PENDING, when the same befell its capture, void or refund. The
reconciler (`pi.payments.entrypoints.workers.Reconciler`) takes those untouched for a
while and asks the processor again, with the intent's own idempotency key.

A capture, void or refund is asked for again as it was recorded (`capture_request`,
`void_request`, `refund_request`): the processor answers a key it has seen with its
first answer, and does the change once if it never got it (the service stopped before
the call). Asking the same question cannot race the original call still in flight, as a
"did you get it?" could. APPROVED or DECLINED is settled (`settle_change.py`); a
TIMEOUT leaves the intent for the next round.

For a PROCESSING payment, whose card details are not kept, the processor is asked for
the authorization's status by the payment id, and the rule of `domain.reconcile_action`
applies:

- APPROVED → settled as authorized: REQUIRES_CAPTURE (manual capture) or SUCCEEDED
  (automatic), with the AUTHORIZATION (+ CAPTURE) movements;
- DECLINED → FAILED with the processor's reason; a payment the processor never received
  is DECLINED PROCESSOR_UNAVAILABLE ("nothing was charged", and the question fences it:
  an authorize arriving later is declined); the hold is released;
- PENDING → left alone: the processor is still settling it;
- TIMEOUT (the processor cannot be asked) → left alone, until the payment is older than
  `domain.UNKNOWN_OUTCOME_TIMEOUT`: then it is voided at the processor and FAILED with
  PROCESSOR_UNAVAILABLE.

Each settlement is one locked unit with its outbox movements (`settle.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime

from pi.payments.app.change_payment import ask, capture_request, refund_request, void_request
from pi.payments.app.ports import Clock, Connector, UnitsOfWork
from pi.payments.app.settle import Settlement, SettlePayment
from pi.payments.app.settle_change import SettleChange
from pi.payments.domain import (
    ConnectorResult,
    FailureReason,
    Payment,
    PaymentStatus,
    ProcessorOutcome,
    ReconcileAction,
    Refund,
    RefundStatus,
    reconcile_action,
)
from pi.platform.kernel.errors import DomainError
from pi.platform.kernel.units import Mode

__all__ = ["ReconcilePayment"]


class ReconcilePayment:
    def __init__(
        self,
        units: UnitsOfWork,
        connector: Connector,
        settle: SettlePayment,
        settle_change: SettleChange,
        *,
        clock: Clock,
    ) -> None:
        self._units = units
        self._connector = connector
        self._settle = settle
        self._settle_change = settle_change
        self._clock = clock

    async def due(
        self, updated_before: datetime, limit: int, *, after: tuple[datetime, str] | None
    ) -> list[Payment]:
        """Payments waiting for the processor (PROCESSING, CAPTURING, CANCELLING)
        untouched since `updated_before`, in (update time, id) order, strictly after the
        cursor `after`."""
        async with self._units(Mode.READ) as unit:
            return await unit.payments.waiting(updated_before, limit, after=after)

    async def due_refunds(
        self, created_before: datetime, limit: int, *, after: tuple[datetime, str] | None
    ) -> list[Refund]:
        """PENDING refunds created before `created_before`, in (create time, id) order."""
        async with self._units(Mode.READ) as unit:
            return await unit.refunds.pending(created_before, limit, after=after)

    async def refund(self, refund: Refund) -> Refund:
        """Ask the processor again for a PENDING refund and settle it if the answer is
        final; the refund as it is then."""
        if refund.status is not RefundStatus.PENDING:
            return refund
        async with self._units(Mode.READ) as unit:
            payment = await unit.payments.get(refund.payment_id)
        if payment is None:  # pragma: no cover - rows are never deleted
            return refund
        result = await ask(self._connector.refund(refund_request(payment, refund)), refund.id)
        try:
            settled = await self._settle_change.refund(payment, refund, result)
        except DomainError:  # no answer yet: still PENDING
            return refund
        return settled.refund

    async def __call__(self, payment: Payment) -> Payment:
        """Ask the processor about a payment waiting for it and settle it if the answer
        is final; the payment as it is then."""
        if payment.status is PaymentStatus.CAPTURING:
            result = await ask(self._connector.capture(capture_request(payment)), payment.id)
            return await self._settled(self._settle_change.capture(payment, result), payment)
        if payment.status is PaymentStatus.CANCELLING:
            result = await ask(self._connector.void(void_request(payment)), payment.id)
            return await self._settled(self._settle_change.void(payment, result), payment)
        if payment.status is not PaymentStatus.PROCESSING:
            return payment
        result = await self._connector.status(payment.id)
        action = reconcile_action(payment, result.outcome, now=self._clock())
        if action is ReconcileAction.WAIT:
            return payment
        if action is ReconcileAction.VOID_AND_FAIL:
            void = await self._connector.void(void_request(payment))
            if void.outcome is not ProcessorOutcome.APPROVED:
                return payment
            result = ConnectorResult.declined(FailureReason.PROCESSOR_UNAVAILABLE)
        return await self._settle(Settlement(payment, result))

    async def _settled(self, settling: Awaitable[Payment], waiting: Payment) -> Payment:
        """The settled payment; after a decline or no answer (which the settlement raises
        for a client), the payment as it is now."""
        try:
            return await settling
        except DomainError:
            async with self._units(Mode.READ) as unit:
                current = await unit.payments.get(waiting.id)
            return current or waiting
