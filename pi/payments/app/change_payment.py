"""CapturePayment, CancelPayment and RefundPayment, split around the processor call as
CreatePayment is, so that no lock or transaction is held while the processor answers
and a crash can never leave a processor change the ledger does not know:

1. T1, one LOCKED unit: claim the idempotency key holding "pending <payment or refund
   id>", lock the payment's ref then the payment, let the domain decide, and record the
   intent: the payment CAPTURING or CANCELLING, or a PENDING refund holding its amount.
   Commit;
2. call the processor, keyed by the intent (`capture_<payment id>`, `void_<payment
   id>`, the refund id): the same key on every attempt, so it changes money once;
3. T2 (`settle_change.py`): apply the answer, write the movements and store the final
   response under the key.

A retry with the same key that finds "pending" resumes at step 2 with the same intent;
so does a capture or cancel without a key of a payment already CAPTURING or CANCELLING
(the same request again). An intent whose answer never came (timeout, crash) is settled
by the reconciler, which asks the processor again with the same key.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from pi.payments.app.common import (
    RequestFingerprints,
    id_problem,
    locked,
    payment_not_found,
)
from pi.payments.app.ports import Clock, Connector, PaymentsUnit, UnitsOfWork
from pi.payments.app.requests import PendingChange, RefundResult, RequestKey
from pi.payments.app.settle_change import SettleChange
from pi.payments.domain import (
    MAX_REFUND_REASON_LENGTH,
    REASON_PAYMENT_NOT_CAPTURABLE,
    CaptureRequest,
    ConnectorResult,
    Payment,
    PaymentStatus,
    ProcessorOutcome,
    Refund,
    RefundRequest,
    RefundStatus,
    TransactionRef,
    VoidRequest,
    start_cancel,
    start_capture,
    start_refund,
)
from pi.platform.kernel.errors import FailedPrecondition, InvalidArgument, ValidationErrors
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
    "capture_request",
    "lock_payment",
    "refund_request",
    "void_request",
]

log = logging.getLogger(__name__)

_SETTLED = ConnectorResult(ProcessorOutcome.DECLINED)
"""What a retry passes on for an intent the key is pending on but someone (the
reconciler) settled meanwhile: the processor is not asked again, and the settlement
returns the intent as settled (a declined capture or void is reported as declined)."""

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


def capture_request(payment: Payment) -> CaptureRequest:
    """What the processor is asked for a CAPTURING payment, on every attempt."""
    return CaptureRequest(
        payment_id=payment.id,
        reference=payment.processor_reference,
        amount=payment.capturing_amount,
        currency=payment.currency,
        idempotency_key=f"capture_{payment.id}",
    )


def void_request(payment: Payment) -> VoidRequest:
    """What the processor is asked for a CANCELLING payment, on every attempt."""
    return VoidRequest(
        payment_id=payment.id,
        reference=payment.processor_reference,
        idempotency_key=f"void_{payment.id}",
    )


def refund_request(payment: Payment, refund: Refund) -> RefundRequest:
    """What the processor is asked for a PENDING refund, keyed by the refund's id."""
    return RefundRequest(
        payment_id=payment.id,
        reference=payment.processor_reference,
        amount=refund.amount,
        currency=refund.currency,
        idempotency_key=refund.id,
    )


async def ask(call: Awaitable[ConnectorResult], intent: str) -> ConnectorResult:
    """The processor's answer; no answer at all (an exception) is a TIMEOUT: the intent
    stays pending for a retry or the reconciler."""
    try:
        return await call
    except Exception:
        log.exception("processor call failed", extra={"intent": intent})
        return ConnectorResult.timeout()


class _PaymentChange:
    """What the three share: units, the processor, the settlement, fingerprints, clock."""

    def __init__(
        self,
        units: UnitsOfWork,
        connector: Connector,
        settle: SettleChange,
        *,
        fingerprints: RequestFingerprints,
        clock: Clock,
    ) -> None:
        self._units = units
        self._connector = connector
        self._settle = settle
        self._fingerprints = fingerprints
        self._clock = clock

    async def _record(
        self,
        key: RequestKey,
        payment_id: str,
        intent: _Intent,
        unit: PaymentsUnit,
    ) -> tuple[Payment, bool]:
        """T1 of a capture or cancel: the payment as recorded, and whether it is the
        final response already (a replay)."""
        async with unit:
            replay = await unit.idempotency.claim_change(key, PendingChange(payment_id))
            if isinstance(replay, Payment):
                return replay, True
            payment, ref = await lock_payment(unit, key.scope, payment_id)
            if replay is None and payment.status is intent.status:
                intent.check_resume(payment)
            elif replay is None:
                recorded = intent.start(ref, payment, self._clock())
                await unit.payments.update(payment, recorded)
                payment = recorded
            await unit.commit()
        return payment, False


