"""The payment funnel as Prometheus counts, from what the servicer answers.

A payment is counted once, when CreatePayment answers it, by method, capture mode, the
status it was created in and its failure reason; a capture, cancel or refund by the
status it left the payment in. A replayed answer (same idempotency key and request) is
not counted again. The reconciler counts the PROCESSING payments it settles
(`pi_payments_reconciled_total`, in `workers`).
"""

from __future__ import annotations

from pi.payments.domain.model import Payment
from pi.platform.observability import metrics
from pi.platform.observability.telemetry import replayed_in_this_request

__all__ = ["count_change", "count_created"]


def count_created(payment: Payment) -> None:
    if replayed_in_this_request():
        return
    reason = payment.failure_reason.value if payment.failure_reason is not None else ""
    metrics.payments.labels(
        payment.method.value, payment.capture_mode.value, payment.status.value, reason
    ).inc()


def count_change(operation: str, payment: Payment) -> None:
    if replayed_in_this_request():
        return
    metrics.payment_changes.labels(operation, payment.status.value).inc()
