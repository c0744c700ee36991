"""The payment model: enums, what is kept of a payment method, payments, refunds, the
transaction's ledger row (`TransactionRef`), the changes operations make, and the
invariants and state machine every change must keep.

Ref invariants (also CHECK constraints on `transaction_refs`):
    held >= 0, captured >= 0, 0 <= refunded <= captured, held + captured <= amount
where `held` is the sum of the amounts of PROCESSING, REQUIRES_CAPTURE, CAPTURING and
CANCELLING payments.
Refunds do not give budget back: a transaction collects at most its amount once.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from pi.payments.domain.reasons import (
    REASON_INVALID_STATUS_TRANSITION,
    REASON_LEDGER_INVARIANT_VIOLATED,
)
from pi.platform.kernel.errors import FailedPrecondition
from pi.platform.ledger import MovementDelta

__all__ = [
    "ALLOWED_TRANSITIONS",
    "BankTransferFacts",
    "CaptureMode",
    "CardBrand",
    "CardFacts",
    "CloseChange",
    "FailureReason",
    "MethodFacts",
    "Payment",
    "PaymentChange",
    "PaymentMethodType",
    "PaymentStatus",
    "Refund",
    "RefundStatus",
    "TransactionRef",
    "WalletFacts",
    "WalletType",
    "check_payment_invariants",
    "check_ref_invariants",
    "check_transition",
]

# --- enums (values == proto names without the prefix) -----------------------------------


class PaymentStatus(enum.StrEnum):
    PROCESSING = "PROCESSING"
    REQUIRES_CAPTURE = "REQUIRES_CAPTURE"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CAPTURING = "CAPTURING"
    """A capture is recorded and sent to the processor, its answer not yet recorded."""
    CANCELLING = "CANCELLING"
    """A void is recorded and sent to the processor, its answer not yet recorded."""


class FailureReason(enum.StrEnum):
    CARD_DECLINED = "CARD_DECLINED"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    PROCESSOR_UNAVAILABLE = "PROCESSOR_UNAVAILABLE"
    PROCESSOR_DECLINED = "PROCESSOR_DECLINED"


class CardBrand(enum.StrEnum):
    VISA = "VISA"
    MASTERCARD = "MASTERCARD"
    AMEX = "AMEX"
    DISCOVER = "DISCOVER"
    OTHER = "OTHER"


class PaymentMethodType(enum.StrEnum):
    CARD = "CARD"
    BANK_TRANSFER = "BANK_TRANSFER"
    WALLET = "WALLET"


class CaptureMode(enum.StrEnum):
    AUTOMATIC = "AUTOMATIC"
    MANUAL = "MANUAL"


class WalletType(enum.StrEnum):
    APPLE_PAY = "APPLE_PAY"
    GOOGLE_PAY = "GOOGLE_PAY"
    PAYPAL = "PAYPAL"


class RefundStatus(enum.StrEnum):
    SUCCEEDED = "SUCCEEDED"
    PENDING = "PENDING"
    """Recorded and sent to the processor, its answer not yet recorded."""
    FAILED = "FAILED"
    """The processor declined it (`failure_reason` says why); nothing was returned."""


# --- what is kept of a payment method --------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardFacts:
    """What the platform keeps of a card: brand, last 4, keyed fingerprint, expiry."""

    brand: CardBrand
    last4: str
    fingerprint: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True, slots=True)
class BankTransferFacts:
    """What the platform keeps of a bank transfer."""

    account_holder_name: str
    account_last4: str


@dataclass(frozen=True, slots=True)
class WalletFacts:
    """What the platform keeps of a wallet payment (the one-time token is not kept)."""

    type: WalletType


MethodFacts = CardFacts | BankTransferFacts | WalletFacts


# --- value objects -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Payment:
    """A payment as the payment service stores it. Exactly the facts of `method` are set."""

    id: str
    merchant_id: str
    transaction_id: str
    amount: int
    currency: str
    method: PaymentMethodType
    capture_mode: CaptureMode
    status: PaymentStatus
    failure_reason: FailureReason | None
    captured_amount: int
    refunded_amount: int
    card: CardFacts | None
    bank_transfer: BankTransferFacts | None
    wallet: WalletFacts | None
    processor_reference: str | None
    create_time: datetime
    update_time: datetime
    capturing_amount: int = 0
    """What a CAPTURING payment asked the processor to capture (0 in any other status)."""
    refunding_amount: int = 0
    """What PENDING refunds of the payment hold of its refundable amount."""

    @property
    def held_amount(self) -> int:
        """What the payment holds of its transaction's budget before capture."""
        if self.status in _HOLDING:
            return self.amount
        return 0

    @property
    def authorized_amount(self) -> int:
        """What the payment adds to its transaction's `authorized_amount`."""
        if self.status in _AUTHORIZED:
            return self.amount
        if self.status is PaymentStatus.SUCCEEDED:
            return self.captured_amount
        return 0

    @property
    def refundable_amount(self) -> int:
        """What a new refund may still take: captured - refunded - pending refunds."""
        if self.status is PaymentStatus.SUCCEEDED:
            return self.captured_amount - self.refunded_amount - self.refunding_amount
        return 0


_AUTHORIZED = frozenset(
    {PaymentStatus.REQUIRES_CAPTURE, PaymentStatus.CAPTURING, PaymentStatus.CANCELLING}
)
_HOLDING = _AUTHORIZED | {PaymentStatus.PROCESSING}


