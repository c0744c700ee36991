"""Idempotent replays return the transaction exactly as the first call returned it: the
response stored with an idempotency key is the transaction, encoded here."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from pi.transactions.domain import Transaction, TransactionStatus

__all__ = ["decode", "encode", "from_micros", "micros"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(value: datetime) -> int:
    """Microseconds since the epoch (exact, unlike a float timestamp)."""
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def encode(transaction: Transaction) -> bytes:
    return json.dumps(
        {
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
            "last_payment_failed": transaction.last_payment_failed,
            "create_time": micros(transaction.create_time),
            "update_time": micros(transaction.update_time),
        },
        sort_keys=True,
    ).encode()


def decode(data: bytes) -> Transaction:
    value = json.loads(data)
    return Transaction(
        id=value["id"],
        merchant_id=value["merchant_id"],
        amount=value["amount"],
        currency=value["currency"],
        description=value["description"],
        metadata=MappingProxyType(dict(value["metadata"])),
        status=TransactionStatus(value["status"]),
        authorized_amount=value["authorized_amount"],
        captured_amount=value["captured_amount"],
        refunded_amount=value["refunded_amount"],
        last_payment_failed=value["last_payment_failed"],
        create_time=from_micros(value["create_time"]),
        update_time=from_micros(value["update_time"]),
    )
