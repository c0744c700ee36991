"""The processor connector interface: how the payment service talks to a processor.

A connector is given card or account details inside the request of one call and must
not keep them: it returns only its own reference and the outcome.

Every call is keyed by our payment id, which the connector passes to the processor as
the idempotency key: repeating `authorize` for the same payment never charges twice, and
`status(payment_id)` works even when the authorization timed out before any processor
reference came back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pi.payments.domain import FailureReason, PaymentMethodDetails, ProcessorOutcome

__all__ = [
    "AuthorizeRequest",
    "CaptureRequest",
    "Connector",
    "ConnectorResult",
    "ProcessorOutcome",
    "RefundRequest",
    "VoidRequest",
]


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


@runtime_checkable
class Connector(Protocol):
    """A payment processor. Implementations never raise for a processor answer: a
    decline is a DECLINED result and no answer is a TIMEOUT result."""

    @property
    def name(self) -> str:
        """Short stable name stored with payments, e.g. "sandbox"."""
        ...

    async def authorize(self, request: AuthorizeRequest) -> ConnectorResult:
        """APPROVED, DECLINED(reason), PENDING (settles asynchronously) or TIMEOUT."""
        ...

    async def capture(self, request: CaptureRequest) -> ConnectorResult:
        """APPROVED, DECLINED or TIMEOUT."""
        ...

    async def void(self, request: VoidRequest) -> ConnectorResult:
        """APPROVED (also when nothing was held), DECLINED (already captured) or TIMEOUT."""
        ...

    async def refund(self, request: RefundRequest) -> ConnectorResult:
        """APPROVED, DECLINED or TIMEOUT."""
        ...

    async def status(self, payment_id: str) -> ConnectorResult:
        """Where the payment's authorization stands now.

        APPROVED or DECLINED(reason) when final; PENDING while the processor settles it;
        TIMEOUT when the processor could not be asked. A payment the processor never
        received is DECLINED(PROCESSOR_UNAVAILABLE): nothing was charged.
        """
        ...
