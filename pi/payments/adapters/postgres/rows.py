"""Rows of the payment tables to and from the domain's values."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pi.payments.domain import (
    BankTransferFacts,
    CaptureMode,
    CardBrand,
    CardFacts,
    FailureReason,
    Payment,
    PaymentMethodType,
    PaymentStatus,
    Refund,
    RefundStatus,
    TransactionRef,
    WalletFacts,
    WalletType,
)
from pi.platform.db.statements import Record

__all__ = [
    "MUTABLE_PAYMENT_COLUMNS",
    "payment_from_row",
    "payment_values",
    "ref_from_row",
    "ref_values",
    "refund_from_row",
    "refund_values",
]

# Columns a change may write; identity and amount columns are never updated (the
# PostgreSQL trigger refuses it too).
MUTABLE_PAYMENT_COLUMNS = (
    "status",
    "failure_reason",
    "captured_amount",
    "refunded_amount",
    "processor_reference",
    "update_time",
    "capturing_amount",
    "refunding_amount",
)


def ref_from_row(row: Record) -> TransactionRef:
    return TransactionRef(
        transaction_id=row.transaction_id,
        merchant_id=row.merchant_id,
        amount=row.amount,
        currency=row.currency,
        closed=bool(row.closed),
        held_amount=row.held_amount,
        captured_amount=row.captured_amount,
        refunded_amount=row.refunded_amount,
    )


def ref_values(ref: TransactionRef, now: datetime) -> dict[str, Any]:
    """A new ref row: no movement yet."""
    return {
        "transaction_id": ref.transaction_id,
        "merchant_id": ref.merchant_id,
        "amount": ref.amount,
        "currency": ref.currency,
        "closed": ref.closed,
        "held_amount": ref.held_amount,
        "captured_amount": ref.captured_amount,
        "refunded_amount": ref.refunded_amount,
        "movement_count": 0,
        "create_time": now,
        "update_time": now,
    }


def payment_from_row(row: Record) -> Payment:
    method = PaymentMethodType(row.method)
    card = None
    bank = None
    wallet = None
    if method is PaymentMethodType.CARD:
        card = CardFacts(
            brand=CardBrand(row.card_brand),
            last4=row.card_last4,
            fingerprint=row.card_fingerprint,
            exp_month=row.card_exp_month,
            exp_year=row.card_exp_year,
        )
    elif method is PaymentMethodType.BANK_TRANSFER:
        bank = BankTransferFacts(
            account_holder_name=row.bank_account_holder_name,
            account_last4=row.bank_account_last4,
        )
    else:
        wallet = WalletFacts(type=WalletType(row.wallet_type))
    return Payment(
        id=row.id,
        merchant_id=row.merchant_id,
        transaction_id=row.transaction_id,
        amount=row.amount,
        currency=row.currency,
        method=method,
        capture_mode=CaptureMode(row.capture_mode),
        status=PaymentStatus(row.status),
        failure_reason=FailureReason(row.failure_reason) if row.failure_reason else None,
        captured_amount=row.captured_amount,
        refunded_amount=row.refunded_amount,
        card=card,
        bank_transfer=bank,
        wallet=wallet,
        processor_reference=row.processor_reference,
        create_time=row.create_time,
        update_time=row.update_time,
        capturing_amount=row.capturing_amount,
        refunding_amount=row.refunding_amount,
    )


def payment_values(payment: Payment) -> dict[str, Any]:
    card, bank, wallet = payment.card, payment.bank_transfer, payment.wallet
    return {
        "id": payment.id,
        "merchant_id": payment.merchant_id,
        "transaction_id": payment.transaction_id,
        "amount": payment.amount,
        "currency": payment.currency,
        "method": payment.method.value,
        "capture_mode": payment.capture_mode.value,
        "status": payment.status.value,
        "failure_reason": payment.failure_reason.value if payment.failure_reason else None,
        "captured_amount": payment.captured_amount,
        "refunded_amount": payment.refunded_amount,
        "card_brand": card.brand.value if card else None,
        "card_last4": card.last4 if card else None,
        "card_fingerprint": card.fingerprint if card else None,
        "card_exp_month": card.exp_month if card else None,
        "card_exp_year": card.exp_year if card else None,
        "bank_account_holder_name": bank.account_holder_name if bank else None,
        "bank_account_last4": bank.account_last4 if bank else None,
        "wallet_type": wallet.type.value if wallet else None,
        "processor_reference": payment.processor_reference,
        "create_time": payment.create_time,
        "update_time": payment.update_time,
        "capturing_amount": payment.capturing_amount,
        "refunding_amount": payment.refunding_amount,
    }


def refund_values(refund: Refund, *, merchant_id: str, transaction_id: str) -> dict[str, Any]:
    return {
        "id": refund.id,
        "payment_id": refund.payment_id,
        "merchant_id": merchant_id,
        "transaction_id": transaction_id,
        "amount": refund.amount,
        "currency": refund.currency,
        "reason": refund.reason,
        "status": refund.status.value,
        "create_time": refund.create_time,
        "failure_reason": refund.failure_reason.value if refund.failure_reason else None,
        "processor_reference": refund.processor_reference,
    }


def refund_from_row(row: Record) -> Refund:
    return Refund(
        id=row.id,
        payment_id=row.payment_id,
        amount=row.amount,
        currency=row.currency,
        reason=row.reason,
        status=RefundStatus(row.status),
        create_time=row.create_time,
        processor_reference=row.processor_reference,
        failure_reason=FailureReason(row.failure_reason) if row.failure_reason else None,
    )
