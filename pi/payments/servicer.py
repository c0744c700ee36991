"""gRPC ↔ use-case mapping for `pi.payments.v1` (PaymentService, PaymentLedgerService).

Translation only: requests become plain values, results become messages. Card numbers,
CVCs, account numbers and wallet tokens go into the use case and are never put in a
response (those fields stay empty).
"""

from __future__ import annotations

from typing import Any

import grpc

from generated.pi.payments.v1 import payments_pb2, payments_pb2_grpc
from pi.payments.domain import (
    BankTransferInput,
    CaptureMode,
    CardInput,
    Payment,
    PaymentMethodType,
    Refund,
    WalletInput,
    WalletType,
)
from pi.payments.service import CreatePaymentInput, PaymentService, TransactionFactsInput
from pi.platform.db.idempotency import key_from
from pi.platform.kernel.principal import principal_of
from pi.platform.runtime.protobuf import timestamp

__all__ = ["PaymentLedgerServicer", "PaymentServicer", "payment_to_pb", "refund_to_pb"]

Context = grpc.aio.ServicerContext[Any, Any]

_METHODS = {
    payments_pb2.PAYMENT_METHOD_TYPE_CARD: PaymentMethodType.CARD,
    payments_pb2.PAYMENT_METHOD_TYPE_BANK_TRANSFER: PaymentMethodType.BANK_TRANSFER,
    payments_pb2.PAYMENT_METHOD_TYPE_WALLET: PaymentMethodType.WALLET,
}
_CAPTURE_MODES = {
    payments_pb2.CAPTURE_MODE_AUTOMATIC: CaptureMode.AUTOMATIC,
    payments_pb2.CAPTURE_MODE_MANUAL: CaptureMode.MANUAL,
}
_WALLET_TYPES = {
    payments_pb2.WALLET_TYPE_APPLE_PAY: WalletType.APPLE_PAY,
    payments_pb2.WALLET_TYPE_GOOGLE_PAY: WalletType.GOOGLE_PAY,
    payments_pb2.WALLET_TYPE_PAYPAL: WalletType.PAYPAL,
}


def payment_to_pb(payment: Payment) -> payments_pb2.Payment:
    message = payments_pb2.Payment(
        id=payment.id,
        merchant_id=payment.merchant_id,
        transaction_id=payment.transaction_id,
        amount=payment.amount,
        currency=payment.currency,
        method=payments_pb2.PaymentMethodType.Value(f"PAYMENT_METHOD_TYPE_{payment.method.value}"),
        capture_mode=payments_pb2.CaptureMode.Value(f"CAPTURE_MODE_{payment.capture_mode.value}"),
        status=payments_pb2.PaymentStatus.Value(f"PAYMENT_STATUS_{payment.status.value}"),
        captured_amount=payment.captured_amount,
        refunded_amount=payment.refunded_amount,
        create_time=timestamp(payment.create_time),
        update_time=timestamp(payment.update_time),
    )
    if payment.failure_reason is not None:
        message.failure_reason = payments_pb2.PaymentFailureReason.Value(
            f"PAYMENT_FAILURE_REASON_{payment.failure_reason.value}"
        )
    if payment.card is not None:
        card = payment.card
        message.card.CopyFrom(
            payments_pb2.Card(
                exp_month=card.exp_month,
                exp_year=card.exp_year,
                brand=payments_pb2.CardBrand.Value(f"CARD_BRAND_{card.brand.value}"),
                last4=card.last4,
                fingerprint=card.fingerprint,
            )
        )
    if payment.bank_transfer is not None:
        message.bank_transfer.CopyFrom(
            payments_pb2.BankTransfer(
                account_holder_name=payment.bank_transfer.account_holder_name,
                account_last4=payment.bank_transfer.account_last4,
            )
        )
    if payment.wallet is not None:
        message.wallet.CopyFrom(
            payments_pb2.Wallet(
                type=payments_pb2.WalletType.Value(f"WALLET_TYPE_{payment.wallet.type.value}")
            )
        )
    return message


