"""Payment rules: payment method validation, the payment state machine and the money
each operation moves. Standard library only (plus `pi.platform` errors and money, and
the movement contract of `pi.transactions.domain`).

Every operation is a pure function from the transaction's ledger row (`TransactionRef`,
locked by the caller) and the payment to a `PaymentChange`: the new payment, the new
ref, and the movements to write to the outbox in the same database transaction. The
caller persists the change only after the processor agreed (capture, void, refund) or
to record what the processor said (authorization). See docs/state-machines.md.

Ref invariants (also CHECK constraints on `transaction_refs`):
    held >= 0, captured >= 0, 0 <= refunded <= captured, held + captured <= amount
where `held` is the sum of the amounts of PROCESSING and REQUIRES_CAPTURE payments.
Refunds do not give budget back: a transaction collects at most its amount once.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from types import MappingProxyType

from pi.platform.kernel.errors import FailedPrecondition, InvalidArgument, ValidationErrors
from pi.platform.kernel.money import amount_problem, format_amount
from pi.platform.kernel.text import text_problem
from pi.platform.ledger import MovementDelta, MovementKind

__all__ = [
    "ALLOWED_TRANSITIONS",
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
    "BankTransferDetails",
    "BankTransferFacts",
    "BankTransferInput",
    "CaptureMode",
    "CardBrand",
    "CardDetails",
    "CardFacts",
    "CardInput",
    "CloseChange",
    "FailureReason",
    "Payment",
    "PaymentChange",
    "PaymentMethodDetails",
    "PaymentMethodType",
    "PaymentRequest",
    "PaymentStatus",
    "ProcessorOutcome",
    "ReconcileAction",
    "Refund",
    "RefundStatus",
    "TransactionRef",
    "WalletDetails",
    "WalletFacts",
    "WalletInput",
    "WalletType",
    "authorize_outcome",
    "cancel",
    "capture",
    "card_brand",
    "card_fingerprint",
    "check_budget",
    "check_ref_invariants",
    "check_transition",
    "close_transaction",
    "luhn_check_digit",
    "luhn_valid",
    "normalize_card_number",
    "reconcile_action",
    "refund",
    "start_payment",
    "validate_bank_transfer",
    "validate_card",
    "validate_payment_request",
    "validate_wallet",
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


# --- enums (values == proto names without the prefix) -----------------------------------


class PaymentStatus(enum.StrEnum):
    PROCESSING = "PROCESSING"
    REQUIRES_CAPTURE = "REQUIRES_CAPTURE"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


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


class ReconcileAction(enum.StrEnum):
    """What the reconciler does with a PROCESSING payment after asking the processor."""

    SETTLE = "SETTLE"
    """The outcome is final: apply it with `authorize_outcome`."""
    WAIT = "WAIT"
    """Ask again on the next round."""
    VOID_AND_FAIL = "VOID_AND_FAIL"
    """Unknown for too long: void at the processor, then fail with PROCESSOR_UNAVAILABLE."""


class _Collector:
    """Adds to a shared ValidationErrors and remembers whether this part added anything."""

    def __init__(self, errors: ValidationErrors) -> None:
        self._errors = errors
        self.failed = False

    def add(self, field: str, description: str) -> None:
        self._errors.add(field, description)
        self.failed = True


# --- cards -------------------------------------------------------------------------------

_DIGITS = frozenset("0123456789")


def normalize_card_number(raw: str) -> str:
    """`raw` without spaces and dashes ("4242 4242-4242 4242" -> "4242424242424242")."""
    return raw.replace(" ", "").replace("-", "")


def luhn_valid(digits: str) -> bool:
    """Whether an ASCII digit string passes the Luhn (mod 10) check."""
    if not digits or not set(digits) <= _DIGITS:
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """The digit that, appended to `partial` (ASCII digits), makes it pass `luhn_valid`."""
    for candidate in "0123456789":
        if luhn_valid(partial + candidate):
            return candidate
    raise ValueError("partial must be ASCII digits")


def card_brand(number: str) -> CardBrand:
    """The brand read from the leading digits of a normalised number.

    Visa 4; Mastercard 51-55 and 2221-2720; Amex 34, 37; Discover 6011, 644-649, 65;
    anything else OTHER.
    """
    if number.startswith("4"):
        return CardBrand.VISA
    if len(number) >= 2 and number[:2] in ("34", "37"):
        return CardBrand.AMEX
    if len(number) >= 2 and 51 <= int(number[:2]) <= 55:
        return CardBrand.MASTERCARD
    if len(number) >= 4 and 2221 <= int(number[:4]) <= 2720:
        return CardBrand.MASTERCARD
    if number.startswith(("6011", "65")) or (len(number) >= 3 and 644 <= int(number[:3]) <= 649):
        return CardBrand.DISCOVER
    return CardBrand.OTHER


def card_fingerprint(number: str, key: bytes) -> str:
    """Keyed hash of a normalised card number: HMAC-SHA256(key, number), first 32 hex chars.

    Equal for the same number under the same key (expiry and CVC are not included, so a
    renewed card keeps its fingerprint); useless without the key.
    """
    if not key:
        raise ValueError("the fingerprint key must not be empty")
    digest = hmac.new(key, number.encode("ascii"), hashlib.sha256).hexdigest()
    return digest[:FINGERPRINT_HEX_LENGTH]


@dataclass(frozen=True, slots=True)
class CardInput:
    """A card as the client sent it (unvalidated). The number and CVC never show in repr."""

    number: str = field(repr=False)
    exp_month: int
    exp_year: int
    cvc: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CardDetails:
    """A validated card, for the connector call only: never store or log it."""

    number: str = field(repr=False)
    exp_month: int
    exp_year: int
    cvc: str = field(repr=False)
    brand: CardBrand

    @property
    def last4(self) -> str:
        return self.number[-4:]

    def facts(self, fingerprint_key: bytes) -> CardFacts:
        """What may be kept of the card."""
        return CardFacts(
            brand=self.brand,
            last4=self.last4,
            fingerprint=card_fingerprint(self.number, fingerprint_key),
            exp_month=self.exp_month,
            exp_year=self.exp_year,
        )


@dataclass(frozen=True, slots=True)
class CardFacts:
    """What the platform keeps of a card: brand, last 4, keyed fingerprint, expiry."""

    brand: CardBrand
    last4: str
    fingerprint: str
    exp_month: int
    exp_year: int


def validate_card(
    card: CardInput, *, today: date, errors: ValidationErrors, field: str = "payment.card"
) -> CardDetails | None:
    """The validated card, or None after adding every violation to `errors`.

    number: digits after removing spaces and dashes, 12 to 19 of them, Luhn-valid.
    exp_month: 1 to 12. exp_year: four digits, at most MAX_CARD_EXPIRY_YEARS ahead; the
    card is valid through the last day of its expiry month relative to `today`.
    cvc: 3 digits, 4 for Amex (3 or 4 when the number is invalid, so that only the
    number is reported).
    """
    found = _Collector(errors)
    number = normalize_card_number(card.number)
    brand: CardBrand | None = None
    if not number:
        found.add(f"{field}.number", "is required")
    elif not set(number) <= _DIGITS:
        found.add(f"{field}.number", "must contain only digits, spaces and dashes")
    elif not 12 <= len(number) <= 19:
        found.add(f"{field}.number", "must have 12 to 19 digits")
    elif not luhn_valid(number):
        found.add(f"{field}.number", "is not a valid card number (Luhn check failed)")
    else:
        brand = card_brand(number)

    month_ok = 1 <= card.exp_month <= 12
    if not month_ok:
        found.add(f"{field}.exp_month", "must be 1 to 12")
    year_ok = 1000 <= card.exp_year <= 9999
    if not year_ok:
        found.add(f"{field}.exp_year", "must be a four-digit year")
    elif card.exp_year > today.year + MAX_CARD_EXPIRY_YEARS:
        found.add(f"{field}.exp_year", f"must be at most {MAX_CARD_EXPIRY_YEARS} years ahead")
        year_ok = False
    if month_ok and year_ok and (card.exp_year, card.exp_month) < (today.year, today.month):
        expired_field = "exp_year" if card.exp_year < today.year else "exp_month"
        found.add(f"{field}.{expired_field}", "the card has expired")

    cvc_lengths = {4} if brand is CardBrand.AMEX else {3} if brand is not None else {3, 4}
    if not card.cvc:
        found.add(f"{field}.cvc", "is required")
    elif not set(card.cvc) <= _DIGITS or len(card.cvc) not in cvc_lengths:
        expected = " or ".join(str(n) for n in sorted(cvc_lengths))
        found.add(f"{field}.cvc", f"must be {expected} digits")

    if brand is None or found.failed:
        return None
    return CardDetails(
        number=number, exp_month=card.exp_month, exp_year=card.exp_year, cvc=card.cvc, brand=brand
    )


# --- bank transfers ------------------------------------------------------------------------

_IBAN_SHAPE = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")


@dataclass(frozen=True, slots=True)
class BankTransferInput:
    """A bank transfer as the client sent it (unvalidated)."""

    account_holder_name: str
    account_number: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class BankTransferDetails:
    """A validated bank transfer, for the connector call only."""

    account_holder_name: str
    account_number: str = field(repr=False)

    def facts(self) -> BankTransferFacts:
        return BankTransferFacts(
            account_holder_name=self.account_holder_name, account_last4=self.account_number[-4:]
        )


@dataclass(frozen=True, slots=True)
class BankTransferFacts:
    """What the platform keeps of a bank transfer."""

    account_holder_name: str
    account_last4: str


def _iban_valid(value: str) -> bool:
    rearranged = value[4:] + value[:4]
    numeric = "".join(str(int(char, 36)) for char in rearranged)
    return int(numeric) % 97 == 1


def validate_bank_transfer(
    bank: BankTransferInput, *, errors: ValidationErrors, field: str = "payment.bank_transfer"
) -> BankTransferDetails | None:
    """The validated transfer, or None after adding every violation to `errors`.

    account_holder_name: trimmed, 1 to 200 characters, no control characters.
    account_number: spaces removed, uppercased, 4 to 34 ASCII letters and digits; when
    it has the shape of an IBAN (country letters, check digits, 11-30 more) its mod-97
    checksum must hold.
    """
    found = _Collector(errors)
    name = bank.account_holder_name.strip()
    if not name:
        found.add(f"{field}.account_holder_name", "is required")
    elif (problem := text_problem(name, max_length=MAX_ACCOUNT_HOLDER_NAME_LENGTH)) is not None:
        found.add(f"{field}.account_holder_name", problem)
    account = bank.account_number.replace(" ", "").upper()
    if not account:
        found.add(f"{field}.account_number", "is required")
    elif not (account.isascii() and account.isalnum()) or not 4 <= len(account) <= 34:
        found.add(f"{field}.account_number", "must be 4 to 34 letters and digits")
    elif _IBAN_SHAPE.fullmatch(account) and not _iban_valid(account):
        found.add(f"{field}.account_number", "is not a valid IBAN (checksum failed)")
    if found.failed:
        return None
    return BankTransferDetails(account_holder_name=name, account_number=account)


# --- wallets ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalletInput:
    """A wallet payment as the client sent it (unvalidated); `type` None when unspecified."""

    type: WalletType | None
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class WalletDetails:
    """A validated wallet payment, for the connector call only."""

    type: WalletType
    token: str = field(repr=False)

    def facts(self) -> WalletFacts:
        return WalletFacts(type=self.type)


@dataclass(frozen=True, slots=True)
class WalletFacts:
    """What the platform keeps of a wallet payment (the one-time token is not kept)."""

    type: WalletType


def validate_wallet(
    wallet: WalletInput, *, errors: ValidationErrors, field: str = "payment.wallet"
) -> WalletDetails | None:
    """The validated wallet payment, or None after adding every violation to `errors`.

    type: required. token: 1 to 8192 characters, no control characters, not blank.
    """
    found = _Collector(errors)
    if wallet.type is None:
        found.add(f"{field}.type", "is required")
    if not wallet.token.strip():
        found.add(f"{field}.token", "is required")
    elif (problem := text_problem(wallet.token, max_length=MAX_WALLET_TOKEN_LENGTH)) is not None:
        found.add(f"{field}.token", problem)
    if found.failed or wallet.type is None:
        return None
    return WalletDetails(type=wallet.type, token=wallet.token)


PaymentMethodDetails = CardDetails | BankTransferDetails | WalletDetails
MethodFacts = CardFacts | BankTransferFacts | WalletFacts


# --- the create request --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """A validated CreatePayment input. `amount` None means what remains on the transaction."""

    transaction_id: str
    amount: int | None
    method: PaymentMethodType
    capture_mode: CaptureMode
    details: PaymentMethodDetails


def validate_payment_request(
    *,
    transaction_id: str,
    amount: int,
    method: PaymentMethodType | None,
    capture_mode: CaptureMode | None,
    card: CardInput | None,
    bank_transfer: BankTransferInput | None,
    wallet: WalletInput | None,
    today: date,
    field_prefix: str = "payment",
) -> PaymentRequest:
    """The validated request, or InvalidArgument listing every wrong field.

    `amount` 0 means "what remains" (None in the result); otherwise 1..MAX_AMOUNT.
    `method` is required and exactly its details must be given. `capture_mode` None
    means AUTOMATIC; MANUAL is refused for bank transfers, which cannot be held.
    """
    errors = ValidationErrors()
    p = field_prefix
    if not transaction_id:
        errors.add(f"{p}.transaction_id", "is required")
    if amount != 0 and (problem := amount_problem(amount)) is not None:
        errors.add(f"{p}.amount", problem)
    mode = capture_mode or CaptureMode.AUTOMATIC
    given = {
        PaymentMethodType.CARD: card is not None,
        PaymentMethodType.BANK_TRANSFER: bank_transfer is not None,
        PaymentMethodType.WALLET: wallet is not None,
    }
    detail_field = {
        PaymentMethodType.CARD: "card",
        PaymentMethodType.BANK_TRANSFER: "bank_transfer",
        PaymentMethodType.WALLET: "wallet",
    }
    details: PaymentMethodDetails | None = None
    if method is None:
        errors.add(f"{p}.method", "is required: CARD, BANK_TRANSFER or WALLET")
    else:
        for other, present in given.items():
            if other is not method and present:
                errors.add(f"{p}.{detail_field[other]}", f"must not be set when method is {method}")
        if method is PaymentMethodType.CARD:
            if card is None:
                errors.add(f"{p}.card", "is required when method is CARD")
            else:
                details = validate_card(card, today=today, errors=errors, field=f"{p}.card")
        elif method is PaymentMethodType.BANK_TRANSFER:
            if bank_transfer is None:
                errors.add(f"{p}.bank_transfer", "is required when method is BANK_TRANSFER")
            else:
                details = validate_bank_transfer(
                    bank_transfer, errors=errors, field=f"{p}.bank_transfer"
                )
            if mode is CaptureMode.MANUAL:
                errors.add(f"{p}.capture_mode", "must be AUTOMATIC for a bank transfer")
        elif wallet is None:
            errors.add(f"{p}.wallet", "is required when method is WALLET")
        else:
            details = validate_wallet(wallet, errors=errors, field=f"{p}.wallet")
    errors.raise_if_any("The payment has invalid fields.")
    if method is None or details is None:  # unreachable: each case added a violation
        raise AssertionError("payment validation passed without details")
    return PaymentRequest(
        transaction_id=transaction_id,
        amount=amount or None,
        method=method,
        capture_mode=mode,
        details=details,
    )


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

    @property
    def held_amount(self) -> int:
        """What the payment holds of its transaction's budget before capture."""
        if self.status in (PaymentStatus.PROCESSING, PaymentStatus.REQUIRES_CAPTURE):
            return self.amount
        return 0

    @property
    def authorized_amount(self) -> int:
        """What the payment adds to its transaction's `authorized_amount`."""
        if self.status is PaymentStatus.REQUIRES_CAPTURE:
            return self.amount
        if self.status is PaymentStatus.SUCCEEDED:
            return self.captured_amount
        return 0

    @property
    def refundable_amount(self) -> int:
        if self.status is PaymentStatus.SUCCEEDED:
            return self.captured_amount - self.refunded_amount
        return 0


