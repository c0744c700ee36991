"""The ledger contract between payments and transactions: movements of a transaction's money.

The payment service produces movements (each money operation's `MovementDelta`, made a
`Movement` with an id and time and sent through its outbox); the transaction service
applies them to its transactions' running amounts. Both sides share these types, and
nothing else of each other's code. They mirror `pi.transactions.v1.Movement`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

__all__ = ["Movement", "MovementDelta", "MovementKind"]


class MovementKind(enum.StrEnum):
    """Mirrors `pi.transactions.v1.MovementKind` without the prefix (value == name)."""

    AUTHORIZATION = "AUTHORIZATION"
    CAPTURE = "CAPTURE"
    VOID = "VOID"
    REFUND = "REFUND"
    FAILURE = "FAILURE"
    CANCELLATION = "CANCELLATION"


@dataclass(frozen=True, slots=True)
class MovementDelta:
    """What a payment operation does to its transaction's running amounts.

    Produced by the payment domain functions; the payment service turns each into a
    `Movement` (id, merchant, transaction, time) and writes it to its outbox.
    """

    kind: MovementKind
    payment_id: str | None
    authorized_delta: int = 0
    captured_delta: int = 0
    refunded_delta: int = 0


@dataclass(frozen=True, slots=True)
class Movement:
    """One change to a transaction's running amounts (transactions.proto `Movement`)."""

    id: str
    merchant_id: str
    transaction_id: str
    payment_id: str | None
    kind: MovementKind
    authorized_delta: int
    captured_delta: int
    refunded_delta: int
    occur_time: datetime

    @classmethod
    def from_delta(
        cls,
        delta: MovementDelta,
        *,
        id: str,
        merchant_id: str,
        transaction_id: str,
        occur_time: datetime,
    ) -> Movement:
        return cls(
            id=id,
            merchant_id=merchant_id,
            transaction_id=transaction_id,
            payment_id=delta.payment_id,
            kind=delta.kind,
            authorized_delta=delta.authorized_delta,
            captured_delta=delta.captured_delta,
            refunded_delta=delta.refunded_delta,
            occur_time=occur_time,
        )