@dataclass(frozen=True, slots=True)
class Refund:
    """Money returned from a captured payment: PENDING from the moment it is recorded
    until the processor's answer makes it SUCCEEDED or FAILED. Its id is the processor's
    idempotency key for it."""

    id: str
    payment_id: str
    amount: int
    currency: str
    reason: str
    status: RefundStatus
    create_time: datetime
    processor_reference: str | None = None
    failure_reason: FailureReason | None = None
    """Why the processor declined it, when FAILED."""


@dataclass(frozen=True, slots=True)
class TransactionRef:
    """The payment service's ledger row for one transaction (`transaction_refs`)."""

    transaction_id: str
    merchant_id: str
    amount: int
    currency: str
    closed: bool = False
    held_amount: int = 0
    captured_amount: int = 0
    refunded_amount: int = 0

    @property
    def remaining(self) -> int:
        """What new payments may still take: amount - held - captured."""
        return self.amount - self.held_amount - self.captured_amount


@dataclass(frozen=True, slots=True)
class PaymentChange:
    """The result of one payment operation, to persist in one database transaction.

    `movements` go to the outbox in order; `refund` is set by `refund()` only.
    """

    payment: Payment
    ref: TransactionRef
    movements: tuple[MovementDelta, ...] = ()
    refund: Refund | None = None


@dataclass(frozen=True, slots=True)
class CloseChange:
    """The result of `close_transaction`.

    `voided` are the payments to void at the processor and store as CANCELLED;
    `movements` are their VOID movements then the CANCELLATION (whose id the caller makes
    deterministic: `mov_cancel_<transaction id>`). Empty when `already_closed`.
    """

    ref: TransactionRef
    voided: tuple[Payment, ...]
    movements: tuple[MovementDelta, ...]
    already_closed: bool


# --- state machine -------------------------------------------------------------------------

ALLOWED_TRANSITIONS: Mapping[PaymentStatus, frozenset[PaymentStatus]] = MappingProxyType(
    {
        PaymentStatus.PROCESSING: frozenset(
            {PaymentStatus.REQUIRES_CAPTURE, PaymentStatus.SUCCEEDED, PaymentStatus.FAILED}
        ),
        PaymentStatus.REQUIRES_CAPTURE: frozenset(
            {PaymentStatus.CAPTURING, PaymentStatus.CANCELLING}
        ),
        # Back to REQUIRES_CAPTURE: the processor declined the capture or the void.
        PaymentStatus.CAPTURING: frozenset(
            {PaymentStatus.SUCCEEDED, PaymentStatus.REQUIRES_CAPTURE}
        ),
        PaymentStatus.CANCELLING: frozenset(
            {PaymentStatus.CANCELLED, PaymentStatus.REQUIRES_CAPTURE}
        ),
        PaymentStatus.SUCCEEDED: frozenset({PaymentStatus.SUCCEEDED}),  # refunds
        PaymentStatus.FAILED: frozenset(),
        PaymentStatus.CANCELLED: frozenset(),
    }
)
"""Status changes a payment can make. SUCCEEDED -> SUCCEEDED is a refund (recorded,
then settled); no other self-loop."""


def check_transition(old: PaymentStatus, new: PaymentStatus) -> None:
    """Raise FailedPrecondition(INVALID_STATUS_TRANSITION) unless old -> new is allowed."""
    if new not in ALLOWED_TRANSITIONS[old]:
        raise FailedPrecondition(
            f"A payment cannot go from {old} to {new}.",
            reason=REASON_INVALID_STATUS_TRANSITION,
            metadata={"from": old.value, "to": new.value},
        )


def check_ref_invariants(ref: TransactionRef) -> None:
    """Raise FailedPrecondition(LEDGER_INVARIANT_VIOLATED) if the ref's amounts are inconsistent."""
    broken: str | None = None
    if ref.held_amount < 0:
        broken = "0 <= held"
    elif ref.captured_amount < 0:
        broken = "0 <= captured"
    elif not 0 <= ref.refunded_amount <= ref.captured_amount:
        broken = "0 <= refunded <= captured"
    elif ref.held_amount + ref.captured_amount > ref.amount:
        broken = "held + captured <= amount"
    if broken is not None:
        raise FailedPrecondition(
            f"Transaction {ref.transaction_id} would break the invariant {broken}.",
            reason=REASON_LEDGER_INVARIANT_VIOLATED,
            metadata={"invariant": broken, "transaction_id": ref.transaction_id},
        )


def check_payment_invariants(payment: Payment) -> None:
    """Raise FailedPrecondition(LEDGER_INVARIANT_VIOLATED) unless 0 <= refunded +
    refunding <= captured <= amount, captured > 0 exactly when SUCCEEDED and 0 <
    capturing <= amount exactly when CAPTURING."""
    captured, refunded = payment.captured_amount, payment.refunded_amount
    capturing, refunding = payment.capturing_amount, payment.refunding_amount
    ok = (
        refunded >= 0
        and refunding >= 0
        and refunded + refunding <= captured <= payment.amount
        and (captured > 0) == (payment.status is PaymentStatus.SUCCEEDED)
        and (0 < capturing <= payment.amount) == (payment.status is PaymentStatus.CAPTURING)
        and (capturing == 0 or payment.status is PaymentStatus.CAPTURING)
    )
    if not ok:
        raise FailedPrecondition(
            f"Payment {payment.id} would break the invariant 0 <= refunded <= captured <= amount.",
            reason=REASON_LEDGER_INVARIANT_VIOLATED,
            metadata={"invariant": "0 <= refunded <= captured <= amount", "payment_id": payment.id},
        )