@dataclass(frozen=True, slots=True)
class Refund:
    """Money returned from a captured payment; the caller sets `processor_reference` after
    the connector approved the refund (`dataclasses.replace`)."""

    id: str
    payment_id: str
    amount: int
    currency: str
    reason: str
    status: RefundStatus
    create_time: datetime
    processor_reference: str | None = None


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
            {PaymentStatus.SUCCEEDED, PaymentStatus.CANCELLED}
        ),
        PaymentStatus.SUCCEEDED: frozenset({PaymentStatus.SUCCEEDED}),  # refunds
        PaymentStatus.FAILED: frozenset(),
        PaymentStatus.CANCELLED: frozenset(),
    }
)
"""Status changes a payment can make. SUCCEEDED -> SUCCEEDED is a refund; no other self-loop."""


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


def _check_payment_invariants(payment: Payment) -> None:
    captured, refunded = payment.captured_amount, payment.refunded_amount
    ok = 0 <= refunded <= captured <= payment.amount and (
        (captured > 0) == (payment.status is PaymentStatus.SUCCEEDED)
    )
    if not ok:
        raise FailedPrecondition(
            f"Payment {payment.id} would break the invariant 0 <= refunded <= captured <= amount.",
            reason=REASON_LEDGER_INVARIANT_VIOLATED,
            metadata={"invariant": "0 <= refunded <= captured <= amount", "payment_id": payment.id},
        )


