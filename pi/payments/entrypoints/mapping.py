"""`pi.payments.v1` messages to and from the use cases' plain values.

Card numbers, CVCs, account numbers and wallet tokens go into the use case and are never
put in a response (those fields stay empty).
"""

from __future__ import annotations

from generated.pi.payments.v1 import payments_pb2
from pi.payments.app.create_payment import CreatePaymentInput
from pi.payments.app.payment_ledger import TransactionFactsInput
from pi.payments.app.ports import DeadLetter
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
from pi.platform.runtime.protobuf import timestamp

__all__ = ["create_input", "dead_letter_to_pb", "facts_inputs", "payment_to_pb", "refund_to_pb"]

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
    message = payments_pb2.Refund(
        id=refund.id,
        payment_id=refund.payment_id,
        amount=refund.amount,
        currency=refund.currency,
        reason=refund.reason,
        status=payments_pb2.RefundStatus.Value(f"REFUND_STATUS_{refund.status.value}"),
        create_time=timestamp(refund.create_time),
    )
    if refund.failure_reason is not None:
        message.failure_reason = payments_pb2.PaymentFailureReason.Value(
            f"PAYMENT_FAILURE_REASON_{refund.failure_reason.value}"
        )
    return message


def dead_letter_to_pb(dead: DeadLetter) -> payments_pb2.DeadLetter:
    return payments_pb2.DeadLetter(
        movement_id=dead.movement_id,
        transaction_id=dead.transaction_id,
        seq=dead.seq,
        kind=dead.kind,
        attempts=dead.attempts,
        last_error=dead.last_error or "",
        create_time=timestamp(dead.create_time),
        dead_time=timestamp(dead.dead_time),
    )


def create_input(payment: payments_pb2.Payment) -> CreatePaymentInput:
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


def facts_inputs(
    request: payments_pb2.RegisterTransactionsRequest,
) -> list[TransactionFactsInput]:
    return [
        TransactionFactsInput(
            transaction_id=facts.transaction_id,
            merchant_id=facts.merchant_id,
            amount=facts.amount,
            currency=facts.currency,
        )
        for facts in request.transactions
    ]
