"""The payment service over gRPC (`PaymentLedgerService`): the `PaymentLedger` port.

CancelTransaction asks the payment service, the authority for money on a transaction,
to close the transaction (`CloseTransaction`) before it applies the cancellation
locally. New transactions are announced to it (`RegisterTransactions`, see
`pi.transactions.entrypoints.workers.FactsPublisher`) so that their first payment needs
no lookup here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from generated.pi.payments.v1 import payments_pb2, payments_pb2_grpc
from pi.platform.kernel.errors import Aborted, FailedPrecondition, NotFound, Unavailable
from pi.platform.runtime.clients import DEFAULT_DEADLINE_SECONDS
from pi.platform.runtime.status import error_from_rpc_error
from pi.transactions.app.ports import (
    REGISTER_DEADLINE_SECONDS,
    ClosedTransaction,
    TransactionFacts,
)

log = logging.getLogger(__name__)

REASON_PAYMENT_SERVICE_UNAVAILABLE = "PAYMENT_SERVICE_UNAVAILABLE"

# The payment service could not do its part now; a retry may succeed.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)
# Answers that mean something to the merchant, passed on as they are (reason included).
# Any other answer is a bug or a misconfiguration between the services: INTERNAL.
_PASSED_ON = (FailedPrecondition, NotFound, Aborted)


class GrpcPaymentLedger:
    """The `PaymentLedger` port over gRPC (`PaymentLedgerService`), a deadline on every call.

    The channel carries the service credential (`pi.platform.runtime.clients.service_channel`).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout: float = DEFAULT_DEADLINE_SECONDS,
        register_timeout: float = REGISTER_DEADLINE_SECONDS,
    ) -> None:
        self._stub = payments_pb2_grpc.PaymentLedgerServiceStub(channel)
        self._timeout = timeout
        self._register_timeout = register_timeout

    async def close_transaction(
        self, *, merchant_id: str, transaction_id: str, amount: int, currency: str
    ) -> ClosedTransaction:
        request = payments_pb2.CloseTransactionRequest(
            merchant_id=merchant_id,
            transaction_id=transaction_id,
            amount=amount,
            currency=currency,
        )
        try:
            response = await self._stub.CloseTransaction(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code in _TRANSIENT:
                log.warning(
                    "CloseTransaction failed",
                    extra={"transaction_id": transaction_id, "code": getattr(code, "name", "")},
                )
                raise Unavailable(
                    "The payment service did not answer in time; the transaction was not "
                    "cancelled. Retrying is safe.",
                    reason=REASON_PAYMENT_SERVICE_UNAVAILABLE,
                ) from None
            error = error_from_rpc_error(exc)
            if isinstance(error, _PASSED_ON):
                raise error from None
            raise RuntimeError(f"CloseTransaction failed with {code}") from exc
        if not response.movement_id:
            raise RuntimeError("CloseTransaction answered without a movement id")
        return ClosedTransaction(
            movement_id=response.movement_id,
            voided_payment_ids=tuple(response.voided_payment_ids),
        )

    async def register_transactions(self, transactions: Sequence[TransactionFacts]) -> int:
        request = payments_pb2.RegisterTransactionsRequest(
            transactions=[
                payments_pb2.TransactionFacts(
                    transaction_id=facts.transaction_id,
                    merchant_id=facts.merchant_id,
                    amount=facts.amount,
                    currency=facts.currency,
                )
                for facts in transactions
            ]
        )
        try:
            response = await self._stub.RegisterTransactions(
                request, timeout=self._register_timeout
            )
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code in _TRANSIENT:
                raise Unavailable(
                    "The payment service did not answer in time.",
                    reason=REASON_PAYMENT_SERVICE_UNAVAILABLE,
                ) from None
            raise RuntimeError(f"RegisterTransactions failed with {code}") from exc
        if response.conflicting_transaction_ids:
            # A bug somewhere: the facts of a transaction never change.
            log.error(
                "the payment service knows transactions with other facts",
                extra={"transaction_ids": list(response.conflicting_transaction_ids[:10])},
            )
        return response.registered_count