def _transition(payment: Payment, now: datetime, **changes: object) -> Payment:
    new = dataclasses.replace(payment, update_time=now, **changes)  # type: ignore[arg-type]  # typed by callers
    check_transition(payment.status, new.status)
    _check_payment_invariants(new)
    return new


def _change(
    payment: Payment,
    ref: TransactionRef,
    movements: tuple[MovementDelta, ...] = (),
    refund_: Refund | None = None,
) -> PaymentChange:
    check_ref_invariants(ref)
    return PaymentChange(payment=payment, ref=ref, movements=movements, refund=refund_)


def _requested_amount(amount: int | None, field: str) -> int | None:
    """None for "all"; 0 also means all (proto3 default); else 1..MAX_AMOUNT."""
    if amount is None or amount == 0:
        return None
    problem = amount_problem(amount)
    if problem is not None:
        raise InvalidArgument.field(field, problem)
    return amount


# --- operations ----------------------------------------------------------------------------


def check_budget(ref: TransactionRef, amount: int | None) -> int:
    """The amount a new payment takes (`None` -> everything remaining).

    Raises FailedPrecondition TRANSACTION_CLOSED if the ref is closed, and
    AMOUNT_EXCEEDS_REMAINING (metadata `remaining`) unless held + captured + amount <=
    transaction amount and the amount is positive.
    """
    if ref.closed:
        raise FailedPrecondition(
            "The transaction is cancelled and takes no new payment.",
            reason=REASON_TRANSACTION_CLOSED,
        )
    remaining = ref.remaining
    wanted = remaining if amount is None else amount
    if wanted <= 0 or wanted > remaining:
        raise FailedPrecondition(
            f"Only {format_amount(remaining, ref.currency)} remains to be paid on the transaction.",
            reason=REASON_AMOUNT_EXCEEDS_REMAINING,
            metadata={"remaining": str(remaining)},
        )
    return wanted


