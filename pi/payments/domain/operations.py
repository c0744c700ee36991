"""Capture, cancel, refund and close: each in two halves around the processor's call.

The first half (`start_*`) records the intent: the payment becomes CAPTURING or
CANCELLING, a refund PENDING holding its amount of what is refundable, a closed
transaction's authorizations CANCELLING. Nothing moves yet: no movement, and the ref
keeps every hold. The caller commits it before it calls the processor, so a crash in
between leaves an intent the reconciler resolves, never a processor change the ledger
does not know.

The second half (`*_outcome`) applies the processor's final answer: approved, the money
moves (the movements the whole operation makes); declined, the intent is undone (a
declined refund is kept, FAILED with its reason). The whole operations (`capture`,
`cancel`, `refund`, `close_transaction`) are the two halves with an approval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime

from pi.payments.domain.changes import change, requested_amount, transition
from pi.payments.domain.model import (
    CloseChange,
    FailureReason,
    Payment,
    PaymentChange,
    PaymentStatus,
    Refund,
    RefundStatus,
    TransactionRef,
    check_ref_invariants,
)
from pi.payments.domain.reasons import (
    MAX_REFUND_REASON_LENGTH,
    REASON_AMOUNT_EXCEEDS_AUTHORIZED,
    REASON_AMOUNT_EXCEEDS_REFUNDABLE,
    REASON_PAYMENT_NOT_CANCELLABLE,
    REASON_PAYMENT_NOT_CAPTURABLE,
    REASON_PAYMENT_NOT_REFUNDABLE,
    REASON_PAYMENT_PROCESSING,
    REASON_TRANSACTION_CAPTURED,
    REASON_TRANSACTION_CLOSED,
)
from pi.platform.kernel.errors import FailedPrecondition, InvalidArgument, ValidationErrors
from pi.platform.kernel.money import format_amount
from pi.platform.kernel.text import text_problem
from pi.platform.ledger import MovementDelta, MovementKind

__all__ = [
    "cancel",
    "cancel_outcome",
    "capture",
    "capture_outcome",
    "close_transaction",
    "refund",
    "refund_outcome",
    "start_cancel",
    "start_capture",
    "start_close",
    "start_refund",
]

_WAITING = (PaymentStatus.PROCESSING, PaymentStatus.CAPTURING)
"""Statuses whose processor answer could still capture money."""


def _not_in(payment: Payment, status: PaymentStatus, reason: str, action: str) -> None:
    if payment.status is not status:
        raise FailedPrecondition(
            f"Payment {payment.id} is {payment.status}; only a {status} payment can be {action}.",
            reason=reason,
            metadata={"status": payment.status.value},
        )


# --- capture -------------------------------------------------------------------------------


def start_capture(
    ref: TransactionRef, payment: Payment, amount: int | None, *, now: datetime
) -> PaymentChange:
    """Record the capture of all (`amount` None or 0) or part of a REQUIRES_CAPTURE
    payment: CAPTURING with `capturing_amount`, nothing moved yet.

    Raises InvalidArgument on `amount` for a negative or too large value, and
    FailedPrecondition PAYMENT_NOT_CAPTURABLE, AMOUNT_EXCEEDS_AUTHORIZED,
    TRANSACTION_CLOSED.
    """
    wanted = requested_amount(amount, "amount")
    _not_in(payment, PaymentStatus.REQUIRES_CAPTURE, REASON_PAYMENT_NOT_CAPTURABLE, "captured")
    if ref.closed:
        raise FailedPrecondition(
            "The transaction is cancelled: nothing can be captured on it.",
            reason=REASON_TRANSACTION_CLOSED,
        )
    authorized = payment.amount
    capturing = authorized if wanted is None else wanted
    if capturing > authorized:
        raise FailedPrecondition(
            f"At most {format_amount(authorized, payment.currency)} can be captured.",
            reason=REASON_AMOUNT_EXCEEDS_AUTHORIZED,
            metadata={"authorized": str(authorized)},
        )
    return change(
        transition(payment, now, status=PaymentStatus.CAPTURING, capturing_amount=capturing), ref
    )


def capture_outcome(
    ref: TransactionRef, payment: Payment, *, approved: bool, now: datetime
) -> PaymentChange:
    """Apply the processor's final answer to a CAPTURING payment.

    Approved: SUCCEEDED with `captured_amount`, the rest of the authorization released;
    movement CAPTURE(captured +c, authorized -(amount - c)). Declined: REQUIRES_CAPTURE
    again, nothing moved. Raises PAYMENT_NOT_CAPTURABLE if it is not CAPTURING.
    """
    _not_in(payment, PaymentStatus.CAPTURING, REASON_PAYMENT_NOT_CAPTURABLE, "settled")
    if not approved:
        back = transition(payment, now, status=PaymentStatus.REQUIRES_CAPTURE, capturing_amount=0)
        return change(back, ref)
    authorized, captured_amount = payment.amount, payment.capturing_amount
    captured = transition(
        payment,
        now,
        status=PaymentStatus.SUCCEEDED,
        captured_amount=captured_amount,
        capturing_amount=0,
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
    return change(captured, new_ref, (movement,))


def capture(
    ref: TransactionRef, payment: Payment, amount: int | None, *, now: datetime
) -> PaymentChange:
    """`start_capture` then an approved `capture_outcome`: the whole capture."""
    started = start_capture(ref, payment, amount, now=now)
    return capture_outcome(started.ref, started.payment, approved=True, now=now)


# --- cancel --------------------------------------------------------------------------------


def start_cancel(ref: TransactionRef, payment: Payment, *, now: datetime) -> PaymentChange:
    """Record the void of a REQUIRES_CAPTURE payment: CANCELLING, still holding.

    Raises FailedPrecondition PAYMENT_NOT_CANCELLABLE for any other status (a PROCESSING
    payment waits for its outcome; a captured one is refunded instead).
    """
    _not_in(payment, PaymentStatus.REQUIRES_CAPTURE, REASON_PAYMENT_NOT_CANCELLABLE, "cancelled")
    return change(transition(payment, now, status=PaymentStatus.CANCELLING), ref)


def cancel_outcome(
    ref: TransactionRef, payment: Payment, *, approved: bool, now: datetime
) -> PaymentChange:
    """Apply the processor's final answer to a CANCELLING payment. Approved: CANCELLED,
    the hold released, movement VOID(-amount). Declined: REQUIRES_CAPTURE again."""
    _not_in(payment, PaymentStatus.CANCELLING, REASON_PAYMENT_NOT_CANCELLABLE, "settled")
    if not approved:
        return change(transition(payment, now, status=PaymentStatus.REQUIRES_CAPTURE), ref)
    cancelled = transition(payment, now, status=PaymentStatus.CANCELLED)
    new_ref = dataclasses.replace(ref, held_amount=ref.held_amount - payment.amount)
    movement = MovementDelta(MovementKind.VOID, payment.id, authorized_delta=-payment.amount)
    return change(cancelled, new_ref, (movement,))


def cancel(ref: TransactionRef, payment: Payment, *, now: datetime) -> PaymentChange:
    """`start_cancel` then an approved `cancel_outcome`: the whole void."""
    started = start_cancel(ref, payment, now=now)
    return cancel_outcome(started.ref, started.payment, approved=True, now=now)


# --- refund --------------------------------------------------------------------------------


def start_refund(
    ref: TransactionRef,
    payment: Payment,
    amount: int | None,
    *,
    refund_id: str,
    reason: str = "",
    now: datetime,
) -> PaymentChange:
    """Record a refund of all that is left (`amount` None or 0) or part of a SUCCEEDED
    payment: a PENDING refund whose amount the payment holds (`refunding_amount`).

    Raises InvalidArgument on `amount` (negative, too large) or `reason` (over 500
    characters, control characters), and FailedPrecondition PAYMENT_NOT_REFUNDABLE (not
    SUCCEEDED, or nothing left) or AMOUNT_EXCEEDS_REFUNDABLE (metadata `refundable`).
    """
    errors = ValidationErrors()
    wanted: int | None = None
    try:
        wanted = requested_amount(amount, "amount")
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
    refunding = refundable if wanted is None else wanted
    if refunding > refundable:
        raise FailedPrecondition(
            f"At most {format_amount(refundable, payment.currency)} can be refunded.",
            reason=REASON_AMOUNT_EXCEEDS_REFUNDABLE,
            metadata={"refundable": str(refundable)},
        )
    holding = transition(payment, now, refunding_amount=payment.refunding_amount + refunding)
    record = Refund(
        id=refund_id,
        payment_id=payment.id,
        amount=refunding,
        currency=payment.currency,
        reason=reason,
        status=RefundStatus.PENDING,
        create_time=now,
    )
    return change(holding, ref, (), record)


def refund_outcome(
    ref: TransactionRef,
    payment: Payment,
    pending: Refund,
    *,
    approved: bool,
    failure_reason: FailureReason | None = None,
    processor_reference: str | None = None,
    now: datetime,
) -> PaymentChange:
    """Apply the processor's final answer to a PENDING refund of `payment`.

    Approved: SUCCEEDED, the payment's and ref's refunded amounts grow; movement
    REFUND(refunded +r). Declined: FAILED with `failure_reason` (PROCESSOR_DECLINED if
    none), its amount refundable again, nothing moved. Either way the hold goes.
    Raises PAYMENT_NOT_REFUNDABLE if the refund is not PENDING (settled already).
    """
    if pending.status is not RefundStatus.PENDING or pending.payment_id != payment.id:
        raise FailedPrecondition(
            f"Refund {pending.id} is {pending.status}.",
            reason=REASON_PAYMENT_NOT_REFUNDABLE,
            metadata={"status": pending.status.value},
        )
    amount = pending.amount
    released = payment.refunding_amount - amount
    if not approved:
        failed = dataclasses.replace(
            pending,
            status=RefundStatus.FAILED,
            failure_reason=failure_reason or FailureReason.PROCESSOR_DECLINED,
            processor_reference=processor_reference,
        )
        return change(transition(payment, now, refunding_amount=released), ref, (), failed)
    refunded = transition(
        payment,
        now,
        refunding_amount=released,
        refunded_amount=payment.refunded_amount + amount,
    )
    new_ref = dataclasses.replace(ref, refunded_amount=ref.refunded_amount + amount)
    movement = MovementDelta(MovementKind.REFUND, payment.id, refunded_delta=amount)
    done = dataclasses.replace(
        pending, status=RefundStatus.SUCCEEDED, processor_reference=processor_reference
    )
    return change(refunded, new_ref, (movement,), done)


def refund(
    ref: TransactionRef,
    payment: Payment,
    amount: int | None,
    *,
    refund_id: str,
    reason: str = "",
    now: datetime,
) -> PaymentChange:
    """`start_refund` then an approved `refund_outcome`: the whole refund."""
    started = start_refund(ref, payment, amount, refund_id=refund_id, reason=reason, now=now)
    if started.refund is None:  # pragma: no cover - start_refund always sets it
        raise AssertionError("start_refund made no refund")
    return refund_outcome(started.ref, started.payment, started.refund, approved=True, now=now)


# --- close ---------------------------------------------------------------------------------


def start_close(ref: TransactionRef, payments: Iterable[Payment], *, now: datetime) -> CloseChange:
    """Close a transaction to new payments and record the void of its authorizations.

    `payments` are all payments of the transaction. The ref is closed with the
    CANCELLATION movement; each REQUIRES_CAPTURE payment becomes CANCELLING (`voided`,
    still holding until its void is settled with `cancel_outcome`). Raises
    FailedPrecondition TRANSACTION_CAPTURED if anything was captured, PAYMENT_PROCESSING
    if a payment's processor answer could still capture money (PROCESSING, CAPTURING).
    Closing a closed ref changes nothing (`already_closed`).
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
    waiting = [p.id for p in payments if p.status in _WAITING]
    if waiting:
        raise FailedPrecondition(
            "A payment of the transaction is waiting for the processor; retry when it has settled.",
            reason=REASON_PAYMENT_PROCESSING,
            metadata={"payment_id": waiting[0]},
        )
    voided = tuple(
        start_cancel(ref, p, now=now).payment
        for p in payments
        if p.status is PaymentStatus.REQUIRES_CAPTURE
    )
    new_ref = dataclasses.replace(ref, closed=True)
    check_ref_invariants(new_ref)
    return CloseChange(
        ref=new_ref,
        voided=voided,
        movements=(MovementDelta(MovementKind.CANCELLATION, None),),
        already_closed=False,
    )


def close_transaction(
    ref: TransactionRef, payments: Iterable[Payment], *, now: datetime
) -> CloseChange:
    """`start_close` then every void approved: the whole close, its VOID movements first,
    then the CANCELLATION, and `voided` CANCELLED."""
    started = start_close(ref, payments, now=now)
    if started.already_closed:
        return started
    new_ref = started.ref
    voided: list[Payment] = []
    movements: list[MovementDelta] = []
    for payment in started.voided:
        done = cancel_outcome(new_ref, payment, approved=True, now=now)
        new_ref = done.ref
        voided.append(done.payment)
        movements.extend(done.movements)
    return CloseChange(
        ref=new_ref,
        voided=tuple(voided),
        movements=(*movements, *started.movements),
        already_closed=False,
    )
