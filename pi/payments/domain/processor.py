"""What the payment service and a processor say to each other: the requests of one
call each, the processor's answer (`ConnectorResult`, with its `ProcessorOutcome`), and
what the reconciler does with a payment the processor has not settled yet.

Every call is keyed by our payment id, which the connector passes to the processor as
the idempotency key: repeating `authorize` for the same payment never charges twice, and
`status(payment_id)` works even when the authorization timed out before any processor
reference came back. A request carries card or account details for its one call only:
the connector must not keep them (the details' repr hides them).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from pi.payments.domain.methods import PaymentMethodDetails
from pi.payments.domain.model import FailureReason, Payment
from pi.payments.domain.reasons import UNKNOWN_OUTCOME_TIMEOUT

__all__ = [
    "AuthorizeRequest",
    "CaptureRequest",
    "ConnectorResult",
    "ProcessorOutcome",
    "ReconcileAction",
    "RefundRequest",
    "VoidRequest",
    "reconcile_action",
]


class ProcessorOutcome(enum.StrEnum):
    """What a processor said about an authorization (or a status query about one).

    APPROVED and DECLINED are final. PENDING: the processor has the payment and settles
    it asynchronously (bank transfers, wallets). TIMEOUT: no answer, the outcome is
    unknown and the money may or may not have moved.
    """

    APPROVED = "APPROVED"
    DECLINED = "DECLINED"
    PENDING = "PENDING"
    TIMEOUT = "TIMEOUT"


@dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    """Authorize `amount` of `currency` for a payment; `capture` also captures it (one step).

    `details` carries the card number / account number / wallet token for this call
    only; its repr hides them.
    """

    payment_id: str
    merchant_id: str
    amount: int
    currency: str
    capture: bool
    details: PaymentMethodDetails


@dataclass(frozen=True, slots=True)
class CaptureRequest:
    """Capture `amount` (at most what was authorized) of an authorized payment.

    `idempotency_key` makes a retried capture a no-op (the payment id is a fine key:
    a payment is captured at most once).
    """

    payment_id: str
    reference: str | None
    amount: int
    currency: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class VoidRequest:
    """Release an authorization that was not captured (or one whose outcome is unknown)."""

    payment_id: str
    reference: str | None
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """Return `amount` of a captured payment; `idempotency_key` is the refund id."""

    payment_id: str
    reference: str | None
    amount: int
    currency: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class ConnectorResult:
    """What the processor said.

    `reference` is the processor's id for the operation (e.g. "sbx_01J..."), when it
    answered. `failure_reason` is set when `outcome` is DECLINED.
    """

    outcome: ProcessorOutcome
    reference: str | None = None
    failure_reason: FailureReason | None = None

    @classmethod
    def approved(cls, reference: str) -> ConnectorResult:
        return cls(ProcessorOutcome.APPROVED, reference)

    @classmethod
    def declined(cls, reason: FailureReason, reference: str | None = None) -> ConnectorResult:
        return cls(ProcessorOutcome.DECLINED, reference, reason)

    @classmethod
    def pending(cls, reference: str | None) -> ConnectorResult:
        return cls(ProcessorOutcome.PENDING, reference)

    @classmethod
    def timeout(cls) -> ConnectorResult:
        return cls(ProcessorOutcome.TIMEOUT)

    @property
    def is_final(self) -> bool:
        """APPROVED or DECLINED: the reconciler may settle the payment on it."""
        return self.outcome in (ProcessorOutcome.APPROVED, ProcessorOutcome.DECLINED)


class ReconcileAction(enum.StrEnum):
    """What the reconciler does with a PROCESSING payment after asking the processor."""

    SETTLE = "SETTLE"
    """The outcome is final: apply it with `authorize_outcome`."""
    WAIT = "WAIT"
    """Ask again on the next round."""
    VOID_AND_FAIL = "VOID_AND_FAIL"
    """Unknown for too long: void at the processor, then fail with PROCESSOR_UNAVAILABLE."""


def reconcile_action(
    payment: Payment,
    outcome: ProcessorOutcome,
    *,
    now: datetime,
    give_up_after: timedelta = UNKNOWN_OUTCOME_TIMEOUT,
) -> ReconcileAction:
    """What the reconciler does with a PROCESSING payment given the processor's status.

    APPROVED / DECLINED -> SETTLE (apply with `authorize_outcome`). PENDING -> WAIT: the
    processor has the payment and settles it asynchronously, however long that takes.
    TIMEOUT (the status is unknown) -> WAIT until `give_up_after` has passed since the
    payment was created, then VOID_AND_FAIL: void at the processor to be safe, then
    `authorize_outcome(DECLINED, failure_reason=PROCESSOR_UNAVAILABLE)`.
    """
    if outcome in (ProcessorOutcome.APPROVED, ProcessorOutcome.DECLINED):
        return ReconcileAction.SETTLE
    if outcome is ProcessorOutcome.PENDING:
        return ReconcileAction.WAIT
    if now - payment.create_time >= give_up_after:
        return ReconcileAction.VOID_AND_FAIL
    return ReconcileAction.WAIT