def start_payment(
    ref: TransactionRef,
    request: PaymentRequest,
    *,
    payment_id: str,
    merchant_id: str,
    fingerprint_key: bytes,
    now: datetime,
) -> PaymentChange:
    """A new PROCESSING payment holding its amount of the transaction's budget.

    Persist it (ref.held_amount grows) before calling the processor, so a crash leaves
    a PROCESSING payment for the reconciler rather than an unrecorded charge. No movement:
    the transaction learns of the payment when the processor answers.
    """
    amount = check_budget(ref, request.amount)
    details = request.details
    facts: MethodFacts = (
        details.facts(fingerprint_key) if isinstance(details, CardDetails) else details.facts()
    )
    payment = Payment(
        id=payment_id,
        merchant_id=merchant_id,
        transaction_id=ref.transaction_id,
        amount=amount,
        currency=ref.currency,
        method=request.method,
        capture_mode=request.capture_mode,
        status=PaymentStatus.PROCESSING,
        failure_reason=None,
        captured_amount=0,
        refunded_amount=0,
        card=facts if isinstance(facts, CardFacts) else None,
        bank_transfer=facts if isinstance(facts, BankTransferFacts) else None,
        wallet=facts if isinstance(facts, WalletFacts) else None,
        processor_reference=None,
        create_time=now,
        update_time=now,
    )
    return _change(payment, dataclasses.replace(ref, held_amount=ref.held_amount + amount))


