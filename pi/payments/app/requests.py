"""Idempotent requests (AIP-155) as the use cases name them, and the responses their
keys hold for replays (the adapters store them in their own encoding)."""

from __future__ import annotations

from dataclasses import dataclass

from pi.payments.domain import Payment, Refund

__all__ = [
    "ChangeResponse",
    "CreateResponse",
    "FinalPayment",
    "PendingChange",
    "PendingPayment",
    "RefundResult",
    "RequestKey",
]


@dataclass(frozen=True, slots=True)
class RequestKey:
    """An idempotent request: the caller's `key` within `scope` (the merchant) and
    `operation`, and the request's keyed fingerprint. `key` None: the caller sent none,
    so nothing is claimed, stored or replayed."""

    scope: str
    operation: str
    key: str | None
    fingerprint: str


@dataclass(frozen=True, slots=True)
class PendingPayment:
    """What CreatePayment's key holds once the payment is recorded (T1) and until the
    processor's answer is (T2): a duplicate resumes with this payment."""

    payment_id: str


@dataclass(frozen=True, slots=True)
class FinalPayment:
    """What CreatePayment's key holds once settled: the response every replay returns."""

    payment: Payment


CreateResponse = PendingPayment | FinalPayment


@dataclass(frozen=True, slots=True)
class RefundResult:
    refund: Refund
    payment: Payment


@dataclass(frozen=True, slots=True)
class PendingChange:
    """What a capture's, cancel's or refund's key holds once its intent is recorded and
    until the processor's answer is: the payment's id (capture, cancel) or the refund's.
    A retry with the key resumes that intent, so the processor is asked again with the
    same idempotency key, never for a second change."""

    target_id: str


ChangeResponse = PendingChange | Payment | RefundResult
"""What a capture's, cancel's or refund's key holds: pending, or the final response."""
