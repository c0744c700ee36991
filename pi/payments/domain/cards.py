"""Cards as clients send them: normalising, the Luhn check, the brand, the keyed
fingerprint, and validation (every violation reported at once)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import date

from pi.payments.domain.model import CardBrand, CardFacts
from pi.payments.domain.reasons import FINGERPRINT_HEX_LENGTH, MAX_CARD_EXPIRY_YEARS
from pi.platform.kernel.errors import ValidationErrors

__all__ = [
    "CardDetails",
    "CardInput",
    "Collector",
    "card_brand",
    "card_fingerprint",
    "luhn_check_digit",
    "luhn_valid",
    "normalize_card_number",
    "validate_card",
]


class Collector:
    """Adds to a shared ValidationErrors and remembers whether this part added anything."""

    def __init__(self, errors: ValidationErrors) -> None:
        self._errors = errors
        self.failed = False

    def add(self, field: str, description: str) -> None:
        self._errors.add(field, description)
        self.failed = True


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


def card_fingerprint(number: str, key: bytes, merchant_id: str) -> str:
    """Keyed hash of a normalised card number for one merchant, first 32 hex chars:
    HMAC-SHA256(HMAC-SHA256(key, "merchant:" + merchant_id), number).

    Equal for the same number at the same merchant (expiry and CVC are not included, so a
    renewed card keeps its fingerprint); different at another merchant, so fingerprints
    cannot link a cardholder across merchants; useless without the key.
    """
    if not key:
        raise ValueError("the fingerprint key must not be empty")
    if not merchant_id:
        raise ValueError("a card fingerprint belongs to a merchant")
    merchant_key = hmac.new(key, f"merchant:{merchant_id}".encode(), hashlib.sha256).digest()
    digest = hmac.new(merchant_key, number.encode("ascii"), hashlib.sha256).hexdigest()
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

    def facts(self, fingerprint_key: bytes, merchant_id: str) -> CardFacts:
        """What may be kept of the card (its fingerprint is `merchant_id`'s)."""
        return CardFacts(
            brand=self.brand,
            last4=self.last4,
            fingerprint=card_fingerprint(self.number, fingerprint_key, merchant_id),
            exp_month=self.exp_month,
            exp_year=self.exp_year,
        )


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
    found = Collector(errors)
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