def authorize_outcome(
    ref: TransactionRef,
    payment: Payment,
    outcome: ProcessorOutcome,
    *,
    failure_reason: FailureReason | None = None,
    processor_reference: str | None = None,
    now: datetime,
) -> PaymentChange:
    """Apply what the processor said about a PROCESSING payment's authorization.

    APPROVED, MANUAL capture -> REQUIRES_CAPTURE; movement AUTHORIZATION(+amount).
    APPROVED, AUTOMATIC -> SUCCEEDED; AUTHORIZATION(+amount) then CAPTURE(captured
    +amount); the hold becomes captured.
    DECLINED -> FAILED with `failure_reason` (PROCESSOR_DECLINED if none); FAILURE; the
    hold is released.
    PENDING / TIMEOUT -> still PROCESSING, no movement (only the reference is recorded).
    A payment that is not PROCESSING raises FailedPrecondition PAYMENT_NOT_PROCESSING
    (someone else settled it first: the caller treats that as done).
    """
    if payment.status is not PaymentStatus.PROCESSING:
        raise FailedPrecondition(
            f"Payment {payment.id} is already {payment.status}.",
            reason=REASON_PAYMENT_NOT_PROCESSING,
            metadata={"status": payment.status.value},
        )
    reference = processor_reference or payment.processor_reference
    if outcome in (ProcessorOutcome.PENDING, ProcessorOutcome.TIMEOUT):
        if reference == payment.processor_reference:
            return _change(payment, ref)
        noted = dataclasses.replace(payment, processor_reference=reference, update_time=now)
        return _change(noted, ref)
    amount = payment.amount
    released = dataclasses.replace(ref, held_amount=ref.held_amount - amount)
    if outcome is ProcessorOutcome.DECLINED:
        failed = _transition(
            payment,
            now,
            status=PaymentStatus.FAILED,
            failure_reason=failure_reason or FailureReason.PROCESSOR_DECLINED,
            processor_reference=reference,
        )
        return _change(failed, released, (MovementDelta(MovementKind.FAILURE, payment.id),))
    authorization = MovementDelta(MovementKind.AUTHORIZATION, payment.id, authorized_delta=amount)
    if payment.capture_mode is CaptureMode.MANUAL:
        held = _transition(
            payment, now, status=PaymentStatus.REQUIRES_CAPTURE, processor_reference=reference
        )
        return _change(held, ref, (authorization,))
    captured = _transition(
        payment,
        now,
        status=PaymentStatus.SUCCEEDED,
        captured_amount=amount,
        processor_reference=reference,
    )
    capture_movement = MovementDelta(MovementKind.CAPTURE, payment.id, captured_delta=amount)
    new_ref = dataclasses.replace(released, captured_amount=ref.captured_amount + amount)
    return _change(captured, new_ref, (authorization, capture_movement))


