"""The payment service's port to the transaction service, and its gRPC adapter.

`TransactionLedger` is what the use cases and the outbox dispatcher need:
`lookup_transaction` (first sight of a transaction) and `apply_movements` (delivery of a
round of outbox rows in one call, with an outcome per movement).
`GrpcTransactionLedger` calls `pi.transactions.v1.TransactionLedgerService` with the
service credential (carried by the channel from `clients.service_channel`) and a
deadline on every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from generated.pi.transactions.v1 import transactions_pb2, transactions_pb2_grpc
from pi.payments.movements import movement_to_pb
from pi.platform.kernel.errors import NotFound, Unavailable
from pi.platform.ledger import Movement

__all__ = [
    "MAX_MOVEMENTS_PER_CALL",
    "REASON_TRANSACTIONS_UNAVAILABLE",
    "REASON_TRANSACTION_NOT_FOUND",
    "GrpcTransactionLedger",
    "LedgerError",
    "MovementOutcome",
    "TransactionFacts",
    "TransactionLedger",
]

REASON_TRANSACTION_NOT_FOUND = "TRANSACTION_NOT_FOUND"
REASON_TRANSACTIONS_UNAVAILABLE = "TRANSACTIONS_UNAVAILABLE"

LOOKUP_DEADLINE_SECONDS = 2.0
APPLY_DEADLINE_SECONDS = 2.0
# The transaction service's cap on ApplyMovements (transactions.proto).
MAX_MOVEMENTS_PER_CALL = 1000

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
    """The transaction service refused a call or a movement for a reason other than
    being down.

    `code` is the gRPC status name, `reason` the ErrorInfo reason if there was one; the
    message never contains request data.
    """

    def __init__(self, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}" if reason else f"{code}: {message}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MovementOutcome:
    """What the transaction service did with one movement of `apply_movements`.

    `error` is None if the movement is applied (now, or already before). Otherwise it was
    not applied: refused (e.g. FAILED_PRECONDITION), or ABORTED because an earlier
    movement of its transaction in the same call was not applied.
    """

    movement_id: str
    error: LedgerError | None = None

    @property
    def applied(self) -> bool:
        return self.error is None


class TransactionLedger(Protocol):
    async def lookup_transaction(self, merchant_id: str, transaction_id: str) -> TransactionFacts:
        """The merchant's transaction. NotFound(TRANSACTION_NOT_FOUND) if it is not the
        merchant's or does not exist; Unavailable(TRANSACTIONS_UNAVAILABLE) if the
        transaction service cannot answer."""
        ...

    async def apply_movements(self, movements: Sequence[Movement]) -> list[MovementOutcome]:
        """Apply 1 to `MAX_MOVEMENTS_PER_CALL` movements in one call (idempotent by id);
        one outcome per movement, in order. Movements of one transaction apply in the
        given order, and none after one that is not applied. Unavailable if the
        transaction service cannot answer, LedgerError if it refused the whole call."""
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

    async def apply_movements(self, movements: Sequence[Movement]) -> list[MovementOutcome]:
        request = transactions_pb2.ApplyMovementsRequest(
            movements=[movement_to_pb(movement) for movement in movements]
        )
        try:
            response = await self._stub.ApplyMovements(request, timeout=self._apply_deadline)
        except grpc.aio.AioRpcError as error:
            if error.code() in _TRANSIENT:
                raise _unavailable() from None
            raise LedgerError(error.code().name, error.details() or "") from None
        results = response.results
        if [r.movement_id for r in results] != [m.id for m in movements]:
            # Never mark a row delivered on an answer about other movements.
            raise LedgerError("INTERNAL", "ApplyMovements answered for other movements")
        return [MovementOutcome(r.movement_id, _refusal(r.status)) for r in results]


def _refusal(status: status_pb2.Status) -> LedgerError | None:
    """None for OK, else the refusal with its ErrorInfo reason."""
    if status.code == code_pb2.OK:
        return None
    reason = None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = info.reason or None
    name = code_pb2.Code.Name(status.code) if status.code in code_pb2.Code.values() else "UNKNOWN"
    return LedgerError(name, status.message, reason)
