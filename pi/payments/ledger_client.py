"""The payment service's port to the transaction service, and its gRPC adapter.

`TransactionLedger` is what the use cases and the outbox dispatcher need:
`lookup_transaction` (first sight of a transaction) and `apply_movement` (delivery of an
outbox row). `GrpcTransactionLedger` calls `pi.transactions.v1.TransactionLedgerService`
with the service credential (carried by the channel from `clients.service_channel`) and
a deadline on every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import grpc

from generated.pi.transactions.v1 import transactions_pb2, transactions_pb2_grpc
from pi.payments.movements import movement_to_pb
from pi.platform.errors import NotFound, Unavailable
from pi.transactions.domain import Movement

__all__ = [
    "REASON_TRANSACTIONS_UNAVAILABLE",
    "REASON_TRANSACTION_NOT_FOUND",
    "GrpcTransactionLedger",
    "LedgerError",
    "TransactionFacts",
    "TransactionLedger",
]

REASON_TRANSACTION_NOT_FOUND = "TRANSACTION_NOT_FOUND"
REASON_TRANSACTIONS_UNAVAILABLE = "TRANSACTIONS_UNAVAILABLE"

LOOKUP_DEADLINE_SECONDS = 2.0
APPLY_DEADLINE_SECONDS = 2.0

_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


@dataclass(frozen=True, slots=True)
class TransactionFacts:
    """What the payment service caches of a transaction: facts that never change, plus
    whether it was already cancelled when looked up."""

    transaction_id: str
    merchant_id: str
    amount: int
    currency: str
    cancelled: bool


class LedgerError(Exception):
    """The transaction service refused a call for a reason other than being down.

    `code` is the gRPC status name; the message never contains request data.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class TransactionLedger(Protocol):
    async def lookup_transaction(self, merchant_id: str, transaction_id: str) -> TransactionFacts:
        """The merchant's transaction. NotFound(TRANSACTION_NOT_FOUND) if it is not the
        merchant's or does not exist; Unavailable(TRANSACTIONS_UNAVAILABLE) if the
        transaction service cannot answer."""
        ...

    async def apply_movement(self, movement: Movement) -> None:
        """Apply a movement (idempotent by its id). Unavailable if the transaction service
        cannot answer, LedgerError if it refused the movement."""
        ...


def _unavailable() -> Unavailable:
    return Unavailable(
        "The transaction service is unavailable; retry with the same idempotency key.",
        reason=REASON_TRANSACTIONS_UNAVAILABLE,
    )


class GrpcTransactionLedger:
    """`TransactionLedger` over gRPC. The channel carries the service token."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        lookup_deadline: float = LOOKUP_DEADLINE_SECONDS,
        apply_deadline: float = APPLY_DEADLINE_SECONDS,
    ) -> None:
        self._stub = transactions_pb2_grpc.TransactionLedgerServiceStub(channel)
        self._lookup_deadline = lookup_deadline
        self._apply_deadline = apply_deadline

    async def lookup_transaction(self, merchant_id: str, transaction_id: str) -> TransactionFacts:
        request = transactions_pb2.LookupTransactionRequest(
            merchant_id=merchant_id, transaction_id=transaction_id
        )
        try:
            response = await self._stub.LookupTransaction(request, timeout=self._lookup_deadline)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise NotFound(
                    "The transaction does not exist.", reason=REASON_TRANSACTION_NOT_FOUND
                ) from None
            if code in _TRANSIENT:
                raise _unavailable() from None
            raise LedgerError(code.name, error.details() or "") from None
        txn = response.transaction
        if txn.merchant_id != merchant_id or txn.id != transaction_id:
            # Never trust a mismatching answer with another merchant's transaction.
            raise NotFound("The transaction does not exist.", reason=REASON_TRANSACTION_NOT_FOUND)
        return TransactionFacts(
            transaction_id=txn.id,
            merchant_id=txn.merchant_id,
            amount=txn.amount,
            currency=txn.currency,
            cancelled=txn.status == transactions_pb2.TRANSACTION_STATUS_CANCELLED,
        )

    async def apply_movement(self, movement: Movement) -> None:
        request = transactions_pb2.ApplyMovementRequest(movement=movement_to_pb(movement))
        try:
            await self._stub.ApplyMovement(request, timeout=self._apply_deadline)
        except grpc.aio.AioRpcError as error:
            if error.code() in _TRANSIENT:
                raise _unavailable() from None
            raise LedgerError(error.code().name, error.details() or "") from None
