"""Settling a recorded capture, void or refund on the processor's answer: the second unit
of CapturePayment, CancelPayment, RefundPayment and CloseTransaction, and the
reconciler's settlement of an intent whose answer came later.

Each is one LOCKED unit, in the lock order used everywhere: the request's idempotency
key, the ref, the payment, then the refund. A final answer is applied once: whoever
settles first (the request, a retry of it, the reconciler) writes the change and its
movements; the others find it settled and return it as it is. A TIMEOUT writes nothing:
the intent stays pending, for a retry with the same key or for the reconciler.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from pi.payments.app.common import locked, payment_not_found, processor_refused
from pi.payments.app.ports import Clock, Notify, PaymentsUnit, UnitsOfWork
from pi.payments.app.requests import PendingChange, RefundResult, RequestKey
from pi.payments.domain import (
    ConnectorResult,
    Payment,
    PaymentChange,
    PaymentStatus,
    ProcessorOutcome,
    Refund,
    RefundStatus,
    TransactionRef,
    cancel_outcome,
    capture_outcome,
    movements_from_deltas,
    refund_outcome,
)

__all__ = ["SettleChange", "record_change"]

log = logging.getLogger(__name__)


async def record_change(
    unit: PaymentsUnit, old: Payment, ref: TransactionRef, change: PaymentChange, now: datetime
) -> bool:
    """Write a change decided on locked rows; whether it made movements."""
    if change.payment != old:
        await unit.payments.update(old, change.payment)
    movements = movements_from_deltas(
        change.movements, merchant_id=old.merchant_id, transaction_id=old.transaction_id, now=now
    )
    if change.ref != ref or movements:
        await unit.refs.update(ref, change.ref, movements, now=now)
    return bool(movements)


@dataclass(frozen=True, slots=True)
class _Settled:
    """What a settlement unit left: the response, whether it moved money, and the error
    to raise once the unit is committed (a declined capture or void)."""

    response: Payment | RefundResult
    moved: bool = False
    refused: Exception | None = None


_Step = Callable[[PaymentsUnit], Awaitable[_Settled]]


class SettleChange:
    def __init__(self, units: UnitsOfWork, *, clock: Clock, notify: Notify) -> None:
        self._units = units
        self._clock = clock
        self._notify = notify

    async def capture(
        self, payment: Payment, result: ConnectorResult, request: RequestKey | None = None
    ) -> Payment:
        """Settle `payment`'s capture on `result`: the payment as it is then. Raises
        PROCESSOR_DECLINED (the payment is REQUIRES_CAPTURE again) or, on a TIMEOUT,
        PROCESSOR_UNAVAILABLE (it stays CAPTURING)."""
        return await self._payment(payment, result, request, PaymentStatus.CAPTURING, "capture")

    async def void(
        self, payment: Payment, result: ConnectorResult, request: RequestKey | None = None
    ) -> Payment:
        """Settle `payment`'s void on `result`, as `capture` does."""
        return await self._payment(payment, result, request, PaymentStatus.CANCELLING, "void")

    async def refund(
        self,
        payment: Payment,
        refund: Refund,
        result: ConnectorResult,
        request: RequestKey | None = None,
    ) -> RefundResult:
        """Settle a PENDING refund on `result`: SUCCEEDED or FAILED (declined, kept with
        its reason), with the payment as it is then. Raises PROCESSOR_UNAVAILABLE on a
        TIMEOUT (it stays PENDING)."""

        async def step(unit: PaymentsUnit) -> _Settled:
            async with unit:
                stored = await self._stored(unit, request)
                if stored is not None:
                    return _Settled(stored)
                ref, current = await self._lock(unit, payment)
                pending = await unit.refunds.get(refund.id)
                if pending is None:  # pragma: no cover - rows are never deleted
                    raise payment_not_found()
                if pending.status is not RefundStatus.PENDING:
                    settled = RefundResult(pending, current)
                    await self._finish(unit, request, settled)
                    await unit.commit()
                    return _Settled(settled)
                if not result.is_final:
                    return _Settled(RefundResult(pending, current), refused=_timeout("refund"))
                now = self._clock()
                change = refund_outcome(
                    ref,
                    current,
                    pending,
                    approved=result.outcome is ProcessorOutcome.APPROVED,
                    failure_reason=result.failure_reason,
                    processor_reference=result.reference,
                    now=now,
                )
                moved = await record_change(unit, current, ref, change, now)
                if change.refund is None:  # pragma: no cover - refund_outcome sets it
                    raise AssertionError("refund_outcome made no refund")
                await unit.refunds.update(pending, change.refund)
                settled = RefundResult(change.refund, change.payment)
                await self._finish(unit, request, settled)
                await unit.commit()
            if change.refund.status is RefundStatus.FAILED:
                log.info(
                    "refund declined by the processor",
                    extra={"refund_id": refund.id, "reason": str(change.refund.failure_reason)},
                )
            return _Settled(settled, moved)

        done = await self._run(step)
        assert isinstance(done, RefundResult)
        return done

    async def _payment(
        self,
        payment: Payment,
        result: ConnectorResult,
        request: RequestKey | None,
        waiting: PaymentStatus,
        operation: str,
    ) -> Payment:
        outcome = capture_outcome if waiting is PaymentStatus.CAPTURING else cancel_outcome

        async def step(unit: PaymentsUnit) -> _Settled:
            async with unit:
                stored = await self._stored(unit, request)
                if stored is not None:
                    return _Settled(stored)
                ref, current = await self._lock(unit, payment)
                if current.status is not waiting:
                    # Settled first by someone else: approved if it moved on, else declined.
                    if current.status is PaymentStatus.REQUIRES_CAPTURE:
                        return await self._declined(unit, request, current, operation, result)
                    await self._finish(unit, request, current)
                    await unit.commit()
                    return _Settled(current)
                if not result.is_final:
                    return _Settled(current, refused=_timeout(operation))
                now = self._clock()
                approved = result.outcome is ProcessorOutcome.APPROVED
                change = outcome(ref, current, approved=approved, now=now)
                moved = await record_change(unit, current, ref, change, now)
                if not approved:
                    log.error(
                        "processor declined a recorded change; the payment is back to "
                        "REQUIRES_CAPTURE",
                        extra={"payment_id": payment.id, "operation": operation},
                    )
                    return await self._declined(unit, request, change.payment, operation, result)
                await self._finish(unit, request, change.payment)
                await unit.commit()
            return _Settled(change.payment, moved)

        done = await self._run(step)
        assert isinstance(done, Payment)
        return done

    async def _run(
        self, step: Callable[[PaymentsUnit], Awaitable[_Settled]]
    ) -> Payment | RefundResult:
        settled = await locked(self._units, step)
        if settled.moved:
            self._notify()
        if settled.refused is not None:
            raise settled.refused
        return settled.response

    async def _declined(
        self,
        unit: PaymentsUnit,
        request: RequestKey | None,
        payment: Payment,
        operation: str,
        result: ConnectorResult,
    ) -> _Settled:
        if request is not None:
            await unit.idempotency.release(request)
        await unit.commit()
        declined = result if result.outcome is ProcessorOutcome.DECLINED else _DECLINED
        return _Settled(payment, refused=processor_refused(operation, declined))

    @staticmethod
    async def _stored(
        unit: PaymentsUnit, request: RequestKey | None
    ) -> Payment | RefundResult | None:
        """The final response a duplicate of the request stored first, if any."""
        if request is None:
            return None
        stored = await unit.idempotency.change_response(request)
        return None if stored is None or isinstance(stored, PendingChange) else stored

    @staticmethod
    async def _lock(unit: PaymentsUnit, payment: Payment) -> tuple[TransactionRef, Payment]:
        ref = await unit.refs.get(payment.transaction_id)
        current = await unit.payments.get(payment.id)
        if ref is None or current is None:  # pragma: no cover - rows are never deleted
            raise payment_not_found()
        return ref, current

    @staticmethod
    async def _finish(
        unit: PaymentsUnit, request: RequestKey | None, response: Payment | RefundResult
    ) -> None:
        if request is not None:
            await unit.idempotency.complete(request, response)


_DECLINED = ConnectorResult(ProcessorOutcome.DECLINED)


def _timeout(operation: str) -> Exception:
    return processor_refused(operation, ConnectorResult.timeout())
