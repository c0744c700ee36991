"""Movements as the transaction service's proto (`pi.transactions.v1.Movement`): what
ApplyMovements carries, and what the outbox stores, serialized.

The outbox payload is the wire contract with the transaction service, so what is
delivered is byte for byte what was committed with the money change.
"""

from __future__ import annotations

from generated.pi.transactions.v1 import transactions_pb2
from pi.platform.ledger import Movement, MovementKind
from pi.platform.runtime.protobuf import timestamp, to_datetime

__all__ = ["decode_movement", "encode_movement", "movement_from_pb", "movement_to_pb"]


def movement_to_pb(movement: Movement) -> transactions_pb2.Movement:
    return transactions_pb2.Movement(
        id=movement.id,
        merchant_id=movement.merchant_id,
        transaction_id=movement.transaction_id,
        payment_id=movement.payment_id or "",
        kind=transactions_pb2.MovementKind.Value(f"MOVEMENT_KIND_{movement.kind.value}"),
        authorized_delta=movement.authorized_delta,
        captured_delta=movement.captured_delta,
        refunded_delta=movement.refunded_delta,
        occur_time=timestamp(movement.occur_time),
    )


def movement_from_pb(message: transactions_pb2.Movement) -> Movement:
    kind_name = transactions_pb2.MovementKind.Name(message.kind).removeprefix("MOVEMENT_KIND_")
    return Movement(
        id=message.id,
        merchant_id=message.merchant_id,
        transaction_id=message.transaction_id,
        payment_id=message.payment_id or None,
        kind=MovementKind(kind_name),
        authorized_delta=message.authorized_delta,
        captured_delta=message.captured_delta,
        refunded_delta=message.refunded_delta,
        occur_time=to_datetime(message.occur_time),
    )


def encode_movement(movement: Movement) -> bytes:
    return movement_to_pb(movement).SerializeToString(deterministic=True)


def decode_movement(payload: bytes) -> Movement:
    return movement_from_pb(transactions_pb2.Movement.FromString(payload))
