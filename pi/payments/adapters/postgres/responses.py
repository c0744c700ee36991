"""Responses as idempotency keys store them: payments and refunds as JSON bytes.

A replay returns the first response exactly, not the payment's current state, so the
response is stored as a snapshot. Only what the API returns is kept: brand, last 4 and
fingerprint of a card, never its number or CVC (the domain objects do not have them).

CreatePayment's key holds "P" + the payment id while the processor's answer is pending
(`PendingPayment`), then "R" + the payment's snapshot (`FinalPayment`). A capture's,
cancel's or refund's key holds "P" + the payment's or refund's id while pending
(`PendingChange`), then the payment's or the refund result's JSON.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pi.payments.app.requests import (
    ChangeResponse,
    CreateResponse,
    FinalPayment,
    PendingChange,
    PendingPayment,
    RefundResult,
)
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
    WalletFacts,
    WalletType,
)

__all__ = [
    "decode_change",
    "decode_create",
    "decode_payment",
    "decode_refund_result",
    "encode_change",
    "encode_create",
    "encode_payment",
    "encode_refund_result",
]

_PENDING = b"P"
_FINAL = b"R"


def _payment_to_dict(payment: Payment) -> dict[str, Any]:
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
        "card": None
        if card is None
        else {
            "brand": card.brand.value,
            "last4": card.last4,
            "fingerprint": card.fingerprint,
            "exp_month": card.exp_month,
            "exp_year": card.exp_year,
        },
        "bank_transfer": None
        if bank is None
        else {"account_holder_name": bank.account_holder_name, "account_last4": bank.account_last4},
        "wallet": None if wallet is None else {"type": wallet.type.value},
        "processor_reference": payment.processor_reference,
        "create_time": payment.create_time.isoformat(),
        "update_time": payment.update_time.isoformat(),
        "capturing_amount": payment.capturing_amount,
        "refunding_amount": payment.refunding_amount,
    }


def _payment_from_dict(data: dict[str, Any]) -> Payment:
    card = data["card"]
    bank = data["bank_transfer"]
    wallet = data["wallet"]
    return Payment(
        id=data["id"],
        merchant_id=data["merchant_id"],
        transaction_id=data["transaction_id"],
        amount=data["amount"],
        currency=data["currency"],
        method=PaymentMethodType(data["method"]),
        capture_mode=CaptureMode(data["capture_mode"]),
        status=PaymentStatus(data["status"]),
        failure_reason=FailureReason(data["failure_reason"]) if data["failure_reason"] else None,
        captured_amount=data["captured_amount"],
        refunded_amount=data["refunded_amount"],
        card=None
        if card is None
        else CardFacts(
            brand=CardBrand(card["brand"]),
            last4=card["last4"],
            fingerprint=card["fingerprint"],
            exp_month=card["exp_month"],
            exp_year=card["exp_year"],
        ),
        bank_transfer=None
        if bank is None
        else BankTransferFacts(
            account_holder_name=bank["account_holder_name"],
            account_last4=bank["account_last4"],
        ),
        wallet=None if wallet is None else WalletFacts(type=WalletType(wallet["type"])),
        processor_reference=data["processor_reference"],
        create_time=datetime.fromisoformat(data["create_time"]),
        update_time=datetime.fromisoformat(data["update_time"]),
        # Responses stored before these amounts existed have none.
        capturing_amount=data.get("capturing_amount", 0),
        refunding_amount=data.get("refunding_amount", 0),
    )


def _refund_to_dict(refund: Refund) -> dict[str, Any]:
    return {
        "id": refund.id,
        "payment_id": refund.payment_id,
        "amount": refund.amount,
        "currency": refund.currency,
        "reason": refund.reason,
        "status": refund.status.value,
        "create_time": refund.create_time.isoformat(),
        "failure_reason": refund.failure_reason.value if refund.failure_reason else None,
        "processor_reference": refund.processor_reference,
    }


def _refund_from_dict(data: dict[str, Any]) -> Refund:
    return Refund(
        id=data["id"],
        payment_id=data["payment_id"],
        amount=data["amount"],
        currency=data["currency"],
        reason=data["reason"],
        status=RefundStatus(data["status"]),
        create_time=datetime.fromisoformat(data["create_time"]),
        processor_reference=data.get("processor_reference"),
        failure_reason=FailureReason(data["failure_reason"])
        if data.get("failure_reason")
        else None,
    )


def _dump(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def encode_payment(payment: Payment) -> bytes:
    return _dump(_payment_to_dict(payment))


def decode_payment(data: bytes) -> Payment:
    return _payment_from_dict(json.loads(data))


def encode_refund_result(result: RefundResult) -> bytes:
    return _dump(
        {"refund": _refund_to_dict(result.refund), "payment": _payment_to_dict(result.payment)}
    )


def decode_refund_result(data: bytes) -> RefundResult:
    value = json.loads(data)
    return RefundResult(_refund_from_dict(value["refund"]), _payment_from_dict(value["payment"]))


def encode_create(response: CreateResponse) -> bytes:
    if isinstance(response, PendingPayment):
        return _PENDING + response.payment_id.encode()
    return _FINAL + encode_payment(response.payment)


def decode_create(data: bytes) -> CreateResponse:
    if data.startswith(_FINAL):
        return FinalPayment(decode_payment(data[len(_FINAL) :]))
    return PendingPayment(data[len(_PENDING) :].decode())


def encode_change(response: ChangeResponse) -> bytes:
    if isinstance(response, PendingChange):
        return _PENDING + response.target_id.encode()
    if isinstance(response, RefundResult):
        return encode_refund_result(response)
    return encode_payment(response)


def decode_change(data: bytes) -> ChangeResponse:
    if data.startswith(_PENDING):
        return PendingChange(data[len(_PENDING) :].decode())
    value = json.loads(data)
    if "refund" in value:
        return RefundResult(
            _refund_from_dict(value["refund"]), _payment_from_dict(value["payment"])
        )
    return _payment_from_dict(value)
