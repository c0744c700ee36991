"""The steps every payment rule takes: a checked status change, a checked change of the
payment and its ref, and a requested amount read as "all" or a valid amount."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from pi.payments.domain.model import (
    Payment,
    PaymentChange,
    Refund,
    TransactionRef,
    check_payment_invariants,
    check_ref_invariants,
    check_transition,
)
from pi.platform.kernel.errors import InvalidArgument
from pi.platform.kernel.money import amount_problem
from pi.platform.ledger import MovementDelta

__all__ = ["change", "requested_amount", "transition"]


def transition(payment: Payment, now: datetime, **changes: object) -> Payment:
    """`payment` with `changes`, inside the state machine and its invariants."""
    new = dataclasses.replace(payment, update_time=now, **changes)  # type: ignore[arg-type]  # typed by callers
    check_transition(payment.status, new.status)
    check_payment_invariants(new)
    return new


def change(
    payment: Payment,
    ref: TransactionRef,
    movements: tuple[MovementDelta, ...] = (),
    refund_: Refund | None = None,
) -> PaymentChange:
    check_ref_invariants(ref)
    return PaymentChange(payment=payment, ref=ref, movements=movements, refund=refund_)


def requested_amount(amount: int | None, field: str) -> int | None:
    """None for "all"; 0 also means all (proto3 default); else 1..MAX_AMOUNT."""
    if amount is None or amount == 0:
        return None
    problem = amount_problem(amount)
    if problem is not None:
        raise InvalidArgument.field(field, problem)
    return amount
