"""Finding 10: one text validator for every field refuses card numbers and bidi/format
controls, in names, descriptions, metadata and reasons alike."""

from datetime import UTC, datetime

import pytest

from pi.platform.kernel.errors import InvalidArgument
from pi.platform.kernel.text import contains_card_number, printable_text, text_problem
from pi.transactions.domain.transactions import metadata_problems, new_transaction

PANS = [
    "4242424242424242",
    "4242 4242 4242 4242",
    "4000-0566-5566-5556",
    "378282246310005",  # 15-digit Amex
    "6011111111111117",
    "4222222222222",  # 13 digits
]
NOT_PANS = [
    "4242424242424241",  # fails Luhn
    "order 12345678",  # too short
    "12345678901234567890123",  # longer than any card
    "+1 415 555 0100",
    "2026-12-06",
]
BIDI = ["\u202e", "\u202a", "\u2066", "\u2069", "\u200f", "\u200b", "\u2060", "\u00ad", "\ufeff"]


@pytest.mark.parametrize("pan", PANS)
def test_a_luhn_valid_card_number_is_refused_everywhere(pan: str) -> None:
    assert contains_card_number(f"Thanks! card {pan} expires soon")
    assert text_problem(f"ref {pan}", max_length=500) == "must not contain a card number"
    with pytest.raises(InvalidArgument):
        printable_text(f"Shop {pan}", "display_name", 200)
    assert metadata_problems({"note": pan})
    assert metadata_problems({pan: "x"})
    with pytest.raises(InvalidArgument) as invalid:
        new_transaction(
            id="txn_1",
            merchant_id="mer_1",
            amount=100,
            currency="USD",
            description=f"Paid with {pan}",
            metadata={},
            now=datetime.now(UTC),
        )
    assert [v.field for v in invalid.value.violations] == ["transaction.description"]


@pytest.mark.parametrize("text", NOT_PANS)
def test_other_digit_runs_are_fine(text: str) -> None:
    assert not contains_card_number(text)
    assert text_problem(text, max_length=500) is None


@pytest.mark.parametrize("control", BIDI)
def test_bidi_and_invisible_format_controls_are_refused(control: str) -> None:
    text = f"refund {control}approved"
    assert text_problem(text, max_length=500, multiline=True) is not None
    with pytest.raises(InvalidArgument):
        printable_text(text, "display_name", 200)


def test_emoji_sequences_and_line_breaks_still_pass() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # ZWJ sequence
    scotland = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
    assert (
        text_problem(f"Thanks {family} {scotland}\nsee you", max_length=500, multiline=True) is None
    )
    assert printable_text(f"Caf\u00e9 {family}", "display_name", 200)