def capture(
    ref: TransactionRef, payment: Payment, amount: int | None, *, now: datetime
) -> PaymentChange:
    """Capture all (`amount` None or 0) or part of a REQUIRES_CAPTURE payment.

    The payment becomes SUCCEEDED with `captured_amount`; the rest of the authorization is
    released. Movement CAPTURE(captured +c, authorized -(amount - c)).
    Raises InvalidArgument on `amount` for a negative or too large value, and
    FailedPrecondition PAYMENT_NOT_CAPTURABLE, AMOUNT_EXCEEDS_AUTHORIZED,
    TRANSACTION_CLOSED.
    """
    wanted = _requested_amount(amount, "amount")
    if payment.status is not PaymentStatus.REQUIRES_CAPTURE:
        raise FailedPrecondition(
            f"Payment {payment.id} is {payment.status}; "
            "only a REQUIRES_CAPTURE payment can be captured.",
            reason=REASON_PAYMENT_NOT_CAPTURABLE,
            metadata={"status": payment.status.value},
        )
    if ref.closed:
        raise FailedPrecondition(
            "The transaction is cancelled: nothing can be captured on it.",
            reason=REASON_TRANSACTION_CLOSED,
        )
    authorized = payment.amount
    captured_amount = authorized if wanted is None else wanted
    if captured_amount > authorized:
        raise FailedPrecondition(
            f"At most {format_amount(authorized, payment.currency)} can be captured.",
            reason=REASON_AMOUNT_EXCEEDS_AUTHORIZED,
            metadata={"authorized": str(authorized)},
        )
    captured = _transition(
        payment, now, status=PaymentStatus.SUCCEEDED, captured_amount=captured_amount
    )
    new_ref = dataclasses.replace(
        ref,
        held_amount=ref.held_amount - authorized,
        captured_amount=ref.captured_amount + captured_amount,
    )
    movement = MovementDelta(
        MovementKind.CAPTURE,
        payment.id,
        authorized_delta=captured_amount - authorized,
        captured_delta=captured_amount,
    )
    return _change(captured, new_ref, (movement,))


