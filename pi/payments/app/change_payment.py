"""CapturePayment, CancelPayment and RefundPayment: one locked unit each.

Each claims its idempotency key, locks the payment's ref then the payment, applies the
domain rule, asks the processor, and only if it agreed writes the change (payment, ref,
movements, refund) and the response for replays. The processor is called inside the
unit, holding the locks, so that the change it agreed to is the one written.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial

from pi.payments.app.common import (
    RequestFingerprints,
    id_problem,
    locked,
    payment_not_found,
    processor_refused,
)
from pi.payments.app.ports import Clock, Connector, Notify, PaymentsUnit, UnitsOfWork
from pi.payments.app.requests import RefundResult, RequestKey
from pi.payments.domain import (
    MAX_REFUND_REASON_LENGTH,
    CaptureRequest,
    Payment,
    PaymentChange,
    ProcessorOutcome,
    RefundRequest,
    TransactionRef,
    VoidRequest,
    cancel,
    capture,
    movements_from_deltas,
    refund,
)
from pi.platform.kernel.errors import InvalidArgument, ValidationErrors
from pi.platform.kernel.ids import new_id
from pi.platform.kernel.money import amount_problem
from pi.platform.kernel.principal import Principal, require_merchant
from pi.platform.kernel.text import text_problem

__all__ = [
    "OP_CANCEL",
    "OP_CAPTURE",
    "OP_REFUND",
    "CancelPayment",
    "CapturePayment",
    "RefundPayment",
    "lock_payment",
    "record_change",
]

OP_CAPTURE = "CapturePayment"
OP_CANCEL = "CancelPayment"
OP_REFUND = "RefundPayment"


async def lock_payment(
    unit: PaymentsUnit, merchant_id: str, payment_id: str
) -> tuple[Payment, TransactionRef]:
    """The merchant's payment and its ref, both locked (the ref first: the lock order)."""
    if id_problem(payment_id) is not None:  # no payment has it (and NUL breaks SQL text)
        raise payment_not_found()
    found = await unit.payments.find(payment_id, merchant_id)
    if found is None:
        raise payment_not_found()
    ref = await unit.refs.get(found.transaction_id)
    payment = await unit.payments.get(payment_id)
    if ref is None or payment is None:  # pragma: no cover - rows are never deleted
        raise payment_not_found()
    return payment, ref


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
    if change.refund is not None:
        await unit.refunds.add(
            change.refund, merchant_id=old.merchant_id, transaction_id=old.transaction_id
        )
    return bool(movements)


class _PaymentChange:
    """What the three share: units, the processor, fingerprints, clock and the nudge."""

    def __init__(
        self,
        units: UnitsOfWork,
        connector: Connector,
        *,
        fingerprints: RequestFingerprints,
        clock: Clock,
        notify: Notify,
    ) -> None:
        self._units = units
        self._connector = connector
        self._fingerprints = fingerprints
        self._clock = clock
        self._notify = notify


class CapturePayment(_PaymentChange):
    async def __call__(
        self,
        principal: Principal,
        payment_id: str,
        *,
        amount: int = 0,
        idempotency_key: str | None = None,
    ) -> Payment:
        merchant_id = require_merchant(principal)
        errors = ValidationErrors()
        if not payment_id:
            errors.add("id", "is required")
        if amount and (problem := amount_problem(amount)) is not None:
            errors.add("amount", problem)
        errors.raise_if_any("The capture has invalid fields.")
        fingerprint = self._fingerprints(OP_CAPTURE, {"id": payment_id, "amount": amount})
        key = RequestKey(merchant_id, OP_CAPTURE, idempotency_key, fingerprint)
        captured = await locked(self._units, partial(self._capture, key, payment_id, amount))
        self._notify()
        return captured

    async def _capture(
        self, key: RequestKey, payment_id: str, amount: int, unit: PaymentsUnit
    ) -> Payment:
        async with unit:
            replay = await unit.idempotency.claim_payment(key)
            if replay is not None:
                return replay
            payment, ref = await lock_payment(unit, key.scope, payment_id)
            now = self._clock()
            change = capture(ref, payment, amount or None, now=now)
            result = await self._connector.capture(
                CaptureRequest(
                    payment_id=payment.id,
                    reference=payment.processor_reference,
                    amount=change.payment.captured_amount,
                    currency=payment.currency,
                    idempotency_key=f"capture_{payment.id}",
                )
            )
            if result.outcome is not ProcessorOutcome.APPROVED:
                raise processor_refused("capture", result)
            await record_change(unit, payment, ref, change, now)
            await unit.idempotency.complete(key, change.payment)
            await unit.commit()
        return change.payment


