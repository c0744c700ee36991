"""Protos of `pi.transactions.v1` <-> the plain values the use cases take and give."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from generated.pi.transactions.v1 import transactions_pb2
from pi.platform.kernel.errors import DomainError, InvalidArgument, ValidationErrors
from pi.platform.runtime.protobuf import timestamp, to_datetime
from pi.platform.runtime.status import internal_status, to_status_proto
from pi.transactions.app.apply_movements import MovementResult
from pi.transactions.domain import (
    Movement,
    MovementKind,
    Transaction,
    TransactionStatus,
    UnreadableMovement,
)

__all__ = [
    "movement_from_pb",
    "optional_time",
    "readable_movement",
    "result_to_pb",
    "status_from_pb",
    "to_pb",
]

_STATUS_TO_PB = {
    status: transactions_pb2.TransactionStatus.Value(f"TRANSACTION_STATUS_{status.value}")
    for status in TransactionStatus
}
_STATUS_FROM_PB = {number: status for status, number in _STATUS_TO_PB.items()}
_KIND_FROM_PB = {
    transactions_pb2.MovementKind.Value(f"MOVEMENT_KIND_{kind.value}"): kind
    for kind in MovementKind
}


def to_pb(transaction: Transaction) -> transactions_pb2.Transaction:
    return transactions_pb2.Transaction(
        id=transaction.id,
        merchant_id=transaction.merchant_id,
        amount=transaction.amount,
        currency=transaction.currency,
        description=transaction.description,
        metadata=dict(transaction.metadata),
        status=_STATUS_TO_PB[transaction.status],
        authorized_amount=transaction.authorized_amount,
        captured_amount=transaction.captured_amount,
        refunded_amount=transaction.refunded_amount,
        create_time=timestamp(transaction.create_time),
        update_time=timestamp(transaction.update_time),
    )


def status_from_pb(
    value: transactions_pb2.TransactionStatus.ValueType, errors: ValidationErrors
) -> TransactionStatus | None:
    """The status filter of a listing: None for UNSPECIFIED (any), an error if unknown."""
    if value == transactions_pb2.TRANSACTION_STATUS_UNSPECIFIED:
        return None
    status = _STATUS_FROM_PB.get(value)
    if status is None:
        errors.add("status", "is not a transaction status")
    return status


def movement_from_pb(movement: transactions_pb2.Movement) -> Movement:
    """The domain movement; InvalidArgument if the kind or the time cannot be read."""
    errors = ValidationErrors()
    kind = _KIND_FROM_PB.get(movement.kind)
    if kind is None:
        errors.add("movement.kind", "must be a movement kind")
    occur_time = optional_time(movement, "occur_time", errors, field="movement.occur_time")
    if not movement.HasField("occur_time"):
        errors.add("movement.occur_time", "is required")
    errors.raise_if_any("The movement is malformed.")
    assert kind is not None and occur_time is not None  # raise_if_any raised otherwise
    return Movement(
        id=movement.id,
        merchant_id=movement.merchant_id,
        transaction_id=movement.transaction_id,
        payment_id=movement.payment_id or None,
        kind=kind,
        authorized_delta=movement.authorized_delta,
        captured_delta=movement.captured_delta,
        refunded_delta=movement.refunded_delta,
        occur_time=occur_time,
    )


def readable_movement(movement: transactions_pb2.Movement) -> Movement | UnreadableMovement:
    """One movement of a batch; one that cannot be read is reported in its own result."""
    try:
        return movement_from_pb(movement)
    except InvalidArgument as error:
        return UnreadableMovement(movement.id, movement.transaction_id, error)


def result_to_pb(result: MovementResult) -> transactions_pb2.MovementResult:
    if result.error is None:
        status = status_pb2.Status()
    elif isinstance(result.error, DomainError):
        status = to_status_proto(result.error)
    else:
        status = internal_status()
    return transactions_pb2.MovementResult(movement_id=result.movement_id, status=status)


def optional_time(
    message: Any, name: str, errors: ValidationErrors, *, field: str | None = None
) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: Timestamp = getattr(message, name)
    try:
        return to_datetime(stamp)
    except (ValueError, OverflowError):
        errors.add(field or name, "is not a valid timestamp")
        return None
