"""The gRPC servicers of `pi.transactions.v1`: proto -> plain values -> one use case ->
proto (`mapping`), and nothing else."""

from __future__ import annotations

from typing import Any

import grpc

from generated.pi.transactions.v1 import transactions_pb2, transactions_pb2_grpc
from pi.platform.kernel.errors import ValidationErrors
from pi.platform.kernel.principal import principal_of
from pi.platform.runtime.idempotency import fingerprint, key_from
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.entrypoints.mapping import (
    movement_from_pb,
    optional_time,
    readable_movement,
    result_to_pb,
    status_from_pb,
    to_pb,
)

__all__ = ["TransactionLedgerServicer", "TransactionServicer"]

Context = grpc.aio.ServicerContext[Any, Any]


class TransactionServicer(transactions_pb2_grpc.TransactionServiceServicer):
    """`pi.transactions.v1.TransactionService`: merchants' transactions."""

    def __init__(self, use_cases: TransactionUseCases) -> None:
        self._use_cases = use_cases

    async def CreateTransaction(
        self, request: transactions_pb2.CreateTransactionRequest, context: Context
    ) -> transactions_pb2.CreateTransactionResponse:
        draft = request.transaction
        transaction = await self._use_cases.create_transaction(
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
        transaction = await self._use_cases.get_transaction(principal_of(context), request.id)
        return transactions_pb2.GetTransactionResponse(transaction=to_pb(transaction))

    async def ListTransactions(
        self, request: transactions_pb2.ListTransactionsRequest, context: Context
    ) -> transactions_pb2.ListTransactionsResponse:
        principal = principal_of(context)
        errors = ValidationErrors()
        status = status_from_pb(request.status, errors)
        start = optional_time(request, "create_time_start", errors)
        end = optional_time(request, "create_time_end", errors)
        errors.raise_if_any()
        page = await self._use_cases.list_transactions(
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
        transaction = await self._use_cases.cancel_transaction(
            principal_of(context),
            request.id,
            idempotency_key=key_from(request.request_id, context),
            fingerprint=fingerprint(request),
        )
        return transactions_pb2.CancelTransactionResponse(transaction=to_pb(transaction))


class TransactionLedgerServicer(transactions_pb2_grpc.TransactionLedgerServiceServicer):
    """`pi.transactions.v1.TransactionLedgerService`: the payment service's calls."""

    def __init__(self, use_cases: TransactionUseCases) -> None:
        self._use_cases = use_cases

    async def LookupTransaction(
        self, request: transactions_pb2.LookupTransactionRequest, context: Context
    ) -> transactions_pb2.LookupTransactionResponse:
        transaction = await self._use_cases.lookup_transaction(
            principal_of(context), request.merchant_id, request.transaction_id
        )
        return transactions_pb2.LookupTransactionResponse(transaction=to_pb(transaction))

    async def ApplyMovement(
        self, request: transactions_pb2.ApplyMovementRequest, context: Context
    ) -> transactions_pb2.ApplyMovementResponse:
        principal = principal_of(context)
        transaction = await self._use_cases.apply_movement(
            principal, movement_from_pb(request.movement)
        )
        return transactions_pb2.ApplyMovementResponse(transaction=to_pb(transaction))

    async def ApplyMovements(
        self, request: transactions_pb2.ApplyMovementsRequest, context: Context
    ) -> transactions_pb2.ApplyMovementsResponse:
        principal = principal_of(context)
        results = await self._use_cases.apply_movements(
            principal, [readable_movement(movement) for movement in request.movements]
        )
        return transactions_pb2.ApplyMovementsResponse(
            results=[result_to_pb(result) for result in results]
        )
