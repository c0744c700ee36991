"""Currencies and amounts in minor units (pi.platform.kernel.money)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pi.platform.kernel.errors import InvalidArgument
from pi.platform.kernel.money import (
    CURRENCIES,
    INT64_MAX,
    MAX_AMOUNT,
    amount_problem,
    currency_problem,
    format_amount,
    get_currency,
    parse_currency,
    validate_amount,
)


@pytest.mark.parametrize(
    ("code", "exponent"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("CLP", 0),
        ("ISK", 0),
        ("VND", 0),
        ("XOF", 0),
        ("UGX", 0),
        ("KWD", 3),
        ("BHD", 3),
        ("JOD", 3),
        ("OMR", 3),
        ("TND", 3),
        ("IQD", 3),
        ("LYD", 3),
        ("CLF", 4),
        ("UYW", 4),
        ("XCG", 2),
        ("ZWG", 2),
        ("SLE", 2),
    ],
)
def test_currency_exponents_follow_iso_4217(code: str, exponent: int) -> None:
    currency = parse_currency(code, "transaction.currency")
    assert currency.code == code
    assert currency.exponent == exponent
    assert currency.minor_per_major == 10**exponent


def test_currency_table_is_well_formed() -> None:
    assert len(CURRENCIES) >= 150
    numerics = [c.numeric for c in CURRENCIES.values()]
    assert len(set(numerics)) == len(numerics)
    for code, currency in CURRENCIES.items():
        assert code == currency.code
        assert len(code) == 3 and code.isascii() and code.isupper() and code.isalpha()
        assert len(currency.numeric) == 3 and currency.numeric.isdigit()
        assert currency.exponent in (0, 2, 3, 4)
        assert currency.name
        assert str(currency) == code


@pytest.mark.parametrize(
    "code",
    ["XAU", "XAG", "XPT", "XPD", "XDR", "XTS", "XXX", "XBA", "XSU", "XUA", "HRK", "ZWL", "ANG"],
)
def test_codes_without_minor_unit_or_withdrawn_are_refused(code: str) -> None:
    assert get_currency(code) is None
    with pytest.raises(InvalidArgument) as raised:
        parse_currency(code, "transaction.currency")
    assert raised.value.violations[0].field == "transaction.currency"
    assert "not a supported" in raised.value.violations[0].description


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        ("", "is required"),
        ("usd", "three uppercase letters"),
        ("Usd", "three uppercase letters"),
        ("US", "three uppercase letters"),
        ("USDD", "three uppercase letters"),
        (" USD", "three uppercase letters"),
        ("US1", "three uppercase letters"),
        ("ÜSD", "three uppercase letters"),
        ("ABC", "not a supported"),
    ],
)
def test_currency_codes_must_be_exact_uppercase_iso_codes(code: str, fragment: str) -> None:
    problem = currency_problem(code)
    assert problem is not None and fragment in problem
    with pytest.raises(InvalidArgument) as raised:
        parse_currency(code, "x.currency")
    assert raised.value.reason == "INVALID_ARGUMENT"
    assert raised.value.violations[0].field == "x.currency"


def test_currency_problem_rejects_non_strings() -> None:
    assert currency_problem(None) is not None
    assert currency_problem(840) is not None


@pytest.mark.parametrize("amount", [1, 2, 100, 10**12, MAX_AMOUNT])
def test_valid_amounts(amount: int) -> None:
    assert amount_problem(amount) is None
    assert validate_amount(amount, CURRENCIES["USD"], "transaction.amount") == amount


@pytest.mark.parametrize(
    ("amount", "fragment"),
    [
        (0, "greater than zero"),
        (-1, "greater than zero"),
        (-(2**63), "greater than zero"),
        (MAX_AMOUNT + 1, "at most"),
        (INT64_MAX, "at most"),
        (2**63, "at most"),
        (True, "integer"),
        (1.0, "integer"),
        ("100", "integer"),
        (None, "integer"),
    ],
)
def test_invalid_amounts_are_refused(amount: object, fragment: str) -> None:
    problem = amount_problem(amount)
    assert problem is not None and fragment in problem
    with pytest.raises(InvalidArgument) as raised:
        validate_amount(amount, CURRENCIES["JPY"], "payment.amount")  # type: ignore[arg-type]  # wrong types on purpose
    assert raised.value.violations[0].field == "payment.amount"


def test_too_large_amount_message_shows_major_units() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_amount(MAX_AMOUNT + 1, CURRENCIES["USD"], "transaction.amount")
    assert "10000000000000.00 USD" in raised.value.violations[0].description


def test_max_amount_is_exact_as_a_double_and_sums_fit_int64() -> None:
    assert float(MAX_AMOUNT) == MAX_AMOUNT and MAX_AMOUNT < 2**53
    assert 3 * MAX_AMOUNT < INT64_MAX


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (1234, "USD", "12.34 USD"),
        (5, "USD", "0.05 USD"),
        (0, "USD", "0.00 USD"),
        (-1234, "EUR", "-12.34 EUR"),
        (500, "JPY", "500 JPY"),
        (1500, "KWD", "1.500 KWD"),
        (-1, "BHD", "-0.001 BHD"),
        (12345, "CLF", "1.2345 CLF"),
        (42, "ABC", "42 ABC"),
    ],
)
def test_format_amount_renders_major_units_exactly(amount: int, currency: str, text: str) -> None:
    assert format_amount(amount, currency) == text
    known = CURRENCIES.get(currency)
    if known is not None:
        assert format_amount(amount, known) == text


@given(
    amount=st.integers(min_value=-MAX_AMOUNT, max_value=MAX_AMOUNT),
    code=st.sampled_from(sorted(CURRENCIES)),
)
def test_format_amount_round_trips(amount: int, code: str) -> None:
    currency = CURRENCIES[code]
    number, shown_code = format_amount(amount, currency).split(" ")
    assert shown_code == code
    assert Decimal(number) * currency.minor_per_major == amount
