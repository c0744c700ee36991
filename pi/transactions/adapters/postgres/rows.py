"""Rows of the transactions schema <-> the domain's values, and the parameters of the
statements that write them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any

from pi.platform.db.statements import Record
from pi.transactions.domain import (
    AppliedMovement,
    Movement,
    MovementKind,
    Transaction,
    TransactionStatus,
)

__all__ = [
    "advance_params",
    "applied_movement_from_record",
    "movement_columns",
    "movement_row",
    "transaction_from_record",
    "transaction_row",
]


def transaction_row(transaction: Transaction) -> dict[str, Any]:
    return {
        "id": transaction.id,
        "merchant_id": transaction.merchant_id,
        "amount": transaction.amount,
        "currency": transaction.currency,
        "description": transaction.description,
        "metadata": dict(transaction.metadata),
        "status": transaction.status.value,
        "authorized_amount": transaction.authorized_amount,
        "captured_amount": transaction.captured_amount,
        "refunded_amount": transaction.refunded_amount,
        "cancelled": transaction.cancelled,
        "last_payment_failed": transaction.last_payment_failed,
        "create_time": transaction.create_time,
        "update_time": transaction.update_time,
    }


def transaction_from_record(row: Record) -> Transaction:
    return Transaction(
        id=row.id,
        merchant_id=row.merchant_id,
        amount=row.amount,
        currency=row.currency,
        description=row.description,
        metadata=MappingProxyType(dict(row.metadata)),
        status=TransactionStatus(row.status),
        authorized_amount=row.authorized_amount,
        captured_amount=row.captured_amount,
        refunded_amount=row.refunded_amount,
        last_payment_failed=bool(row.last_payment_failed),
        create_time=row.create_time,
        update_time=row.update_time,
    )


def advance_params(before: Transaction, after: Transaction) -> dict[str, Any]:
    """The parameters of the UPDATE that takes a row from `before` to `after`: the
    amounts as differences (added to what is stored, so the CHECK constraints judge what
    is really stored), the status and flags as they become."""
    return {
        "p_id": after.id,
        "p_merchant_id": after.merchant_id,
        "p_authorized_delta": after.authorized_amount - before.authorized_amount,
        "p_captured_delta": after.captured_amount - before.captured_amount,
        "p_refunded_delta": after.refunded_amount - before.refunded_amount,
        "p_status": after.status.value,
        "p_cancelled": after.cancelled,
        "p_last_payment_failed": after.last_payment_failed,
        "p_update_time": after.update_time,
    }


def movement_row(movement: Movement, apply_time: datetime) -> dict[str, Any]:
    return {
        "id": movement.id,
        "transaction_id": movement.transaction_id,
        "payment_id": movement.payment_id,
        "kind": movement.kind.value,
        "authorized_delta": movement.authorized_delta,
        "captured_delta": movement.captured_delta,
        "refunded_delta": movement.refunded_delta,
        "occur_time": movement.occur_time,
        "apply_time": apply_time,
    }


def movement_columns(movements: Sequence[Movement], apply_time: datetime) -> dict[str, Any]:
    """The parameters of the many-row insert of movements: a list per column, one apply
    time."""
    return {
        "p_id": [m.id for m in movements],
        "p_transaction_id": [m.transaction_id for m in movements],
        "p_payment_id": [m.payment_id for m in movements],
        "p_kind": [m.kind.value for m in movements],
        "p_authorized_delta": [m.authorized_delta for m in movements],
        "p_captured_delta": [m.captured_delta for m in movements],
        "p_refunded_delta": [m.refunded_delta for m in movements],
        "p_occur_time": [m.occur_time for m in movements],
        "p_apply_time": apply_time,
    }


def applied_movement_from_record(row: Record) -> AppliedMovement:
    return AppliedMovement(
        id=row.id,
        transaction_id=row.transaction_id,
        payment_id=row.payment_id,
        kind=MovementKind(row.kind),
        authorized_delta=row.authorized_delta,
        captured_delta=row.captured_delta,
        refunded_delta=row.refunded_delta,
        occur_time=row.occur_time,
        apply_time=row.apply_time,
    )
