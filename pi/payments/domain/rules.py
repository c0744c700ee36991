"""Payment rules: a new payment and its authorization's outcome (capture, cancel, refund
and close are in `operations`).

Every operation is a pure function from the transaction's ledger row (`TransactionRef`,
locked by the caller) and the payment to a `PaymentChange`: the new payment, the new
ref, and the movements to write to the outbox in the same database transaction. The
caller persists the change only after the processor agreed (capture, void, refund) or
to record what the processor said (authorization). See docs/state-machines.md.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from pi.payments.domain.cards import CardDetails
from pi.payments.domain.changes import change, requested_amount, transition
from pi.payments.domain.methods import PaymentRequest
from pi.payments.domain.model import (
    BankTransferFacts,
    CaptureMode,
    CardFacts,
    FailureReason,
    MethodFacts,
    Payment,
    PaymentChange,
    PaymentStatus,
    TransactionRef,
    WalletFacts,
)
from pi.payments.domain.processor import ProcessorOutcome
from pi.payments.domain.reasons import (
    REASON_AMOUNT_EXCEEDS_REMAINING,
    REASON_PAYMENT_NOT_PROCESSING,
    REASON_TRANSACTION_CLOSED,
)
from pi.platform.kernel.errors import FailedPrecondition
from pi.platform.kernel.money import format_amount
from pi.platform.ledger import MovementDelta, MovementKind

__all__ = ["authorize_outcome", "check_budget", "start_payment"]


_transition = transition
_change = change
_requested_amount = requested_amount


# --- operations ----------------------------------------------------------------------------


def check_budget(ref: TransactionRef, amount: int | None) -> int:
    """The amount a new payment takes (`None` -> everything remaining).

    Raises FailedPrecondition TRANSACTION_CLOSED if the ref is closed, and
    AMOUNT_EXCEEDS_REMAINING (metadata `remaining`) unless held + captured + amount <=
    transaction amount and the amount is positive.
    """
    if ref.closed:
        raise FailedPrecondition(
            "The transaction is cancelled and takes no new payment.",
            reason=REASON_TRANSACTION_CLOSED,
        )
    remaining = ref.remaining
    wanted = remaining if amount is None else amount
    if wanted <= 0 or wanted > remaining:
        raise FailedPrecondition(
            f"Only {format_amount(remaining, ref.currency)} remains to be paid on the transaction.",
            reason=REASON_AMOUNT_EXCEEDS_REMAINING,
            metadata={"remaining": str(remaining)},
        )
    return wanted


def start_payment(
    ref: TransactionRef,
    request: PaymentRequest,
    *,
    payment_id: str,
    merchant_id: str,
    fingerprint_key: bytes,
    now: datetime,
) -> PaymentChange:
    """A new PROCESSING payment holding its amount of the transaction's budget.

    Persist it (ref.held_amount grows) before calling the processor, so a crash leaves
    a PROCESSING payment for the reconciler rather than an unrecorded charge. No movement:
    the transaction learns of the payment when the processor answers.
    """
    amount = check_budget(ref, request.amount)
    details = request.details
    facts: MethodFacts = (
        details.facts(fingerprint_key, merchant_id)
        if isinstance(details, CardDetails)
        else details.facts()
    )
    payment = Payment(
        id=payment_id,
        merchant_id=merchant_id,
        transaction_id=ref.transaction_id,
        amount=amount,
        currency=ref.currency,
        method=request.method,
        capture_mode=request.capture_mode,
        status=PaymentStatus.PROCESSING,
        failure_reason=None,
        captured_amount=0,
        refunded_amount=0,
        card=facts if isinstance(facts, CardFacts) else None,
        bank_transfer=facts if isinstance(facts, BankTransferFacts) else None,
        wallet=facts if isinstance(facts, WalletFacts) else None,
        processor_reference=None,
        create_time=now,
        update_time=now,
    )
    return _change(payment, dataclasses.replace(ref, held_amount=ref.held_amount + amount))


def authorize_outcome(
    ref: TransactionRef,
    payment: Payment,
    outcome: ProcessorOutcome,
    *,
    failure_reason: FailureReason | None = None,
    processor_reference: str | None = None,
    now: datetime,
) -> PaymentChange:
    """Apply what the processor said about a PROCESSING payment's authorization.

    APPROVED, MANUAL capture -> REQUIRES_CAPTURE; movement AUTHORIZATION(+amount).
    APPROVED, AUTOMATIC -> SUCCEEDED; AUTHORIZATION(+amount) then CAPTURE(captured
    +amount); the hold becomes captured.
    DECLINED -> FAILED with `failure_reason` (PROCESSOR_DECLINED if none); FAILURE; the
    hold is released.
    PENDING / TIMEOUT -> still PROCESSING, no movement (only the reference is recorded).
    A payment that is not PROCESSING raises FailedPrecondition PAYMENT_NOT_PROCESSING
    (someone else settled it first: the caller treats that as done).
    """
    if payment.status is not PaymentStatus.PROCESSING:
        raise FailedPrecondition(
            f"Payment {payment.id} is already {payment.status}.",
            reason=REASON_PAYMENT_NOT_PROCESSING,
            metadata={"status": payment.status.value},
        )
    reference = processor_reference or payment.processor_reference
    if outcome in (ProcessorOutcome.PENDING, ProcessorOutcome.TIMEOUT):
        if reference == payment.processor_reference:
            return _change(payment, ref)
        noted = dataclasses.replace(payment, processor_reference=reference, update_time=now)
        return _change(noted, ref)
    amount = payment.amount
    released = dataclasses.replace(ref, held_amount=ref.held_amount - amount)
    if outcome is ProcessorOutcome.DECLINED:
        failed = _transition(
            payment,
            now,
            status=PaymentStatus.FAILED,
            failure_reason=failure_reason or FailureReason.PROCESSOR_DECLINED,
            processor_reference=reference,
        )
        return _change(failed, released, (MovementDelta(MovementKind.FAILURE, payment.id),))
    authorization = MovementDelta(MovementKind.AUTHORIZATION, payment.id, authorized_delta=amount)
    if payment.capture_mode is CaptureMode.MANUAL:
        held = _transition(
            payment, now, status=PaymentStatus.REQUIRES_CAPTURE, processor_reference=reference
        )
        return _change(held, ref, (authorization,))
    captured = _transition(
        payment,
        now,
        status=PaymentStatus.SUCCEEDED,
        captured_amount=amount,
        processor_reference=reference,
    )
    capture_movement = MovementDelta(MovementKind.CAPTURE, payment.id, captured_delta=amount)
    new_ref = dataclasses.replace(released, captured_amount=ref.captured_amount + amount)
    return _change(captured, new_ref, (authorization, capture_movement))
