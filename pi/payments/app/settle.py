"""Settling a PROCESSING payment on the processor's answer: CreatePayment's T2, and the
reconciler's settlement of what the processor answered later.

Lock order as everywhere: the idempotency key, the ref, then the payment. The first
request to settle stores the final response under the key; a duplicate that settles
after it finds that response and returns it, and a payment someone settled first is
returned as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from pi.payments.app.common import locked, payment_not_found
from pi.payments.app.ports import Clock, Notify, PaymentsUnit, UnitsOfWork
from pi.payments.app.requests import FinalPayment, PendingPayment, RequestKey
from pi.payments.domain import (
    ConnectorResult,
    Payment,
    PaymentChange,
    PaymentStatus,
    TransactionRef,
    authorize_outcome,
    movements_from_deltas,
)
from pi.platform.kernel.units import optimistically

__all__ = ["SettlePayment", "Settlement"]


@dataclass(frozen=True, slots=True)
class Settlement:
    """A processor's answer about a PROCESSING payment.

    With `ref` (the ref as the request's T1 left it, holding the payment) the payment and
    ref are settled as T1 wrote them, without reading them again, unless someone changed
    them since. With `request`, its key's pending response becomes the final one.
    """

    payment: Payment
    result: ConnectorResult
    ref: TransactionRef | None = None
    request: RequestKey | None = None


class SettlePayment:
    def __init__(self, units: UnitsOfWork, *, clock: Clock, notify: Notify) -> None:
        self._units = units
        self._clock = clock
        self._notify = notify

    async def __call__(self, settlement: Settlement) -> Payment:
        """The payment as settled (or as someone else settled it first)."""
        step = partial(self._settle, settlement)
        if settlement.ref is not None:
            settled, wrote_movements = await optimistically(self._units, step)
        else:
            settled, wrote_movements = await locked(self._units, step)
        if wrote_movements:
            self._notify()
        return settled

    async def _settle(self, settlement: Settlement, unit: PaymentsUnit) -> tuple[Payment, bool]:
        request = settlement.request
        pending = PendingPayment(settlement.payment.id)
        async with unit:
            if request is not None:
                stored = await unit.idempotency.create_response(request, seen=pending)
                if isinstance(stored, FinalPayment):
                    return stored.payment, False
            ref = await unit.refs.get(settlement.payment.transaction_id, seen=settlement.ref)
            current = await unit.payments.get(settlement.payment.id, seen=settlement.payment)
            if ref is None or current is None:  # pragma: no cover - rows are never deleted
                raise payment_not_found()
            now = self._clock()
            change: PaymentChange | None = None
            settled, movements = current, []
            if current.status is PaymentStatus.PROCESSING:
                result = settlement.result
                change = authorize_outcome(
                    ref,
                    current,
                    result.outcome,
                    failure_reason=result.failure_reason,
                    processor_reference=result.reference,
                    now=now,
                )
                settled = change.payment
                if settled == current:
                    # Nothing to write would check that it is still PROCESSING (the
                    # reconciler may have settled it): the answer must come from the row.
                    unit.confirm_reads()
                movements = movements_from_deltas(
                    change.movements,
                    merchant_id=current.merchant_id,
                    transaction_id=current.transaction_id,
                    now=now,
                )
            if request is not None:  # first: the key's row is the first lock
                await unit.idempotency.finish_create(request, pending, FinalPayment(settled))
            if change is not None:
                if change.ref != ref or movements:
                    await unit.refs.settle(ref, change.ref, movements, now=now)
                if settled != current:
                    await unit.payments.update(current, settled)
            await unit.commit()
        return settled, bool(movements)