class CancelPayment(_PaymentChange):
    async def __call__(
        self, principal: Principal, payment_id: str, *, idempotency_key: str | None = None
    ) -> Payment:
        merchant_id = require_merchant(principal)
        if not payment_id:
            raise InvalidArgument.field("id", "is required")
        fingerprint = self._fingerprints(OP_CANCEL, {"id": payment_id})
        key = RequestKey(merchant_id, OP_CANCEL, idempotency_key, fingerprint)
        cancelled = await locked(self._units, partial(self._cancel, key, payment_id))
        self._notify()
        return cancelled

    async def _cancel(self, key: RequestKey, payment_id: str, unit: PaymentsUnit) -> Payment:
        async with unit:
            replay = await unit.idempotency.claim_payment(key)
            if replay is not None:
                return replay
            payment, ref = await lock_payment(unit, key.scope, payment_id)
            now = self._clock()
            change = cancel(ref, payment, now=now)
            result = await self._connector.void(
                VoidRequest(
                    payment_id=payment.id,
                    reference=payment.processor_reference,
                    idempotency_key=f"void_{payment.id}",
                )
            )
            if result.outcome is not ProcessorOutcome.APPROVED:
                raise processor_refused("void", result)
            await record_change(unit, payment, ref, change, now)
            await unit.idempotency.complete(key, change.payment)
            await unit.commit()
        return change.payment


class RefundPayment(_PaymentChange):
    async def __call__(
        self,
        principal: Principal,
        payment_id: str,
        *,
        amount: int = 0,
        reason: str = "",
        idempotency_key: str | None = None,
    ) -> RefundResult:
        merchant_id = require_merchant(principal)
        errors = ValidationErrors()
        if not payment_id:
            errors.add("id", "is required")
        if amount and (problem := amount_problem(amount)) is not None:
            errors.add("amount", problem)
        problem = text_problem(reason, max_length=MAX_REFUND_REASON_LENGTH, multiline=True)
        if problem is not None:
            errors.add("reason", problem)
        errors.raise_if_any("The refund has invalid fields.")
        fields = {"id": payment_id, "amount": amount, "reason": reason}
        key = RequestKey(
            merchant_id, OP_REFUND, idempotency_key, self._fingerprints(OP_REFUND, fields)
        )
        result = await locked(self._units, partial(self._refund, key, payment_id, amount, reason))
        self._notify()
        return result

    async def _refund(
        self, key: RequestKey, payment_id: str, amount: int, reason: str, unit: PaymentsUnit
    ) -> RefundResult:
        async with unit:
            replay = await unit.idempotency.claim_refund(key)
            if replay is not None:
                return replay
            payment, ref = await lock_payment(unit, key.scope, payment_id)
            now = self._clock()
            refund_id = new_id("ref")
            change = refund(
                ref, payment, amount or None, refund_id=refund_id, reason=reason, now=now
            )
            if change.refund is None:  # pragma: no cover - refund() always sets it
                raise AssertionError("domain.refund returned no refund")
            # A retried request (same key) reuses the processor key even if the first
            # attempt's unit was lost, so the processor refunds once.
            processor_key = (
                "refund_" + self._fingerprints("refund-key", {"m": key.scope, "k": key.key})
                if key.key
                else refund_id
            )
            result = await self._connector.refund(
                RefundRequest(
                    payment_id=payment.id,
                    reference=payment.processor_reference,
                    amount=change.refund.amount,
                    currency=payment.currency,
                    idempotency_key=processor_key,
                )
            )
            if result.outcome is not ProcessorOutcome.APPROVED:
                raise processor_refused("refund", result)
            await record_change(unit, payment, ref, change, now)
            done = RefundResult(refund=change.refund, payment=change.payment)
            await unit.idempotency.complete(key, done)
            await unit.commit()
        return done
