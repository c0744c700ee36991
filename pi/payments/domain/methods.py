"""Bank transfers and wallets as clients send them, and the whole CreatePayment request:
validated into what the rules and the processor need, every violation reported at once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from pi.payments.domain.cards import CardDetails, CardInput, Collector, validate_card
from pi.payments.domain.model import (
    BankTransferFacts,
    CaptureMode,
    PaymentMethodType,
    WalletFacts,
    WalletType,
)
from pi.payments.domain.reasons import MAX_ACCOUNT_HOLDER_NAME_LENGTH, MAX_WALLET_TOKEN_LENGTH
from pi.platform.kernel.errors import ValidationErrors
from pi.platform.kernel.money import amount_problem
from pi.platform.kernel.text import text_problem

__all__ = [
    "BankTransferDetails",
    "BankTransferInput",
    "PaymentMethodDetails",
    "PaymentRequest",
    "WalletDetails",
    "WalletInput",
    "validate_bank_transfer",
    "validate_payment_request",
    "validate_wallet",
]


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
    found = Collector(errors)
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


def validate_wallet(
    wallet: WalletInput, *, errors: ValidationErrors, field: str = "payment.wallet"
) -> WalletDetails | None:
    """The validated wallet payment, or None after adding every violation to `errors`.

    type: required. token: 1 to 8192 characters, no control characters, not blank.
    """
    found = Collector(errors)
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
