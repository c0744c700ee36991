"""Movements as the payment service makes them: each operation's `MovementDelta` given an
id and a time (the transaction service applies them; see `pi.platform.ledger`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pi.platform.kernel.ids import new_id
from pi.platform.ledger import Movement, MovementDelta, MovementKind

__all__ = ["cancellation_movement_id", "movements_from_deltas"]


def cancellation_movement_id(transaction_id: str) -> str:
    """The one CANCELLATION movement of a transaction has this id on every call."""
    return f"mov_cancel_{transaction_id}"


def movements_from_deltas(
    deltas: Sequence[MovementDelta], *, merchant_id: str, transaction_id: str, now: datetime
) -> list[Movement]:
    """Give each delta an id (deterministic for the cancellation) and a time."""
    return [
        Movement.from_delta(
            delta,
            id=(
                cancellation_movement_id(transaction_id)
                if delta.kind is MovementKind.CANCELLATION
                else new_id("mov")
            ),
            merchant_id=merchant_id,
            transaction_id=transaction_id,
            occur_time=now,
        )
        for delta in deltas
    ]