def refund_to_pb(refund: Refund) -> payments_pb2.Refund:
    return payments_pb2.Refund(
        id=refund.id,
        payment_id=refund.payment_id,
        amount=refund.amount,
        currency=refund.currency,
        reason=refund.reason,
        status=payments_pb2.RefundStatus.Value(f"REFUND_STATUS_{refund.status.value}"),
        create_time=timestamp(refund.create_time),
    )


def _create_input(payment: payments_pb2.Payment) -> CreatePaymentInput:
    card = None
    if payment.HasField("card"):
        card = CardInput(
            number=payment.card.number,
            exp_month=payment.card.exp_month,
            exp_year=payment.card.exp_year,
            cvc=payment.card.cvc,
        )
    bank = None
    if payment.HasField("bank_transfer"):
        bank = BankTransferInput(
            account_holder_name=payment.bank_transfer.account_holder_name,
            account_number=payment.bank_transfer.account_number,
        )
    wallet = None
    if payment.HasField("wallet"):
        wallet = WalletInput(
            type=_WALLET_TYPES.get(payment.wallet.type), token=payment.wallet.token
        )
    return CreatePaymentInput(
        transaction_id=payment.transaction_id,
        amount=payment.amount,
        method=_METHODS.get(payment.method),
        capture_mode=_CAPTURE_MODES.get(payment.capture_mode),
        card=card,
        bank_transfer=bank,
        wallet=wallet,
    )


class PaymentServicer(payments_pb2_grpc.PaymentServiceServicer):
    def __init__(self, payments: PaymentService) -> None:
        self._payments = payments

    async def CreatePayment(
        self, request: payments_pb2.CreatePaymentRequest, context: Context
    ) -> payments_pb2.CreatePaymentResponse:
        payment = await self._payments.create_payment(
            principal_of(context),
            _create_input(request.payment),
            idempotency_key=key_from(request.request_id, context),
        )
        return payments_pb2.CreatePaymentResponse(payment=payment_to_pb(payment))

    async def GetPayment(
        self, request: payments_pb2.GetPaymentRequest, context: Context
    ) -> payments_pb2.GetPaymentResponse:
        payment = await self._payments.get_payment(principal_of(context), request.id)
        return payments_pb2.GetPaymentResponse(payment=payment_to_pb(payment))

    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: Context
    ) -> payments_pb2.ListPaymentsResponse:
        page = await self._payments.list_payments(
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
        payment = await self._payments.capture_payment(
            principal_of(context),
            request.id,
            amount=request.amount,
            idempotency_key=key_from(request.request_id, context),
        )
        return payments_pb2.CapturePaymentResponse(payment=payment_to_pb(payment))

    async def CancelPayment(
        self, request: payments_pb2.CancelPaymentRequest, context: Context
    ) -> payments_pb2.CancelPaymentResponse:
        payment = await self._payments.cancel_payment(
            principal_of(context),
            request.id,
            idempotency_key=key_from(request.request_id, context),
        )
        return payments_pb2.CancelPaymentResponse(payment=payment_to_pb(payment))

    async def RefundPayment(
        self, request: payments_pb2.RefundPaymentRequest, context: Context
    ) -> payments_pb2.RefundPaymentResponse:
        result = await self._payments.refund_payment(
            principal_of(context),
            request.id,
            amount=request.amount,
            reason=request.reason,
            idempotency_key=key_from(request.request_id, context),
        )
        return payments_pb2.RefundPaymentResponse(
            refund=refund_to_pb(result.refund), payment=payment_to_pb(result.payment)
        )


class PaymentLedgerServicer(payments_pb2_grpc.PaymentLedgerServiceServicer):
    def __init__(self, payments: PaymentService) -> None:
        self._payments = payments

    async def CloseTransaction(
        self, request: payments_pb2.CloseTransactionRequest, context: Context
    ) -> payments_pb2.CloseTransactionResponse:
        result = await self._payments.close_transaction(
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
        result = await self._payments.register_transactions(
            principal_of(context),
            [
                TransactionFactsInput(
                    transaction_id=facts.transaction_id,
                    merchant_id=facts.merchant_id,
                    amount=facts.amount,
                    currency=facts.currency,
                )
                for facts in request.transactions
            ],
        )
        return payments_pb2.RegisterTransactionsResponse(
            registered_count=result.registered_count,
            conflicting_transaction_ids=list(result.conflicting_transaction_ids),
        )
