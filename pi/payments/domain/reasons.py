"""The stable reasons (ErrorInfo.reason) of the payment rules, and the limits chosen here."""

from __future__ import annotations

from datetime import timedelta

__all__ = [
    "FINGERPRINT_HEX_LENGTH",
    "MAX_ACCOUNT_HOLDER_NAME_LENGTH",
    "MAX_CARD_EXPIRY_YEARS",
    "MAX_REFUND_REASON_LENGTH",
    "MAX_WALLET_TOKEN_LENGTH",
    "REASON_AMOUNT_EXCEEDS_AUTHORIZED",
    "REASON_AMOUNT_EXCEEDS_REFUNDABLE",
    "REASON_AMOUNT_EXCEEDS_REMAINING",
    "REASON_INVALID_STATUS_TRANSITION",
    "REASON_LEDGER_INVARIANT_VIOLATED",
    "REASON_PAYMENT_NOT_CANCELLABLE",
    "REASON_PAYMENT_NOT_CAPTURABLE",
    "REASON_PAYMENT_NOT_PROCESSING",
    "REASON_PAYMENT_NOT_REFUNDABLE",
    "REASON_PAYMENT_PROCESSING",
    "REASON_TRANSACTION_CAPTURED",
    "REASON_TRANSACTION_CLOSED",
    "UNKNOWN_OUTCOME_TIMEOUT",
]

# --- stable reasons (ErrorInfo.reason) -------------------------------------------------

REASON_TRANSACTION_CLOSED = "TRANSACTION_CLOSED"
"""The transaction was cancelled: it takes no new payment and no capture."""
REASON_AMOUNT_EXCEEDS_REMAINING = "AMOUNT_EXCEEDS_REMAINING"
"""held + captured + new amount would exceed the transaction amount (metadata `remaining`)."""
REASON_PAYMENT_NOT_CAPTURABLE = "PAYMENT_NOT_CAPTURABLE"
"""Only a REQUIRES_CAPTURE payment can be captured (metadata `status`)."""
REASON_AMOUNT_EXCEEDS_AUTHORIZED = "AMOUNT_EXCEEDS_AUTHORIZED"
"""A capture of more than the authorized amount (metadata `authorized`)."""
REASON_PAYMENT_NOT_CANCELLABLE = "PAYMENT_NOT_CANCELLABLE"
"""Only a REQUIRES_CAPTURE payment can be cancelled (metadata `status`)."""
REASON_PAYMENT_NOT_REFUNDABLE = "PAYMENT_NOT_REFUNDABLE"
"""Only a SUCCEEDED payment with something left to refund can be refunded (metadata `status`)."""
REASON_AMOUNT_EXCEEDS_REFUNDABLE = "AMOUNT_EXCEEDS_REFUNDABLE"
"""A refund of more than captured - refunded (metadata `refundable`)."""
REASON_PAYMENT_NOT_PROCESSING = "PAYMENT_NOT_PROCESSING"
"""A processor outcome for a payment that is already settled (callers treat it as done)."""
REASON_TRANSACTION_CAPTURED = "TRANSACTION_CAPTURED"
"""A transaction with captured money cannot be closed (cancelled)."""
REASON_PAYMENT_PROCESSING = "PAYMENT_PROCESSING"
"""A transaction cannot be closed while a payment waits for the processor's answer."""
REASON_INVALID_STATUS_TRANSITION = "INVALID_STATUS_TRANSITION"
"""A payment status change outside ALLOWED_TRANSITIONS (a bug, never a client error)."""
REASON_LEDGER_INVARIANT_VIOLATED = "LEDGER_INVARIANT_VIOLATED"
"""A change would break a ref or payment invariant (a bug, never a client error)."""

# --- limits chosen here ------------------------------------------------------------------

FINGERPRINT_HEX_LENGTH = 32
"""Hex characters kept of HMAC-SHA256(key, number): 128 bits, collision-free in practice."""
MAX_CARD_EXPIRY_YEARS = 50
"""An expiry year further than this from today is a typo, not a card."""
MAX_ACCOUNT_HOLDER_NAME_LENGTH = 200
MAX_WALLET_TOKEN_LENGTH = 8192
MAX_REFUND_REASON_LENGTH = 500
UNKNOWN_OUTCOME_TIMEOUT = timedelta(minutes=15)
"""How long a payment may stay PROCESSING with an unknown processor outcome (reconciler)."""
