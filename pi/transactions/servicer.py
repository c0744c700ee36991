"""gRPC ↔ use-case mapping for `pi.transactions.v1`, and nothing else."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from generated.pi.transactions.v1 import transactions_pb2, transactions_pb2_grpc
from pi.platform.db.idempotency import fingerprint, key_from
from pi.platform.kernel.errors import DomainError, InvalidArgument, ValidationErrors
from pi.platform.kernel.principal import principal_of
from pi.platform.runtime.protobuf import timestamp, to_datetime
from pi.platform.runtime.status import internal_status, to_status_proto
from pi.transactions.domain import Movement, MovementKind, Transaction, TransactionStatus
from pi.transactions.service import MovementResult, TransactionService, UnreadableMovement

Context = grpc.aio.ServicerContext[Any, Any]

_STATUS_TO_PB = {
    status: transactions_pb2.TransactionStatus.Value(f"TRANSACTION_STATUS_{status.value}")
    for status in TransactionStatus
}
_STATUS_FROM_PB = {number: status for status, number in _STATUS_TO_PB.items()}
_KIND_FROM_PB = {
    transactions_pb2.MovementKind.Value(f"MOVEMENT_KIND_{kind.value}"): kind
    for kind in MovementKind
}


class TransactionServicer(transactions_pb2_grpc.TransactionServiceServicer):
    """`pi.transactions.v1.TransactionService`: merchants' transactions."""

    def __init__(self, transactions: TransactionService) -> None:
        self._transactions = transactions

    async def CreateTransaction(
        self, request: transactions_pb2.CreateTransactionRequest, context: Context
    ) -> transactions_pb2.CreateTransactionResponse:
        draft = request.transaction
        transaction = await self._transactions.create_transaction(
            principal_of(context),
            amount=draft.amount,
            currency=draft.currency,
            description=draft.description,
            metadata=dict(draft.metadata),
            idempotency_key=key_from(request.request_id, context),
            fingerprint=fingerprint(request),
        )
        return transactions_pb2.CreateTransactionResponse(transaction=to_pb(transaction))

    async def GetTransaction(
        self, request: transactions_pb2.GetTransactionRequest, context: Context
    ) -> transactions_pb2.GetTransactionResponse:
        transaction = await self._transactions.get_transaction(principal_of(context), request.id)
        return transactions_pb2.GetTransactionResponse(transaction=to_pb(transaction))

    async def ListTransactions(
        self, request: transactions_pb2.ListTransactionsRequest, context: Context
    ) -> transactions_pb2.ListTransactionsResponse:
        principal = principal_of(context)
        errors = ValidationErrors()
        status = None
        if request.status != transactions_pb2.TRANSACTION_STATUS_UNSPECIFIED:
            status = _STATUS_FROM_PB.get(request.status)
            if status is None:
                errors.add("status", "is not a transaction status")
        start = _optional_time(request, "create_time_start", errors)
        end = _optional_time(request, "create_time_end", errors)
        errors.raise_if_any()
        page = await self._transactions.list_transactions(
            principal,
            page_size=request.page_size,
            page_token=request.page_token,
            status=status,
            create_time_start=start,
            create_time_end=end,
        )
        return transactions_pb2.ListTransactionsResponse(
            transactions=[to_pb(t) for t in page.transactions],
            next_page_token=page.next_page_token,
        )

    async def CancelTransaction(
        self, request: transactions_pb2.CancelTransactionRequest, context: Context
    ) -> transactions_pb2.CancelTransactionResponse:
        transaction = await self._transactions.cancel_transaction(
            principal_of(context),
            request.id,
            idempotency_key=key_from(request.request_id, context),
            fingerprint=fingerprint(request),
        )
        return transactions_pb2.CancelTransactionResponse(transaction=to_pb(transaction))


class TransactionLedgerServicer(transactions_pb2_grpc.TransactionLedgerServiceServicer):
    """`pi.transactions.v1.TransactionLedgerService`: the payment service's calls."""

    def __init__(self, transactions: TransactionService) -> None:
        self._transactions = transactions

    async def LookupTransaction(
        self, request: transactions_pb2.LookupTransactionRequest, context: Context
    ) -> transactions_pb2.LookupTransactionResponse:
        transaction = await self._transactions.lookup_transaction(
            principal_of(context), request.merchant_id, request.transaction_id
        )
        return transactions_pb2.LookupTransactionResponse(transaction=to_pb(transaction))

    async def ApplyMovement(
        self, request: transactions_pb2.ApplyMovementRequest, context: Context
    ) -> transactions_pb2.ApplyMovementResponse:
        principal = principal_of(context)
        transaction = await self._transactions.apply_movement(
            principal, movement_from_pb(request.movement)
        )
        return transactions_pb2.ApplyMovementResponse(transaction=to_pb(transaction))

    async def ApplyMovements(
        self, request: transactions_pb2.ApplyMovementsRequest, context: Context
    ) -> transactions_pb2.ApplyMovementsResponse:
        principal = principal_of(context)
        results = await self._transactions.apply_movements(
            principal, [_readable_movement(movement) for movement in request.movements]
        )
        return transactions_pb2.ApplyMovementsResponse(
            results=[_result_to_pb(result) for result in results]
        )


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


def movement_from_pb(movement: transactions_pb2.Movement) -> Movement:
    """The domain movement; InvalidArgument if the kind or the time cannot be read."""
    errors = ValidationErrors()
    kind = _KIND_FROM_PB.get(movement.kind)
    if kind is None:
        errors.add("movement.kind", "must be a movement kind")
    occur_time = _optional_time(movement, "occur_time", errors, field="movement.occur_time")
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


def _readable_movement(movement: transactions_pb2.Movement) -> Movement | UnreadableMovement:
    """One movement of a batch; one that cannot be read is reported in its own result."""
    try:
        return movement_from_pb(movement)
    except InvalidArgument as error:
        return UnreadableMovement(movement.id, movement.transaction_id, error)


def _result_to_pb(result: MovementResult) -> transactions_pb2.MovementResult:
    if result.error is None:
        status = status_pb2.Status()
    elif isinstance(result.error, DomainError):
        status = to_status_proto(result.error)
    else:
        status = internal_status()
    return transactions_pb2.MovementResult(movement_id=result.movement_id, status=status)


def _optional_time(
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
