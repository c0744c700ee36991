"""Requests to the sandbox processor, for the tests of its ledger and faults."""

from __future__ import annotations

from datetime import date

from pi.payments.domain import (
    AuthorizeRequest,
    CaptureRequest,
    CardInput,
    PaymentMethodType,
    RefundRequest,
    VoidRequest,
    validate_payment_request,
)

APPROVE_CARD = "4242424242424242"


def card_authorization(
    payment_id: str, amount: int = 1000, *, capture: bool = False, number: str = APPROVE_CARD
) -> AuthorizeRequest:
    request = validate_payment_request(
        transaction_id="txn_1",
        amount=0,
        method=PaymentMethodType.CARD,
        capture_mode=None,
        card=CardInput(number, 12, date.today().year + 3, "123"),
        bank_transfer=None,
        wallet=None,
        today=date.today(),
    )
    return AuthorizeRequest(
        payment_id=payment_id,
        merchant_id="mer_1",
        amount=amount,
        currency="USD",
        capture=capture,
        details=request.details,
    )


def capture_of(payment_id: str, amount: int, key: str | None = None) -> CaptureRequest:
    return CaptureRequest(payment_id, None, amount, "USD", key or f"capture_{payment_id}")


def refund_of(payment_id: str, amount: int, key: str) -> RefundRequest:
    return RefundRequest(payment_id, None, amount, "USD", key)


def void_of(payment_id: str) -> VoidRequest:
    return VoidRequest(payment_id, None, f"void_{payment_id}")
