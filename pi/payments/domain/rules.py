"""Payment rules: what each operation does to a payment and its transaction's ledger row.

Every operation is a pure function from the transaction's ledger row (`TransactionRef`,
locked by the caller) and the payment to a `PaymentChange`: the new payment, the new
ref, and the movements to write to the outbox in the same database transaction. The
caller persists the change only after the processor agreed (capture, void, refund) or
to record what the processor said (authorization). See docs/state-machines.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime

from pi.payments.domain.cards import CardDetails
from pi.payments.domain.methods import PaymentRequest
from pi.payments.domain.model import (
    BankTransferFacts,
    CaptureMode,
    CardFacts,
    CloseChange,
    FailureReason,
    MethodFacts,
    Payment,
    PaymentChange,
    PaymentStatus,
    Refund,
    RefundStatus,
    TransactionRef,
    WalletFacts,
    check_payment_invariants,
    check_ref_invariants,
    check_transition,
)
from pi.payments.domain.processor import ProcessorOutcome
from pi.payments.domain.reasons import (
    MAX_REFUND_REASON_LENGTH,
    REASON_AMOUNT_EXCEEDS_AUTHORIZED,
    REASON_AMOUNT_EXCEEDS_REFUNDABLE,
    REASON_AMOUNT_EXCEEDS_REMAINING,
    REASON_PAYMENT_NOT_CANCELLABLE,
    REASON_PAYMENT_NOT_CAPTURABLE,
    REASON_PAYMENT_NOT_PROCESSING,
    REASON_PAYMENT_NOT_REFUNDABLE,
    REASON_PAYMENT_PROCESSING,
    REASON_TRANSACTION_CAPTURED,
    REASON_TRANSACTION_CLOSED,
)
from pi.platform.kernel.errors import FailedPrecondition, InvalidArgument, ValidationErrors
from pi.platform.kernel.money import amount_problem, format_amount
from pi.platform.kernel.text import text_problem
from pi.platform.ledger import MovementDelta, MovementKind

__all__ = [
    "authorize_outcome",
    "cancel",
    "capture",
    "check_budget",
    "close_transaction",
    "refund",
    "start_payment",
]


def _transition(payment: Payment, now: datetime, **changes: object) -> Payment:
    new = dataclasses.replace(payment, update_time=now, **changes)  # type: ignore[arg-type]  # typed by callers
    check_transition(payment.status, new.status)
    check_payment_invariants(new)
    return new


def _change(
    payment: Payment,
    ref: TransactionRef,
    movements: tuple[MovementDelta, ...] = (),
    refund_: Refund | None = None,
) -> PaymentChange:
    check_ref_invariants(ref)
    return PaymentChange(payment=payment, ref=ref, movements=movements, refund=refund_)


def _requested_amount(amount: int | None, field: str) -> int | None:
    """None for "all"; 0 also means all (proto3 default); else 1..MAX_AMOUNT."""
    if amount is None or amount == 0:
        return None
    problem = amount_problem(amount)
    if problem is not None:
        raise InvalidArgument.field(field, problem)
    return amount


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


def capture(
    ref: TransactionRef, payment: Payment, amount: int | None, *, now: datetime
) -> PaymentChange:
    """Capture all (`amount` None or 0) or part of a REQUIRES_CAPTURE payment.

    The payment becomes SUCCEEDED with `captured_amount`; the rest of the authorization is
    released. Movement CAPTURE(captured +c, authorized -(amount - c)).
    Raises InvalidArgument on `amount` for a negative or too large value, and
    FailedPrecondition PAYMENT_NOT_CAPTURABLE, AMOUNT_EXCEEDS_AUTHORIZED,
    TRANSACTION_CLOSED.
    """
    wanted = _requested_amount(amount, "amount")
    if payment.status is not PaymentStatus.REQUIRES_CAPTURE:
        raise FailedPrecondition(
            f"Payment {payment.id} is {payment.status}; "
            "only a REQUIRES_CAPTURE payment can be captured.",
            reason=REASON_PAYMENT_NOT_CAPTURABLE,
            metadata={"status": payment.status.value},
        )
    if ref.closed:
        raise FailedPrecondition(
            "The transaction is cancelled: nothing can be captured on it.",
            reason=REASON_TRANSACTION_CLOSED,
        )
    authorized = payment.amount
    captured_amount = authorized if wanted is None else wanted
    if captured_amount > authorized:
        raise FailedPrecondition(
            f"At most {format_amount(authorized, payment.currency)} can be captured.",
            reason=REASON_AMOUNT_EXCEEDS_AUTHORIZED,
            metadata={"authorized": str(authorized)},
        )
    captured = _transition(
        payment, now, status=PaymentStatus.SUCCEEDED, captured_amount=captured_amount
    )
    new_ref = dataclasses.replace(
        ref,
        held_amount=ref.held_amount - authorized,
        captured_amount=ref.captured_amount + captured_amount,
    )
    movement = MovementDelta(
        MovementKind.CAPTURE,
        payment.id,
        authorized_delta=captured_amount - authorized,
        captured_delta=captured_amount,
    )
    return _change(captured, new_ref, (movement,))


def cancel(ref: TransactionRef, payment: Payment, *, now: datetime) -> PaymentChange:
    """Void a REQUIRES_CAPTURE payment: CANCELLED, the hold released, movement VOID(-amount).

    Raises FailedPrecondition PAYMENT_NOT_CANCELLABLE for any other status (a PROCESSING
    payment waits for its outcome; a captured one is refunded instead).
    """
    if payment.status is not PaymentStatus.REQUIRES_CAPTURE:
        raise FailedPrecondition(
            f"Payment {payment.id} is {payment.status}; "
            "only a REQUIRES_CAPTURE payment can be cancelled.",
            reason=REASON_PAYMENT_NOT_CANCELLABLE,
            metadata={"status": payment.status.value},
        )
    cancelled = _transition(payment, now, status=PaymentStatus.CANCELLED)
    new_ref = dataclasses.replace(ref, held_amount=ref.held_amount - payment.amount)
    movement = MovementDelta(MovementKind.VOID, payment.id, authorized_delta=-payment.amount)
    return _change(cancelled, new_ref, (movement,))


def refund(
    ref: TransactionRef,
    payment: Payment,
    amount: int | None,
    *,
    refund_id: str,
    reason: str = "",
    now: datetime,
) -> PaymentChange:
    """Refund all that is left (`amount` None or 0) or part of a SUCCEEDED payment.

    Refunds may repeat until captured - refunded is zero. Movement REFUND(refunded +r).
    Raises InvalidArgument on `amount` (negative, too large) or `reason` (over 500
    characters, control characters), and FailedPrecondition PAYMENT_NOT_REFUNDABLE (not
    SUCCEEDED, or nothing left) or AMOUNT_EXCEEDS_REFUNDABLE (metadata `refundable`).
    """
    errors = ValidationErrors()
    wanted: int | None = None
    try:
        wanted = _requested_amount(amount, "amount")
    except InvalidArgument as error:
        for violation in error.violations:
            errors.add(violation.field, violation.description)
    problem = text_problem(reason, max_length=MAX_REFUND_REASON_LENGTH, multiline=True)
    if problem is not None:
        errors.add("reason", problem)
    errors.raise_if_any("The refund has invalid fields.")
    refundable = payment.refundable_amount
    if payment.status is not PaymentStatus.SUCCEEDED or refundable <= 0:
        message = (
            f"Payment {payment.id} is already fully refunded."
            if payment.status is PaymentStatus.SUCCEEDED
            else f"Payment {payment.id} is {payment.status}; "
            "only a SUCCEEDED payment can be refunded."
        )
        raise FailedPrecondition(
            message, reason=REASON_PAYMENT_NOT_REFUNDABLE, metadata={"status": payment.status.value}
        )
    refunded_amount = refundable if wanted is None else wanted
    if refunded_amount > refundable:
        raise FailedPrecondition(
            f"At most {format_amount(refundable, payment.currency)} can be refunded.",
            reason=REASON_AMOUNT_EXCEEDS_REFUNDABLE,
            metadata={"refundable": str(refundable)},
        )
    refunded = _transition(payment, now, refunded_amount=payment.refunded_amount + refunded_amount)
    new_ref = dataclasses.replace(ref, refunded_amount=ref.refunded_amount + refunded_amount)
    movement = MovementDelta(MovementKind.REFUND, payment.id, refunded_delta=refunded_amount)
    record = Refund(
        id=refund_id,
        payment_id=payment.id,
        amount=refunded_amount,
        currency=payment.currency,
        reason=reason,
        status=RefundStatus.SUCCEEDED,
        create_time=now,
    )
    return _change(refunded, new_ref, (movement,), record)


def close_transaction(
    ref: TransactionRef, payments: Iterable[Payment], *, now: datetime
) -> CloseChange:
    """Close a transaction to new payments and void its outstanding authorizations.

    `payments` are all payments of the transaction. Raises FailedPrecondition
    TRANSACTION_CAPTURED if anything was captured, PAYMENT_PROCESSING if a payment still
    waits for the processor (its outcome could capture money after the close). Closing a
    closed ref changes nothing (`already_closed`).
    """
    if ref.closed:
        return CloseChange(ref=ref, voided=(), movements=(), already_closed=True)
    if ref.captured_amount > 0:
        raise FailedPrecondition(
            "Money was captured on the transaction: refund it instead of cancelling.",
            reason=REASON_TRANSACTION_CAPTURED,
            metadata={"captured": str(ref.captured_amount)},
        )
    payments = list(payments)
    processing = [p.id for p in payments if p.status is PaymentStatus.PROCESSING]
    if processing:
        raise FailedPrecondition(
            "A payment of the transaction is waiting for the processor; retry when it has settled.",
            reason=REASON_PAYMENT_PROCESSING,
            metadata={"payment_id": processing[0]},
        )
    voided: list[Payment] = []
    movements: list[MovementDelta] = []
    new_ref = ref
    for payment in payments:
        if payment.status is PaymentStatus.REQUIRES_CAPTURE:
            change = cancel(new_ref, payment, now=now)
            new_ref = change.ref
            voided.append(change.payment)
            movements.extend(change.movements)
    movements.append(MovementDelta(MovementKind.CANCELLATION, None))
    new_ref = dataclasses.replace(new_ref, closed=True)
    check_ref_invariants(new_ref)
    return CloseChange(
        ref=new_ref, voided=tuple(voided), movements=tuple(movements), already_closed=False
    )
