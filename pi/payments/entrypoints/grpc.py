"""The gRPC servicers of `pi.payments.v1`: PaymentService (merchants) and
PaymentLedgerService (the transaction service). Each RPC: request → plain values
(`mapping.py`) → one use case → response."""

from __future__ import annotations

from typing import Any

import grpc

from generated.pi.payments.v1 import payments_pb2, payments_pb2_grpc
from pi.payments.app.dead_letters import DeadLetters
from pi.payments.app.use_cases import PaymentUseCases
from pi.payments.entrypoints.mapping import (
    create_input,
    dead_letter_to_pb,
    facts_inputs,
    payment_to_pb,
    refund_to_pb,
)
from pi.payments.entrypoints.metrics import count_change, count_created
from pi.platform.kernel.principal import principal_of
from pi.platform.runtime.idempotency import key_from

__all__ = ["PaymentLedgerServicer", "PaymentServicer"]

Context = grpc.aio.ServicerContext[Any, Any]


class PaymentServicer(payments_pb2_grpc.PaymentServiceServicer):
    def __init__(self, use_cases: PaymentUseCases) -> None:
        self._use = use_cases

    async def CreatePayment(
        self, request: payments_pb2.CreatePaymentRequest, context: Context
    ) -> payments_pb2.CreatePaymentResponse:
        payment = await self._use.create_payment(
            principal_of(context),
            create_input(request.payment),
            idempotency_key=key_from(request.request_id, context),
        )
        count_created(payment)
        return payments_pb2.CreatePaymentResponse(payment=payment_to_pb(payment))

    async def GetPayment(
        self, request: payments_pb2.GetPaymentRequest, context: Context
    ) -> payments_pb2.GetPaymentResponse:
        payment = await self._use.get_payment(principal_of(context), request.id)
        return payments_pb2.GetPaymentResponse(payment=payment_to_pb(payment))

    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: Context
    ) -> payments_pb2.ListPaymentsResponse:
        page = await self._use.list_payments(
            principal_of(context),
            transaction_id=request.transaction_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return payments_pb2.ListPaymentsResponse(
            payments=[payment_to_pb(p) for p in page.payments],
            next_page_token=page.next_page_token,
        )

    async def CapturePayment(
        self, request: payments_pb2.CapturePaymentRequest, context: Context
    ) -> payments_pb2.CapturePaymentResponse:
        payment = await self._use.capture_payment(
            principal_of(context),
            request.id,
            amount=request.amount,
            idempotency_key=key_from(request.request_id, context),
        )
        count_change("capture", payment)
        return payments_pb2.CapturePaymentResponse(payment=payment_to_pb(payment))

    async def CancelPayment(
        self, request: payments_pb2.CancelPaymentRequest, context: Context
    ) -> payments_pb2.CancelPaymentResponse:
        payment = await self._use.cancel_payment(
            principal_of(context),
            request.id,
            idempotency_key=key_from(request.request_id, context),
        )
        count_change("cancel", payment)
        return payments_pb2.CancelPaymentResponse(payment=payment_to_pb(payment))

    async def RefundPayment(
        self, request: payments_pb2.RefundPaymentRequest, context: Context
    ) -> payments_pb2.RefundPaymentResponse:
        result = await self._use.refund_payment(
            principal_of(context),
            request.id,
            amount=request.amount,
            reason=request.reason,
            idempotency_key=key_from(request.request_id, context),
        )
        count_change("refund", result.payment)
        return payments_pb2.RefundPaymentResponse(
            refund=refund_to_pb(result.refund), payment=payment_to_pb(result.payment)
        )


class PaymentLedgerServicer(payments_pb2_grpc.PaymentLedgerServiceServicer):
    def __init__(self, use_cases: PaymentUseCases, dead_letters: DeadLetters) -> None:
        self._use = use_cases
        self._dead_letters = dead_letters

    async def CloseTransaction(
        self, request: payments_pb2.CloseTransactionRequest, context: Context
    ) -> payments_pb2.CloseTransactionResponse:
        result = await self._use.close_transaction(
            principal_of(context),
            merchant_id=request.merchant_id,
            transaction_id=request.transaction_id,
            amount=request.amount,
            currency=request.currency,
        )
        return payments_pb2.CloseTransactionResponse(
            movement_id=result.movement_id,
            voided_payment_ids=list(result.voided_payment_ids),
        )

    async def RegisterTransactions(
        self, request: payments_pb2.RegisterTransactionsRequest, context: Context
    ) -> payments_pb2.RegisterTransactionsResponse:
        result = await self._use.register_transactions(principal_of(context), facts_inputs(request))
        return payments_pb2.RegisterTransactionsResponse(
            registered_count=result.registered_count,
            conflicting_transaction_ids=list(result.conflicting_transaction_ids),
        )

    async def ListDeadLetters(
        self, request: payments_pb2.ListDeadLettersRequest, context: Context
    ) -> payments_pb2.ListDeadLettersResponse:
        page = await self._dead_letters.list(
            principal_of(context), page_size=request.page_size, page_token=request.page_token
        )
        return payments_pb2.ListDeadLettersResponse(
            dead_letters=[dead_letter_to_pb(d) for d in page.dead_letters],
            next_page_token=page.next_page_token,
        )

    async def RetryDeadLetters(
        self, request: payments_pb2.RetryDeadLettersRequest, context: Context
    ) -> payments_pb2.RetryDeadLettersResponse:
        retried = await self._dead_letters.retry(
            principal_of(context), list(request.transaction_ids)
        )
        return payments_pb2.RetryDeadLettersResponse(retried_count=retried)
