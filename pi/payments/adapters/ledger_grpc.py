"""The transaction service over gRPC (`pi.payments.app.ports.TransactionLedger`): calls
`pi.transactions.v1.TransactionLedgerService` with the service credential (carried by
the channel from `clients.service_channel`) and a deadline on every call.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from generated.pi.transactions.v1 import transactions_pb2, transactions_pb2_grpc
from pi.payments.adapters.movements import movement_to_pb
from pi.payments.app.ports import (
    REASON_TRANSACTION_NOT_FOUND,
    REASON_TRANSACTIONS_UNAVAILABLE,
    LedgerError,
    MovementOutcome,
    TransactionFacts,
)
from pi.platform.kernel.errors import NotFound, Unavailable
from pi.platform.ledger import Movement

__all__ = ["GrpcTransactionLedger"]

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