def cancel(ref: TransactionRef, payment: Payment, *, now: datetime) -> PaymentChange:
    """Void a REQUIRES_CAPTURE payment: CANCELLED, the hold released, movement VOID(-amount).

    Raises FailedPrecondition PAYMENT_NOT_CANCELLABLE for any other status (a PROCESSING
    payment waits for its outcome; a captured one is refunded instead).
    """
    if payment.status is not PaymentStatus.REQUIRES_CAPTURE:
        raise FailedPrecondition(
            f"Payment {payment.id} is {payment.status}; "
            "only a REQUIRES_CAPTURE payment can be cancelled.",
            reason=REASON_PAYMENT_NOT_CANCELLABLE,
            metadata={"status": payment.status.value},
        )
    cancelled = _transition(payment, now, status=PaymentStatus.CANCELLED)
    new_ref = dataclasses.replace(ref, held_amount=ref.held_amount - payment.amount)
    movement = MovementDelta(MovementKind.VOID, payment.id, authorized_delta=-payment.amount)
    return _change(cancelled, new_ref, (movement,))


def refund(
    ref: TransactionRef,
    payment: Payment,
    amount: int | None,
    *,
    refund_id: str,
    reason: str = "",
    now: datetime,
) -> PaymentChange:
    """Refund all that is left (`amount` None or 0) or part of a SUCCEEDED payment.

    Refunds may repeat until captured - refunded is zero. Movement REFUND(refunded +r).
    Raises InvalidArgument on `amount` (negative, too large) or `reason` (over 500
    characters, control characters), and FailedPrecondition PAYMENT_NOT_REFUNDABLE (not
    SUCCEEDED, or nothing left) or AMOUNT_EXCEEDS_REFUNDABLE (metadata `refundable`).
    """
    errors = ValidationErrors()
    wanted: int | None = None
    try:
        wanted = _requested_amount(amount, "amount")
    except InvalidArgument as error:
        for violation in error.violations:
            errors.add(violation.field, violation.description)
    problem = text_problem(reason, max_length=MAX_REFUND_REASON_LENGTH, multiline=True)
    if problem is not None:
        errors.add("reason", problem)
    errors.raise_if_any("The refund has invalid fields.")
    refundable = payment.refundable_amount
    if payment.status is not PaymentStatus.SUCCEEDED or refundable <= 0:
        message = (
            f"Payment {payment.id} is already fully refunded."
            if payment.status is PaymentStatus.SUCCEEDED
            else f"Payment {payment.id} is {payment.status}; "
            "only a SUCCEEDED payment can be refunded."
        )
        raise FailedPrecondition(
            message, reason=REASON_PAYMENT_NOT_REFUNDABLE, metadata={"status": payment.status.value}
        )
    refunded_amount = refundable if wanted is None else wanted
    if refunded_amount > refundable:
        raise FailedPrecondition(
            f"At most {format_amount(refundable, payment.currency)} can be refunded.",
            reason=REASON_AMOUNT_EXCEEDS_REFUNDABLE,
            metadata={"refundable": str(refundable)},
        )
    refunded = _transition(payment, now, refunded_amount=payment.refunded_amount + refunded_amount)
    new_ref = dataclasses.replace(ref, refunded_amount=ref.refunded_amount + refunded_amount)
    movement = MovementDelta(MovementKind.REFUND, payment.id, refunded_delta=refunded_amount)
    record = Refund(
        id=refund_id,
        payment_id=payment.id,
        amount=refunded_amount,
        currency=payment.currency,
        reason=reason,
        status=RefundStatus.SUCCEEDED,
        create_time=now,
    )
    return _change(refunded, new_ref, (movement,), record)


