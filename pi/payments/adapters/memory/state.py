"""The in-memory payment store: its rows, and the rules PostgreSQL enforces on them (the
CHECK constraints, foreign and unique keys of `adapters/postgres/tables.py` and the
status trigger of migration 0001), raised as `IntegrityViolation` where the database
raises an integrity error."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime

from pi.payments.app.requests import ChangeResponse, CreateResponse
from pi.payments.domain import Payment, PaymentStatus, Refund, TransactionRef
from pi.platform.ledger import Movement

__all__ = [
    "IntegrityViolation",
    "MemoryState",
    "OutboxRow",
    "StoredKey",
    "StoredRef",
    "check_payment_insert",
    "check_payment_update",
    "check_ref",
]


class IntegrityViolation(Exception):
    """A row the database would refuse: `constraint` names the rule, as PostgreSQL does."""

    def __init__(self, constraint: str, detail: str = "") -> None:
        super().__init__(f"{constraint}: {detail}" if detail else constraint)
        self.constraint = constraint


@dataclass
class StoredRef:
    ref: TransactionRef
    movement_count: int
    create_time: datetime
    update_time: datetime


@dataclass
class OutboxRow:
    id: str
    transaction_id: str
    seq: int
    movement: Movement
    create_time: datetime
    next_attempt_time: datetime
    attempts: int = 0
    delivered_time: datetime | None = None
    last_error: str | None = None


@dataclass
class StoredKey:
    request_hash: str
    response: CreateResponse | ChangeResponse | None
    create_time: datetime


@dataclass
class MemoryState:
    """Every row, by primary key (outbox rows in the order they were written)."""

    refs: dict[str, StoredRef] = field(default_factory=dict)
    payments: dict[str, Payment] = field(default_factory=dict)
    refunds: dict[str, Refund] = field(default_factory=dict)
    outbox: dict[str, OutboxRow] = field(default_factory=dict)
    keys: dict[tuple[str, str, str], StoredKey] = field(default_factory=dict)
    dead_letters: dict[str, tuple[OutboxRow, datetime]] = field(default_factory=dict)
    """Dead outbox rows by movement id, with when they died."""

    def ref_of(self, transaction_id: str, currency: str, constraint: str) -> StoredRef:
        """The ref a row with this (transaction, currency) references (a foreign key)."""
        stored = self.refs.get(transaction_id)
        if stored is None or stored.ref.currency != currency:
            raise IntegrityViolation(constraint, f"no ref ({transaction_id}, {currency})")
        return stored


def check_ref(stored: StoredRef) -> None:
    ref = stored.ref
    if ref.amount <= 0:
        raise IntegrityViolation("transaction_refs_amount_positive")
    if min(ref.held_amount, ref.captured_amount, ref.refunded_amount) < 0:
        raise IntegrityViolation("transaction_refs_amounts_non_negative")
    if ref.held_amount + ref.captured_amount > ref.amount:
        raise IntegrityViolation("transaction_refs_within_amount")
    if ref.refunded_amount > ref.captured_amount:
        raise IntegrityViolation("transaction_refs_refunded_le_captured")
    if stored.movement_count < 0:
        raise IntegrityViolation("transaction_refs_movement_count")


def _check_payment_row(payment: Payment) -> None:
    if payment.amount <= 0:
        raise IntegrityViolation("payments_amount_positive")
    if not 0 <= payment.refunded_amount <= payment.captured_amount <= payment.amount:
        raise IntegrityViolation("payments_amounts_ordered")
    refunding = payment.refunding_amount
    if not 0 <= refunding <= payment.captured_amount - payment.refunded_amount:
        raise IntegrityViolation("payments_refunding_within_captured")
    capturing = payment.capturing_amount > 0
    if capturing != (payment.status is PaymentStatus.CAPTURING) or (
        payment.capturing_amount > payment.amount or payment.capturing_amount < 0
    ):
        raise IntegrityViolation("payments_capturing_iff_capturing")
    if (payment.status is PaymentStatus.FAILED) != (payment.failure_reason is not None):
        raise IntegrityViolation("payments_failure_reason_iff_failed")
    if (payment.status is PaymentStatus.SUCCEEDED) != (payment.captured_amount > 0):
        raise IntegrityViolation("payments_captured_iff_succeeded")


def check_payment_insert(payment: Payment) -> None:
    _check_payment_row(payment)
    if payment.status is PaymentStatus.CANCELLED or payment.refunded_amount != 0:
        raise IntegrityViolation("payments_guard", "cannot be created as that with refunds")


_IMMUTABLE = (
    "id",
    "merchant_id",
    "transaction_id",
    "amount",
    "currency",
    "method",
    "capture_mode",
    "create_time",
)
_STATUS_CHANGES = {
    (PaymentStatus.PROCESSING, PaymentStatus.REQUIRES_CAPTURE),
    (PaymentStatus.PROCESSING, PaymentStatus.SUCCEEDED),
    (PaymentStatus.PROCESSING, PaymentStatus.FAILED),
    (PaymentStatus.REQUIRES_CAPTURE, PaymentStatus.CAPTURING),
    (PaymentStatus.REQUIRES_CAPTURE, PaymentStatus.CANCELLING),
    (PaymentStatus.CAPTURING, PaymentStatus.SUCCEEDED),
    (PaymentStatus.CAPTURING, PaymentStatus.REQUIRES_CAPTURE),
    (PaymentStatus.CANCELLING, PaymentStatus.CANCELLED),
    (PaymentStatus.CANCELLING, PaymentStatus.REQUIRES_CAPTURE),
}


def check_payment_update(old: Payment, new: Payment) -> None:
    """The status trigger's rules, then the row's CHECK constraints."""
    if any(getattr(old, name) != getattr(new, name) for name in _IMMUTABLE):
        raise IntegrityViolation("payments_guard", "identity and amount columns are immutable")
    if new.refunded_amount < old.refunded_amount:
        raise IntegrityViolation("payments_guard", "refunded_amount cannot decrease")
    if old.status is PaymentStatus.SUCCEEDED and new.captured_amount != old.captured_amount:
        raise IntegrityViolation("payments_guard", "captured_amount of a captured payment")
    same = new.status is old.status and old.status in (
        PaymentStatus.PROCESSING,
        PaymentStatus.SUCCEEDED,
    )
    if not same and (old.status, new.status) not in _STATUS_CHANGES:
        raise IntegrityViolation("payments_guard", f"status {old.status} -> {new.status}")
    _check_payment_row(new)


def with_amounts(stored: StoredRef, old: TransactionRef, new: TransactionRef) -> TransactionRef:
    """The stored ref with `new - old` applied (amounts as deltas, `closed` as given)."""
    ref = stored.ref
    return dataclasses.replace(
        ref,
        held_amount=ref.held_amount + new.held_amount - old.held_amount,
        captured_amount=ref.captured_amount + new.captured_amount - old.captured_amount,
        refunded_amount=ref.refunded_amount + new.refunded_amount - old.refunded_amount,
        closed=new.closed,
    )
