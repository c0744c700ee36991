"""Payment rules: card, bank transfer and wallet validation, the payment state machine
and the money each operation moves."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import pytest

from pi.payments.domain import (
    ALLOWED_TRANSITIONS,
    FINGERPRINT_HEX_LENGTH,
    UNKNOWN_OUTCOME_TIMEOUT,
    AuthorizeRequest,
    BankTransferDetails,
    BankTransferFacts,
    BankTransferInput,
    CaptureMode,
    CardBrand,
    CardDetails,
    CardInput,
    FailureReason,
    Payment,
    PaymentChange,
    PaymentMethodType,
    PaymentRequest,
    PaymentStatus,
    ProcessorOutcome,
    ReconcileAction,
    RefundStatus,
    TransactionRef,
    WalletDetails,
    WalletFacts,
    WalletInput,
    WalletType,
    authorize_outcome,
    cancel,
    capture,
    card_brand,
    card_fingerprint,
    check_budget,
    check_ref_invariants,
    check_transition,
    close_transaction,
    luhn_check_digit,
    luhn_valid,
    normalize_card_number,
    reconcile_action,
    refund,
    start_payment,
    validate_bank_transfer,
    validate_card,
    validate_payment_request,
    validate_wallet,
)
from pi.platform.kernel.errors import FailedPrecondition, InvalidArgument, ValidationErrors
from pi.platform.kernel.money import MAX_AMOUNT
from pi.platform.ledger import MovementDelta, MovementKind

TODAY = date(2026, 6, 15)
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(seconds=5)
KEY = b"fingerprint-key-for-tests"
VISA = "4242424242424242"
AMEX = "378282246310005"
P = PaymentStatus
K = MovementKind


def violations_of(error: InvalidArgument) -> dict[str, str]:
    return {v.field: v.description for v in error.violations}


def card_request(
    number: str = VISA,
    *,
    amount: int = 0,
    mode: CaptureMode | None = CaptureMode.AUTOMATIC,
    cvc: str = "123",
) -> PaymentRequest:
    return validate_payment_request(
        transaction_id="txn_1",
        amount=amount,
        method=PaymentMethodType.CARD,
        capture_mode=mode,
        card=CardInput(number, 12, 2030, cvc),
        bank_transfer=None,
        wallet=None,
        today=TODAY,
    )


def make_ref(amount: int = 1000, **changes: object) -> TransactionRef:
    ref = TransactionRef("txn_1", "mer_1", amount, "USD")
    return dataclasses.replace(ref, **changes)  # type: ignore[arg-type]  # test overrides


def started(
    ref: TransactionRef | None = None,
    *,
    amount: int = 0,
    mode: CaptureMode = CaptureMode.MANUAL,
    payment_id: str = "pay_1",
) -> PaymentChange:
    return start_payment(
        ref or make_ref(),
        card_request(amount=amount, mode=mode),
        payment_id=payment_id,
        merchant_id="mer_1",
        fingerprint_key=KEY,
        now=NOW,
    )


def in_status(status: PaymentStatus, amount: int = 1000) -> PaymentChange:
    """A payment of `amount` on a ref of 1000 brought to `status` through the rules."""
    begun = started(amount=amount)
    if status is P.PROCESSING:
        return begun
    if status is P.FAILED:
        return authorize_outcome(
            begun.ref,
            begun.payment,
            ProcessorOutcome.DECLINED,
            failure_reason=FailureReason.CARD_DECLINED,
            now=NOW,
        )
    held = authorize_outcome(begun.ref, begun.payment, ProcessorOutcome.APPROVED, now=NOW)
    if status is P.REQUIRES_CAPTURE:
        return held
    if status is P.SUCCEEDED:
        return capture(held.ref, held.payment, None, now=NOW)
    return cancel(held.ref, held.payment, now=NOW)


# --- card numbers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("4242424242424242", True),
        ("4000000000000002", True),
        ("4000000000009995", True),
        ("4000000000000119", True),
        ("5555555555554444", True),
        ("2223003122003222", True),
        ("378282246310005", True),
        ("6011111111111117", True),
        ("79927398713", True),
        ("4242424242424241", False),
        ("79927398710", False),
        ("", False),
        ("4242 4242 4242 4242", False),
        ("42424242424242a2", False),
        ("\uff14242424242424242", False),
    ],
)
def test_luhn(number: str, valid: bool) -> None:
    assert luhn_valid(number) is valid


def test_luhn_check_digit_completes_a_number() -> None:
    assert luhn_check_digit("424242424242424") == "2"
    assert luhn_check_digit("7992739871") == "3"
    with pytest.raises(ValueError):
        luhn_check_digit("12a")


def test_normalize_card_number_strips_spaces_and_dashes_only() -> None:
    assert normalize_card_number(" 4242-4242 4242-4242 ") == VISA
    assert normalize_card_number("4242.4242") == "4242.4242"


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("4242424242424242", CardBrand.VISA),
        ("4000056655665556", CardBrand.VISA),
        ("5105105105105100", CardBrand.MASTERCARD),
        ("5555555555554444", CardBrand.MASTERCARD),
        ("2221000000000009", CardBrand.MASTERCARD),
        ("2720999999999996", CardBrand.MASTERCARD),
        ("2220999999999999", CardBrand.OTHER),
        ("2721000000000000", CardBrand.OTHER),
        ("5000000000000000", CardBrand.OTHER),
        ("5600000000000000", CardBrand.OTHER),
        ("340000000000009", CardBrand.AMEX),
        ("378282246310005", CardBrand.AMEX),
        ("350000000000000", CardBrand.OTHER),
        ("6011111111111117", CardBrand.DISCOVER),
        ("6500000000000002", CardBrand.DISCOVER),
        ("6440000000000000", CardBrand.DISCOVER),
        ("6490000000000000", CardBrand.DISCOVER),
        ("6430000000000000", CardBrand.OTHER),
        ("6012000000000000", CardBrand.OTHER),
        ("3530111333300000", CardBrand.OTHER),
        ("6200000000000005", CardBrand.OTHER),
    ],
)
def test_card_brand_from_leading_digits(number: str, brand: CardBrand) -> None:
    assert card_brand(number) is brand


def test_fingerprint_is_keyed_stable_and_short() -> None:
    one = card_fingerprint(VISA, KEY, "mer_a")
    assert one == card_fingerprint(VISA, KEY, "mer_a")
    assert one != card_fingerprint(VISA, b"another key", "mer_a")
    assert one != card_fingerprint("4000000000000002", KEY, "mer_a")
    assert len(one) == FINGERPRINT_HEX_LENGTH
    assert int(one, 16) >= 0
    assert VISA not in one
    with pytest.raises(ValueError):
        card_fingerprint(VISA, b"", "mer_a")


def test_the_same_card_has_unrelated_fingerprints_at_two_merchants() -> None:
    """Finding 7: a fingerprint cannot link a cardholder across merchants."""
    at_a, at_b = card_fingerprint(VISA, KEY, "mer_a"), card_fingerprint(VISA, KEY, "mer_b")
    assert at_a != at_b
    with pytest.raises(ValueError):
        card_fingerprint(VISA, KEY, "")


# --- card validation -------------------------------------------------------------------


def check_card(card: CardInput, today: date = TODAY) -> tuple[CardDetails | None, dict[str, str]]:
    errors = ValidationErrors()
    details = validate_card(card, today=today, errors=errors)
    if not errors:
        return details, {}
    with pytest.raises(InvalidArgument) as raised:
        errors.raise_if_any()
    return details, violations_of(raised.value)


def test_a_valid_card_is_normalised_with_its_brand() -> None:
    details, problems = check_card(CardInput("4242 4242-4242 4242", 6, 2026, "123"))
    assert problems == {}
    assert details is not None
    assert (details.number, details.brand, details.last4) == (VISA, CardBrand.VISA, "4242")
    facts = details.facts(KEY, "mer_1")
    assert (facts.brand, facts.last4, facts.exp_month, facts.exp_year) == (
        CardBrand.VISA,
        "4242",
        6,
        2026,
    )
    assert facts.fingerprint == card_fingerprint(VISA, KEY, "mer_1")


@pytest.mark.parametrize(
    ("card", "field", "fragment"),
    [
        (CardInput("", 1, 2030, "123"), "payment.card.number", "is required"),
        (CardInput(" - ", 1, 2030, "123"), "payment.card.number", "is required"),
        (CardInput("4242abcd42424242", 1, 2030, "123"), "payment.card.number", "only digits"),
        (CardInput("\uff14" * 16, 1, 2030, "123"), "payment.card.number", "only digits"),
        (CardInput("42424242426", 1, 2030, "123"), "payment.card.number", "12 to 19"),
        (CardInput("4" * 20, 1, 2030, "123"), "payment.card.number", "12 to 19"),
        (CardInput("4242424242424241", 1, 2030, "123"), "payment.card.number", "Luhn"),
        (CardInput(VISA, 0, 2030, "123"), "payment.card.exp_month", "1 to 12"),
        (CardInput(VISA, 13, 2030, "123"), "payment.card.exp_month", "1 to 12"),
        (CardInput(VISA, 5, 2026, "123"), "payment.card.exp_month", "expired"),
        (CardInput(VISA, 12, 2025, "123"), "payment.card.exp_year", "expired"),
        (CardInput(VISA, 12, 30, "123"), "payment.card.exp_year", "four-digit"),
        (CardInput(VISA, 12, 10000, "123"), "payment.card.exp_year", "four-digit"),
        (CardInput(VISA, 12, 2077, "123"), "payment.card.exp_year", "50 years"),
        (CardInput(VISA, 12, 2030, ""), "payment.card.cvc", "is required"),
        (CardInput(VISA, 12, 2030, "12"), "payment.card.cvc", "3 digits"),
        (CardInput(VISA, 12, 2030, "1234"), "payment.card.cvc", "3 digits"),
        (CardInput(VISA, 12, 2030, "12a"), "payment.card.cvc", "3 digits"),
        (CardInput(AMEX, 12, 2030, "123"), "payment.card.cvc", "4 digits"),
        (CardInput("4242424242424241", 12, 2030, "12"), "payment.card.cvc", "3 or 4 digits"),
    ],
)
def test_card_violations(card: CardInput, field: str, fragment: str) -> None:
    details, problems = check_card(card)
    assert details is None
    assert field in problems, problems
    assert fragment in problems[field]


@pytest.mark.parametrize(
    "card",
    [
        CardInput(VISA, 6, 2026, "123"),  # valid through the end of this month
        CardInput(VISA, 1, 2076, "123"),  # 50 years ahead
        CardInput(AMEX, 1, 2030, "1234"),
        CardInput("4000000000000002", 1, 2030, "000"),
        CardInput("6011 1111 1111 1117", 1, 2030, "999"),
        CardInput("5555-5555-5555-4444", 1, 2030, "123"),
        CardInput("000000000000", 1, 2030, "123"),  # 12 digits, brand OTHER
        CardInput("4" * 18 + luhn_check_digit("4" * 18), 1, 2030, "123"),  # 19 digits
    ],
)
def test_valid_cards(card: CardInput) -> None:
    details, problems = check_card(card)
    assert problems == {} and details is not None


def test_every_card_problem_is_reported_at_once() -> None:
    _, problems = check_card(CardInput("1234", 0, 99, "x"))
    assert set(problems) == {
        "payment.card.number",
        "payment.card.exp_month",
        "payment.card.exp_year",
        "payment.card.cvc",
    }


def test_secrets_never_show_in_repr() -> None:
    card = CardInput("4242424242424242", 12, 2030, "987")
    details, _ = check_card(card)
    bank = BankTransferInput("Jane Doe", "DE89370400440532013000")
    wallet = WalletInput(WalletType.APPLE_PAY, "tok_secret_wallet_token")
    request = AuthorizeRequest("pay_1", "mer_1", 100, "USD", True, details)  # type: ignore[arg-type]  # validated above
    for value in (
        card,
        details,
        bank,
        BankTransferDetails("Jane Doe", "DE89370400440532013000"),
        wallet,
        WalletDetails(WalletType.APPLE_PAY, "tok_secret_wallet_token"),
        request,
        card_request(),
    ):
        text = repr(value)
        for secret in ("4242424242424242", "987", "DE89370400440532013000", "tok_secret"):
            assert secret not in text, text


# --- bank transfers and wallets --------------------------------------------------------


@pytest.mark.parametrize(
    ("bank", "field", "fragment"),
    [
        (BankTransferInput("", "12345678"), "account_holder_name", "is required"),
        (BankTransferInput("   ", "12345678"), "account_holder_name", "is required"),
        (BankTransferInput("x" * 201, "12345678"), "account_holder_name", "at most 200"),
        (BankTransferInput("Jane\x00Doe", "12345678"), "account_holder_name", "control"),
        (BankTransferInput("Jane", ""), "account_number", "is required"),
        (BankTransferInput("Jane", "123"), "account_number", "4 to 34"),
        (BankTransferInput("Jane", "1" * 35), "account_number", "4 to 34"),
        (BankTransferInput("Jane", "1234-5678"), "account_number", "4 to 34"),
        (BankTransferInput("Jane", "\u0661\u0662\u0663\u0664"), "account_number", "4 to 34"),
        (BankTransferInput("Jane", "DE89370400440532013001"), "account_number", "IBAN"),
    ],
)
def test_bank_transfer_violations(bank: BankTransferInput, field: str, fragment: str) -> None:
    errors = ValidationErrors()
    assert validate_bank_transfer(bank, errors=errors) is None
    with pytest.raises(InvalidArgument) as raised:
        errors.raise_if_any()
    problems = violations_of(raised.value)
    assert fragment in problems[f"payment.bank_transfer.{field}"]


@pytest.mark.parametrize(
    ("number", "normalised"),
    [
        ("DE89 3704 0044 0532 0130 00", "DE89370400440532013000"),
        ("gb82 west 1234 5698 7654 32", "GB82WEST12345698765432"),
        ("12345678", "12345678"),
        ("000123456789", "000123456789"),
    ],
)
def test_valid_bank_transfers_are_normalised(number: str, normalised: str) -> None:
    errors = ValidationErrors()
    details = validate_bank_transfer(BankTransferInput("  Jane Doe ", number), errors=errors)
    assert not errors and details is not None
    assert details.account_number == normalised
    assert details.account_holder_name == "Jane Doe"
    assert details.facts() == BankTransferFacts("Jane Doe", normalised[-4:])


@pytest.mark.parametrize(
    ("wallet", "field", "fragment"),
    [
        (WalletInput(None, "tok"), "type", "is required"),
        (WalletInput(WalletType.PAYPAL, ""), "token", "is required"),
        (WalletInput(WalletType.PAYPAL, "   "), "token", "is required"),
        (WalletInput(WalletType.PAYPAL, "t" * 8193), "token", "at most 8192"),
        (WalletInput(WalletType.PAYPAL, "tok\x00"), "token", "control"),
    ],
)
def test_wallet_violations(wallet: WalletInput, field: str, fragment: str) -> None:
    errors = ValidationErrors()
    assert validate_wallet(wallet, errors=errors) is None
    with pytest.raises(InvalidArgument) as raised:
        errors.raise_if_any()
    assert fragment in violations_of(raised.value)[f"payment.wallet.{field}"]


def test_valid_wallet_keeps_only_its_type() -> None:
    errors = ValidationErrors()
    details = validate_wallet(WalletInput(WalletType.GOOGLE_PAY, '{"token": "x"}'), errors=errors)
    assert not errors and details is not None
    assert details.facts() == WalletFacts(WalletType.GOOGLE_PAY)


# --- the create request ----------------------------------------------------------------


def request_problems(**overrides: object) -> dict[str, str]:
    args: dict[str, object] = {
        "transaction_id": "txn_1",
        "amount": 0,
        "method": PaymentMethodType.CARD,
        "capture_mode": None,
        "card": CardInput(VISA, 12, 2030, "123"),
        "bank_transfer": None,
        "wallet": None,
        "today": TODAY,
    }
    args.update(overrides)
    with pytest.raises(InvalidArgument) as raised:
        validate_payment_request(**args)  # type: ignore[arg-type]  # assembled above
    return violations_of(raised.value)


def test_payment_request_defaults() -> None:
    request = card_request(mode=None)
    assert request.amount is None
    assert request.capture_mode is CaptureMode.AUTOMATIC
    assert request.method is PaymentMethodType.CARD
    assert isinstance(request.details, CardDetails)
    assert card_request(amount=250).amount == 250


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"transaction_id": ""}, "payment.transaction_id", "is required"),
        ({"amount": -5}, "payment.amount", "greater than zero"),
        ({"amount": MAX_AMOUNT + 1}, "payment.amount", "at most"),
        ({"method": None}, "payment.method", "is required"),
        ({"card": None}, "payment.card", "is required when method is CARD"),
        (
            {"wallet": WalletInput(WalletType.PAYPAL, "t")},
            "payment.wallet",
            "must not be set when method is CARD",
        ),
        (
            {"method": PaymentMethodType.BANK_TRANSFER, "card": None},
            "payment.bank_transfer",
            "is required",
        ),
        (
            {
                "method": PaymentMethodType.BANK_TRANSFER,
                "card": None,
                "bank_transfer": BankTransferInput("Jane", "12345678"),
                "capture_mode": CaptureMode.MANUAL,
            },
            "payment.capture_mode",
            "AUTOMATIC",
        ),
        ({"method": PaymentMethodType.WALLET, "card": None}, "payment.wallet", "is required"),
        ({"card": CardInput(VISA, 12, 2030, "1")}, "payment.card.cvc", "3 digits"),
        (
            {"method": PaymentMethodType.WALLET, "card": None, "wallet": WalletInput(None, "t")},
            "payment.wallet.type",
            "is required",
        ),
        (
            {
                "method": PaymentMethodType.BANK_TRANSFER,
                "card": None,
                "bank_transfer": BankTransferInput("", "1"),
            },
            "payment.bank_transfer.account_number",
            "4 to 34",
        ),
    ],
)
def test_payment_request_violations(
    overrides: dict[str, object], field: str, fragment: str
) -> None:
    problems = request_problems(**overrides)
    assert field in problems, problems
    assert fragment in problems[field]


def test_wallets_may_be_captured_manually() -> None:
    request = validate_payment_request(
        transaction_id="txn_1",
        amount=100,
        method=PaymentMethodType.WALLET,
        capture_mode=CaptureMode.MANUAL,
        card=None,
        bank_transfer=None,
        wallet=WalletInput(WalletType.APPLE_PAY, "tok"),
        today=TODAY,
    )
    assert request.capture_mode is CaptureMode.MANUAL


def test_field_prefix_is_configurable() -> None:
    problems = request_problems(field_prefix="p", transaction_id="")
    assert "p.transaction_id" in problems


# --- budget and start_payment ----------------------------------------------------------


def test_start_payment_holds_its_amount_and_keeps_only_card_facts() -> None:
    change = started(amount=400)
    payment = change.payment
    assert payment.status is P.PROCESSING
    assert (payment.amount, payment.currency, payment.transaction_id) == (400, "USD", "txn_1")
    assert payment.card is not None and payment.card.last4 == "4242"
    assert payment.bank_transfer is None and payment.wallet is None
    assert payment.failure_reason is None and payment.processor_reference is None
    assert change.ref.held_amount == 400 and change.ref.remaining == 600
    assert change.movements == ()
    assert payment.held_amount == 400 and payment.authorized_amount == 0


def test_start_payment_without_amount_takes_what_remains() -> None:
    change = started(make_ref(held_amount=300, captured_amount=200))
    assert change.payment.amount == 500
    assert change.ref.remaining == 0


def test_start_payment_records_bank_and_wallet_facts() -> None:
    bank = validate_payment_request(
        transaction_id="txn_1",
        amount=0,
        method=PaymentMethodType.BANK_TRANSFER,
        capture_mode=None,
        card=None,
        bank_transfer=BankTransferInput("Jane", "DE89370400440532013000"),
        wallet=None,
        today=TODAY,
    )
    change = start_payment(
        make_ref(), bank, payment_id="p", merchant_id="m", fingerprint_key=KEY, now=NOW
    )
    assert change.payment.bank_transfer == BankTransferFacts("Jane", "3000")
    assert change.payment.card is None and change.payment.wallet is None


@pytest.mark.parametrize(
    ("ref", "amount", "reason", "remaining"),
    [
        (make_ref(closed=True), None, "TRANSACTION_CLOSED", None),
        (make_ref(closed=True), 1, "TRANSACTION_CLOSED", None),
        (make_ref(), 1001, "AMOUNT_EXCEEDS_REMAINING", "1000"),
        (make_ref(held_amount=600), 401, "AMOUNT_EXCEEDS_REMAINING", "400"),
        (
            make_ref(captured_amount=600, refunded_amount=600),
            401,
            "AMOUNT_EXCEEDS_REMAINING",
            "400",
        ),
        (make_ref(held_amount=500, captured_amount=500), None, "AMOUNT_EXCEEDS_REMAINING", "0"),
    ],
)
def test_budget_check(
    ref: TransactionRef, amount: int | None, reason: str, remaining: str | None
) -> None:
    with pytest.raises(FailedPrecondition) as raised:
        check_budget(ref, amount)
    assert raised.value.reason == reason
    if remaining is not None:
        assert raised.value.metadata["remaining"] == remaining


def test_budget_allows_exactly_what_remains() -> None:
    assert check_budget(make_ref(held_amount=600), 400) == 400
    assert check_budget(make_ref(held_amount=600), None) == 400


# --- authorize_outcome -----------------------------------------------------------------


def test_approved_manual_capture_waits_for_capture() -> None:
    begun = started(mode=CaptureMode.MANUAL)
    change = authorize_outcome(
        begun.ref, begun.payment, ProcessorOutcome.APPROVED, processor_reference="sbx_1", now=LATER
    )
    assert change.payment.status is P.REQUIRES_CAPTURE
    assert change.payment.processor_reference == "sbx_1"
    assert change.payment.update_time == LATER
    assert change.movements == (MovementDelta(K.AUTHORIZATION, "pay_1", authorized_delta=1000),)
    assert change.ref == begun.ref


def test_approved_automatic_capture_succeeds_at_once() -> None:
    begun = started(mode=CaptureMode.AUTOMATIC)
    change = authorize_outcome(begun.ref, begun.payment, ProcessorOutcome.APPROVED, now=NOW)
    assert change.payment.status is P.SUCCEEDED
    assert change.payment.captured_amount == 1000
    assert change.movements == (
        MovementDelta(K.AUTHORIZATION, "pay_1", authorized_delta=1000),
        MovementDelta(K.CAPTURE, "pay_1", captured_delta=1000),
    )
    assert (change.ref.held_amount, change.ref.captured_amount) == (0, 1000)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (FailureReason.CARD_DECLINED, FailureReason.CARD_DECLINED),
        (FailureReason.INSUFFICIENT_FUNDS, FailureReason.INSUFFICIENT_FUNDS),
        (FailureReason.PROCESSOR_UNAVAILABLE, FailureReason.PROCESSOR_UNAVAILABLE),
        (None, FailureReason.PROCESSOR_DECLINED),
    ],
)
def test_declined_fails_and_releases_the_hold(
    reason: FailureReason | None, expected: FailureReason
) -> None:
    begun = started(amount=300)
    change = authorize_outcome(
        begun.ref, begun.payment, ProcessorOutcome.DECLINED, failure_reason=reason, now=NOW
    )
    assert change.payment.status is P.FAILED
    assert change.payment.failure_reason is expected
    assert change.movements == (MovementDelta(K.FAILURE, "pay_1"),)
    assert change.ref.held_amount == 0 and change.ref.remaining == 1000


@pytest.mark.parametrize("outcome", [ProcessorOutcome.PENDING, ProcessorOutcome.TIMEOUT])
def test_pending_or_timeout_leaves_the_payment_processing(outcome: ProcessorOutcome) -> None:
    begun = started()
    same = authorize_outcome(begun.ref, begun.payment, outcome, now=LATER)
    assert same.payment == begun.payment and same.ref == begun.ref and same.movements == ()
    noted = authorize_outcome(
        begun.ref, begun.payment, outcome, processor_reference="sbx_9", now=LATER
    )
    assert noted.payment.status is P.PROCESSING
    assert noted.payment.processor_reference == "sbx_9"
    assert noted.movements == ()


@pytest.mark.parametrize("status", [P.REQUIRES_CAPTURE, P.SUCCEEDED, P.FAILED, P.CANCELLED])
def test_an_outcome_settles_a_payment_only_once(status: PaymentStatus) -> None:
    state = in_status(status)
    with pytest.raises(FailedPrecondition) as raised:
        authorize_outcome(state.ref, state.payment, ProcessorOutcome.APPROVED, now=NOW)
    assert raised.value.reason == "PAYMENT_NOT_PROCESSING"
    assert raised.value.metadata == {"status": status.value}


# --- capture -----------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [None, 0])
def test_capture_everything(amount: int | None) -> None:
    held = in_status(P.REQUIRES_CAPTURE)
    change = capture(held.ref, held.payment, amount, now=LATER)
    assert change.payment.status is P.SUCCEEDED
    assert change.payment.captured_amount == 1000
    assert change.movements == (MovementDelta(K.CAPTURE, "pay_1", 0, 1000, 0),)
    assert (change.ref.held_amount, change.ref.captured_amount) == (0, 1000)


def test_partial_capture_releases_the_rest() -> None:
    held = in_status(P.REQUIRES_CAPTURE, amount=800)
    change = capture(held.ref, held.payment, 300, now=LATER)
    assert change.payment.captured_amount == 300
    assert change.payment.amount == 800
    assert change.movements == (MovementDelta(K.CAPTURE, "pay_1", -500, 300, 0),)
    assert (change.ref.held_amount, change.ref.captured_amount, change.ref.remaining) == (
        0,
        300,
        700,
    )


def test_capture_more_than_authorized_is_refused() -> None:
    held = in_status(P.REQUIRES_CAPTURE, amount=800)
    with pytest.raises(FailedPrecondition) as raised:
        capture(held.ref, held.payment, 801, now=NOW)
    assert raised.value.reason == "AMOUNT_EXCEEDS_AUTHORIZED"
    assert raised.value.metadata == {"authorized": "800"}


@pytest.mark.parametrize("amount", [-1, MAX_AMOUNT + 1])
def test_capture_amount_must_be_valid(amount: int) -> None:
    held = in_status(P.REQUIRES_CAPTURE)
    with pytest.raises(InvalidArgument) as raised:
        capture(held.ref, held.payment, amount, now=NOW)
    assert raised.value.violations[0].field == "amount"


@pytest.mark.parametrize("status", [P.PROCESSING, P.SUCCEEDED, P.FAILED, P.CANCELLED])
def test_only_requires_capture_can_be_captured(status: PaymentStatus) -> None:
    state = in_status(status)
    with pytest.raises(FailedPrecondition) as raised:
        capture(state.ref, state.payment, None, now=NOW)
    assert raised.value.reason == "PAYMENT_NOT_CAPTURABLE"
    assert raised.value.metadata == {"status": status.value}


def test_capture_on_a_closed_transaction_is_refused() -> None:
    held = in_status(P.REQUIRES_CAPTURE)
    with pytest.raises(FailedPrecondition) as raised:
        capture(dataclasses.replace(held.ref, closed=True), held.payment, None, now=NOW)
    assert raised.value.reason == "TRANSACTION_CLOSED"


# --- cancel ------------------------------------------------------------------------------


def test_cancel_voids_the_authorization() -> None:
    held = in_status(P.REQUIRES_CAPTURE, amount=700)
    change = cancel(held.ref, held.payment, now=LATER)
    assert change.payment.status is P.CANCELLED
    assert change.payment.update_time == LATER
    assert change.movements == (MovementDelta(K.VOID, "pay_1", authorized_delta=-700),)
    assert change.ref.held_amount == 0


@pytest.mark.parametrize("status", [P.PROCESSING, P.SUCCEEDED, P.FAILED, P.CANCELLED])
def test_only_requires_capture_can_be_cancelled(status: PaymentStatus) -> None:
    state = in_status(status)
    with pytest.raises(FailedPrecondition) as raised:
        cancel(state.ref, state.payment, now=NOW)
    assert raised.value.reason == "PAYMENT_NOT_CANCELLABLE"
    assert raised.value.metadata == {"status": status.value}


# --- refund ------------------------------------------------------------------------------


def test_partial_refunds_repeat_until_everything_is_refunded() -> None:
    state = in_status(P.SUCCEEDED)
    first = refund(state.ref, state.payment, 300, refund_id="ref_1", reason="damaged", now=LATER)
    assert first.payment.refunded_amount == 300
    assert first.payment.refundable_amount == 700
    assert first.payment.status is P.SUCCEEDED
    assert first.movements == (MovementDelta(K.REFUND, "pay_1", refunded_delta=300),)
    assert first.ref.refunded_amount == 300
    assert first.refund is not None
    assert (first.refund.id, first.refund.amount, first.refund.reason) == ("ref_1", 300, "damaged")
    assert (first.refund.currency, first.refund.status) == ("USD", RefundStatus.SUCCEEDED)
    rest = refund(first.ref, first.payment, None, refund_id="ref_2", now=LATER)
    assert rest.refund is not None and rest.refund.amount == 700
    assert rest.payment.refunded_amount == rest.payment.captured_amount == 1000
    assert rest.ref.remaining == 0  # refunds do not give budget back
    with pytest.raises(FailedPrecondition) as raised:
        refund(rest.ref, rest.payment, None, refund_id="ref_3", now=LATER)
    assert raised.value.reason == "PAYMENT_NOT_REFUNDABLE"
    with pytest.raises(FailedPrecondition) as raised:
        refund(rest.ref, rest.payment, 1, refund_id="ref_3", now=LATER)
    assert raised.value.reason == "PAYMENT_NOT_REFUNDABLE"


def test_refund_of_a_partial_capture_is_limited_to_what_was_captured() -> None:
    held = in_status(P.REQUIRES_CAPTURE)
    captured = capture(held.ref, held.payment, 250, now=NOW)
    with pytest.raises(FailedPrecondition) as raised:
        refund(captured.ref, captured.payment, 251, refund_id="r", now=NOW)
    assert raised.value.reason == "AMOUNT_EXCEEDS_REFUNDABLE"
    assert raised.value.metadata == {"refundable": "250"}
    whole = refund(captured.ref, captured.payment, 0, refund_id="r", now=NOW)
    assert whole.refund is not None and whole.refund.amount == 250


@pytest.mark.parametrize("status", [P.PROCESSING, P.REQUIRES_CAPTURE, P.FAILED, P.CANCELLED])
def test_only_succeeded_payments_can_be_refunded(status: PaymentStatus) -> None:
    state = in_status(status)
    with pytest.raises(FailedPrecondition) as raised:
        refund(state.ref, state.payment, None, refund_id="r", now=NOW)
    assert raised.value.reason == "PAYMENT_NOT_REFUNDABLE"
    assert raised.value.metadata == {"status": status.value}


@pytest.mark.parametrize(
    ("amount", "reason", "fields"),
    [
        (-1, "", {"amount"}),
        (MAX_AMOUNT + 1, "", {"amount"}),
        (10, "x" * 501, {"reason"}),
        (10, "nul\x00", {"reason"}),
        (-1, "x" * 501, {"amount", "reason"}),
    ],
)
def test_refund_input_violations(amount: int, reason: str, fields: set[str]) -> None:
    state = in_status(P.SUCCEEDED)
    with pytest.raises(InvalidArgument) as raised:
        refund(state.ref, state.payment, amount, refund_id="r", reason=reason, now=NOW)
    assert set(violations_of(raised.value)) == fields


def test_refund_reason_may_be_multiline_and_500_characters() -> None:
    state = in_status(P.SUCCEEDED)
    change = refund(state.ref, state.payment, 1, refund_id="r", reason="a\n" * 250, now=NOW)
    assert change.refund is not None


# --- close_transaction ---------------------------------------------------------------------


def test_close_voids_authorizations_then_cancels() -> None:
    ref = make_ref(1000)
    one = started(ref, amount=300, payment_id="pay_1", mode=CaptureMode.MANUAL)
    two = started(one.ref, amount=200, payment_id="pay_2", mode=CaptureMode.MANUAL)
    three = started(two.ref, amount=100, payment_id="pay_3", mode=CaptureMode.MANUAL)
    ref = three.ref
    a1 = authorize_outcome(ref, one.payment, ProcessorOutcome.APPROVED, now=NOW)
    a2 = authorize_outcome(a1.ref, two.payment, ProcessorOutcome.DECLINED, now=NOW)
    a3 = authorize_outcome(a2.ref, three.payment, ProcessorOutcome.APPROVED, now=NOW)
    closed = close_transaction(a3.ref, [a1.payment, a2.payment, a3.payment], now=LATER)
    assert not closed.already_closed
    assert closed.ref.closed and closed.ref.held_amount == 0
    assert [p.id for p in closed.voided] == ["pay_1", "pay_3"]
    assert all(p.status is P.CANCELLED for p in closed.voided)
    assert closed.movements == (
        MovementDelta(K.VOID, "pay_1", authorized_delta=-300),
        MovementDelta(K.VOID, "pay_3", authorized_delta=-100),
        MovementDelta(K.CANCELLATION, None),
    )
    with pytest.raises(FailedPrecondition) as raised:
        check_budget(closed.ref, 1)
    assert raised.value.reason == "TRANSACTION_CLOSED"
    again = close_transaction(closed.ref, list(closed.voided), now=LATER)
    assert again.already_closed and again.movements == () and again.voided == ()
    assert again.ref == closed.ref


def test_close_of_an_untouched_transaction_only_cancels() -> None:
    closed = close_transaction(make_ref(), [], now=NOW)
    assert closed.movements == (MovementDelta(K.CANCELLATION, None),)


def test_close_is_refused_once_money_was_captured() -> None:
    state = in_status(P.SUCCEEDED, amount=10)
    with pytest.raises(FailedPrecondition) as raised:
        close_transaction(state.ref, [state.payment], now=NOW)
    assert raised.value.reason == "TRANSACTION_CAPTURED"


def test_close_is_refused_while_a_payment_waits_for_the_processor() -> None:
    begun = started()
    with pytest.raises(FailedPrecondition) as raised:
        close_transaction(begun.ref, [begun.payment], now=NOW)
    assert raised.value.reason == "PAYMENT_PROCESSING"
    assert raised.value.metadata == {"payment_id": "pay_1"}


# --- state machine and invariants --------------------------------------------------------


@pytest.mark.parametrize(("old", "new"), [(o, n) for o in P for n in P])
def test_payment_transition_table(old: PaymentStatus, new: PaymentStatus) -> None:
    allowed = {
        (P.PROCESSING, P.REQUIRES_CAPTURE),
        (P.PROCESSING, P.SUCCEEDED),
        (P.PROCESSING, P.FAILED),
        (P.REQUIRES_CAPTURE, P.CAPTURING),
        (P.REQUIRES_CAPTURE, P.CANCELLING),
        (P.CAPTURING, P.SUCCEEDED),
        (P.CAPTURING, P.REQUIRES_CAPTURE),
        (P.CANCELLING, P.CANCELLED),
        (P.CANCELLING, P.REQUIRES_CAPTURE),
        (P.SUCCEEDED, P.SUCCEEDED),
    }
    assert ((old, new) in allowed) == (new in ALLOWED_TRANSITIONS[old])
    if (old, new) in allowed:
        check_transition(old, new)
    else:
        with pytest.raises(FailedPrecondition) as raised:
            check_transition(old, new)
        assert raised.value.reason == "INVALID_STATUS_TRANSITION"


@pytest.mark.parametrize(
    ("changes", "invariant"),
    [
        ({"held_amount": -1}, "0 <= held"),
        ({"captured_amount": -1}, "0 <= captured"),
        ({"refunded_amount": -1}, "0 <= refunded <= captured"),
        ({"captured_amount": 5, "refunded_amount": 6}, "0 <= refunded <= captured"),
        ({"held_amount": 600, "captured_amount": 401}, "held + captured <= amount"),
    ],
)
def test_ref_invariants(changes: dict[str, int], invariant: str) -> None:
    check_ref_invariants(make_ref(held_amount=600, captured_amount=400, refunded_amount=400))
    with pytest.raises(FailedPrecondition) as raised:
        check_ref_invariants(make_ref(**changes))
    assert raised.value.reason == "LEDGER_INVARIANT_VIOLATED"
    assert raised.value.metadata["invariant"] == invariant


def test_a_corrupt_payment_row_is_caught_before_it_is_written() -> None:
    state = in_status(P.SUCCEEDED, amount=100)
    corrupt: Payment = dataclasses.replace(state.payment, refunded_amount=100, captured_amount=50)
    with pytest.raises(FailedPrecondition) as raised:
        refund(state.ref, corrupt, None, refund_id="r", now=NOW)
    assert raised.value.reason in {"PAYMENT_NOT_REFUNDABLE", "LEDGER_INVARIANT_VIOLATED"}
    over = dataclasses.replace(state.ref, captured_amount=100, refunded_amount=0, held_amount=950)
    with pytest.raises(FailedPrecondition) as raised:
        refund(over, state.payment, 1, refund_id="r", now=NOW)
    assert raised.value.reason == "LEDGER_INVARIANT_VIOLATED"


# --- reconciler --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "age", "action"),
    [
        (ProcessorOutcome.APPROVED, timedelta(0), ReconcileAction.SETTLE),
        (ProcessorOutcome.DECLINED, timedelta(0), ReconcileAction.SETTLE),
        (ProcessorOutcome.APPROVED, timedelta(days=3), ReconcileAction.SETTLE),
        (ProcessorOutcome.PENDING, timedelta(0), ReconcileAction.WAIT),
        (ProcessorOutcome.PENDING, timedelta(days=3), ReconcileAction.WAIT),
        (ProcessorOutcome.TIMEOUT, timedelta(0), ReconcileAction.WAIT),
        (
            ProcessorOutcome.TIMEOUT,
            UNKNOWN_OUTCOME_TIMEOUT - timedelta(seconds=1),
            ReconcileAction.WAIT,
        ),
        (ProcessorOutcome.TIMEOUT, UNKNOWN_OUTCOME_TIMEOUT, ReconcileAction.VOID_AND_FAIL),
        (ProcessorOutcome.TIMEOUT, timedelta(hours=2), ReconcileAction.VOID_AND_FAIL),
    ],
)
def test_reconcile_action(
    outcome: ProcessorOutcome, age: timedelta, action: ReconcileAction
) -> None:
    payment = started().payment
    assert reconcile_action(payment, outcome, now=payment.create_time + age) is action


def test_reconcile_give_up_delay_is_configurable() -> None:
    payment = started().payment
    later = payment.create_time + timedelta(minutes=2)
    assert (
        reconcile_action(
            payment, ProcessorOutcome.TIMEOUT, now=later, give_up_after=timedelta(minutes=1)
        )
        is ReconcileAction.VOID_AND_FAIL
    )