def close_transaction(
    ref: TransactionRef, payments: Iterable[Payment], *, now: datetime
) -> CloseChange:
    """Close a transaction to new payments and void its outstanding authorizations.

    `payments` are all payments of the transaction. Raises FailedPrecondition
    TRANSACTION_CAPTURED if anything was captured, PAYMENT_PROCESSING if a payment still
    waits for the processor (its outcome could capture money after the close). Closing a
    closed ref changes nothing (`already_closed`).
    """
    if ref.closed:
        return CloseChange(ref=ref, voided=(), movements=(), already_closed=True)
    if ref.captured_amount > 0:
        raise FailedPrecondition(
            "Money was captured on the transaction: refund it instead of cancelling.",
            reason=REASON_TRANSACTION_CAPTURED,
            metadata={"captured": str(ref.captured_amount)},
        )
    payments = list(payments)
    processing = [p.id for p in payments if p.status is PaymentStatus.PROCESSING]
    if processing:
        raise FailedPrecondition(
            "A payment of the transaction is waiting for the processor; retry when it has settled.",
            reason=REASON_PAYMENT_PROCESSING,
            metadata={"payment_id": processing[0]},
        )
    voided: list[Payment] = []
    movements: list[MovementDelta] = []
    new_ref = ref
    for payment in payments:
        if payment.status is PaymentStatus.REQUIRES_CAPTURE:
            change = cancel(new_ref, payment, now=now)
            new_ref = change.ref
            voided.append(change.payment)
            movements.extend(change.movements)
    movements.append(MovementDelta(MovementKind.CANCELLATION, None))
    new_ref = dataclasses.replace(new_ref, closed=True)
    check_ref_invariants(new_ref)
    return CloseChange(
        ref=new_ref, voided=tuple(voided), movements=tuple(movements), already_closed=False
    )


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