@dataclass(frozen=True, slots=True)
class _Intent:
    """What T1 records for a capture (CAPTURING) or a cancel (CANCELLING), and what a
    request without a replayed key must match to resume one recorded already."""

    status: PaymentStatus
    amount: int = 0

    def start(self, ref: TransactionRef, payment: Payment, now: datetime) -> Payment:
        if self.status is PaymentStatus.CAPTURING:
            return start_capture(ref, payment, self.amount or None, now=now).payment
        return start_cancel(ref, payment, now=now).payment

    def check_resume(self, payment: Payment) -> None:
        if self.amount and self.amount != payment.capturing_amount:
            raise FailedPrecondition(
                f"Payment {payment.id} is being captured for another amount.",
                reason=REASON_PAYMENT_NOT_CAPTURABLE,
                metadata={"status": payment.status.value},
            )


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
        intent = _Intent(PaymentStatus.CAPTURING, amount)
        payment, final = await locked(self._units, partial(self._record, key, payment_id, intent))
        if final:
            return payment
        result = _SETTLED
        if payment.status is PaymentStatus.CAPTURING:
            result = await ask(self._connector.capture(capture_request(payment)), "capture")
        return await self._settle.capture(payment, result, key)


class CancelPayment(_PaymentChange):
    async def __call__(
        self, principal: Principal, payment_id: str, *, idempotency_key: str | None = None
    ) -> Payment:
        merchant_id = require_merchant(principal)
        if not payment_id:
            raise InvalidArgument.field("id", "is required")
        fingerprint = self._fingerprints(OP_CANCEL, {"id": payment_id})
        key = RequestKey(merchant_id, OP_CANCEL, idempotency_key, fingerprint)
        intent = _Intent(PaymentStatus.CANCELLING)
        payment, final = await locked(self._units, partial(self._record, key, payment_id, intent))
        if final:
            return payment
        result = _SETTLED
        if payment.status is PaymentStatus.CANCELLING:
            result = await ask(self._connector.void(void_request(payment)), "void")
        return await self._settle.void(payment, result, key)


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
        recorded = await locked(
            self._units, partial(self._record_refund, key, payment_id, amount, reason)
        )
        if isinstance(recorded, RefundResult):
            return recorded
        payment, refund = recorded
        result = _SETTLED
        if refund.status is RefundStatus.PENDING:
            result = await ask(self._connector.refund(refund_request(payment, refund)), "refund")
        return await self._settle.refund(payment, refund, result, key)

    async def _record_refund(
        self, key: RequestKey, payment_id: str, amount: int, reason: str, unit: PaymentsUnit
    ) -> RefundResult | tuple[Payment, Refund]:
        """T1: the PENDING refund (a new one, or the one the key is pending on) and its
        payment; or the key's final response."""
        refund_id = new_id("ref")
        async with unit:
            replay = await unit.idempotency.claim_change(key, PendingChange(refund_id))
            if isinstance(replay, RefundResult):
                return replay
            payment, ref = await lock_payment(unit, key.scope, payment_id)
            if isinstance(replay, PendingChange):
                pending = await unit.refunds.get(replay.target_id)
                if pending is None:  # pragma: no cover - written with the key
                    raise payment_not_found()
                await unit.commit()
                return payment, pending
            change = start_refund(
                ref, payment, amount or None, refund_id=refund_id, reason=reason, now=self._clock()
            )
            if change.refund is None:  # pragma: no cover - start_refund always sets it
                raise AssertionError("start_refund made no refund")
            await unit.payments.update(payment, change.payment)
            await unit.refunds.add(
                change.refund,
                merchant_id=payment.merchant_id,
                transaction_id=payment.transaction_id,
            )
            await unit.commit()
        return change.payment, change.refund
