"""The sandbox connector: deterministic outcomes by test card, async settlement, and the
reconciler rule applied to what it answers."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest

from pi.payments.adapters.processor import TEST_CARDS, SandboxConnector
from pi.payments.app.ports import Connector
from pi.payments.domain import (
    AuthorizeRequest,
    BankTransferInput,
    CaptureMode,
    CaptureRequest,
    CardInput,
    ConnectorResult,
    FailureReason,
    PaymentMethodDetails,
    PaymentMethodType,
    PaymentStatus,
    ProcessorOutcome,
    ReconcileAction,
    RefundRequest,
    TransactionRef,
    VoidRequest,
    WalletInput,
    WalletType,
    authorize_outcome,
    reconcile_action,
    start_payment,
    validate_payment_request,
)

TODAY = date(2026, 6, 15)
T0 = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def details_for(
    method: PaymentMethodType = PaymentMethodType.CARD, number: str = "4242424242424242"
) -> PaymentMethodDetails:
    cvc = "1234" if number.startswith(("34", "37")) else "123"
    request = validate_payment_request(
        transaction_id="txn_1",
        amount=0,
        method=method,
        capture_mode=None,
        card=CardInput(number, 12, 2030, cvc) if method is PaymentMethodType.CARD else None,
        bank_transfer=(
            BankTransferInput("Jane Doe", "DE89370400440532013000")
            if method is PaymentMethodType.BANK_TRANSFER
            else None
        ),
        wallet=(
            WalletInput(WalletType.APPLE_PAY, "tok_wallet_secret")
            if method is PaymentMethodType.WALLET
            else None
        ),
        today=TODAY,
    )
    return request.details


def authorize(
    payment_id: str = "pay_1",
    *,
    number: str = "4242424242424242",
    method: PaymentMethodType = PaymentMethodType.CARD,
    amount: int = 1000,
    capture: bool = False,
) -> AuthorizeRequest:
    return AuthorizeRequest(
        payment_id=payment_id,
        merchant_id="mer_1",
        amount=amount,
        currency="USD",
        capture=capture,
        details=details_for(method, number),
    )


def sandbox(**kwargs: object) -> SandboxConnector:
    counter = itertools.count(1)
    return SandboxConnector(new_reference=lambda: f"sbx_{next(counter)}", **kwargs)  # type: ignore[arg-type]  # test kwargs


def test_sandbox_is_a_connector() -> None:
    connector: Connector = SandboxConnector()
    assert isinstance(connector, Connector)
    assert connector.name == "sandbox"


@pytest.mark.parametrize(
    ("number", "first", "reason", "later", "later_reason"),
    [
        ("4242424242424242", ProcessorOutcome.APPROVED, None, ProcessorOutcome.APPROVED, None),
        (
            "4000000000000002",
            ProcessorOutcome.DECLINED,
            FailureReason.CARD_DECLINED,
            ProcessorOutcome.DECLINED,
            FailureReason.CARD_DECLINED,
        ),
        (
            "4000000000009995",
            ProcessorOutcome.DECLINED,
            FailureReason.INSUFFICIENT_FUNDS,
            ProcessorOutcome.DECLINED,
            FailureReason.INSUFFICIENT_FUNDS,
        ),
        (
            "4000000000000119",
            ProcessorOutcome.TIMEOUT,
            None,
            ProcessorOutcome.DECLINED,
            FailureReason.PROCESSOR_UNAVAILABLE,
        ),
        ("5555555555554444", ProcessorOutcome.APPROVED, None, ProcessorOutcome.APPROVED, None),
        ("378282246310005", ProcessorOutcome.APPROVED, None, ProcessorOutcome.APPROVED, None),
    ],
)
async def test_test_cards_are_deterministic(
    number: str,
    first: ProcessorOutcome,
    reason: FailureReason | None,
    later: ProcessorOutcome,
    later_reason: FailureReason | None,
) -> None:
    connector = SandboxConnector()
    result = await connector.authorize(authorize(number=number))
    assert (result.outcome, result.failure_reason) == (first, reason)
    if first is ProcessorOutcome.TIMEOUT:
        assert result.reference is None
    else:
        assert result.reference is not None and result.reference.startswith("sbx_")
    status = await connector.status("pay_1")
    assert (status.outcome, status.failure_reason) == (later, later_reason)
    assert status.is_final


def test_test_card_table_is_documented() -> None:
    assert set(TEST_CARDS) == {
        "4242424242424242",
        "4000000000000002",
        "4000000000009995",
        "4000000000000119",
    }


async def test_authorize_is_idempotent_per_payment() -> None:
    connector = sandbox()
    first = await connector.authorize(authorize())
    again = await connector.authorize(authorize())
    assert first == again == ConnectorResult.approved("sbx_1")
    other = await connector.authorize(authorize("pay_2"))
    assert other.reference == "sbx_2"


@pytest.mark.parametrize("method", [PaymentMethodType.BANK_TRANSFER, PaymentMethodType.WALLET])
async def test_async_methods_are_pending_then_settle(method: PaymentMethodType) -> None:
    clock = FakeClock()
    connector = sandbox(settle_after=timedelta(seconds=30), clock=clock)
    result = await connector.authorize(authorize(method=method, capture=True))
    assert result == ConnectorResult.pending("sbx_1")
    assert (await connector.status("pay_1")) == ConnectorResult.pending("sbx_1")
    clock.now = T0 + timedelta(seconds=30)
    assert (await connector.status("pay_1")) == ConnectorResult.approved("sbx_1")
    # settled with capture: refundable at the processor
    refunded = await connector.refund(RefundRequest("pay_1", "sbx_1", 1000, "USD", "ref_1"))
    assert refunded.outcome is ProcessorOutcome.APPROVED


async def test_async_methods_settle_immediately_by_default() -> None:
    connector = SandboxConnector()
    result = await connector.authorize(authorize(method=PaymentMethodType.WALLET))
    assert result.outcome is ProcessorOutcome.PENDING
    assert (await connector.status("pay_1")).outcome is ProcessorOutcome.APPROVED


async def test_status_of_an_unknown_payment_says_nothing_was_charged() -> None:
    result = await SandboxConnector().status("pay_never_seen")
    assert result == ConnectorResult.declined(FailureReason.PROCESSOR_UNAVAILABLE)


async def test_an_authorize_after_never_received_is_declined() -> None:
    """ "Never received" is an answer the caller acts on (the reconciler fails the
    payment): an authorize for it arriving later must not charge the card."""
    connector = sandbox()
    never = ConnectorResult.declined(FailureReason.PROCESSOR_UNAVAILABLE)
    assert await connector.status("pay_1") == never
    late = await connector.authorize(authorize(capture=True))
    assert late == never
    assert await connector.status("pay_1") == never
    capture = await connector.capture(CaptureRequest("pay_1", "sbx_1", 1000, "USD", "cap_1"))
    assert capture.outcome is ProcessorOutcome.DECLINED
    # Another payment is not affected.
    assert (await connector.authorize(authorize("pay_2"))).outcome is ProcessorOutcome.APPROVED


async def test_capture_void_refund_follow_the_authorization() -> None:
    connector = sandbox()
    await connector.authorize(authorize(amount=1000))
    too_much = await connector.capture(CaptureRequest("pay_1", "sbx_1", 1001, "USD", "cap_0"))
    assert too_much.outcome is ProcessorOutcome.DECLINED
    captured = await connector.capture(CaptureRequest("pay_1", "sbx_1", 600, "USD", "cap_1"))
    assert captured == ConnectorResult.approved("sbx_2")
    replay = await connector.capture(CaptureRequest("pay_1", "sbx_1", 600, "USD", "cap_1"))
    assert replay == captured
    twice = await connector.capture(CaptureRequest("pay_1", "sbx_1", 1, "USD", "cap_2"))
    assert twice.outcome is ProcessorOutcome.DECLINED
    void = await connector.void(VoidRequest("pay_1", "sbx_1", "void_1"))
    assert void.outcome is ProcessorOutcome.DECLINED  # already captured
    r1 = await connector.refund(RefundRequest("pay_1", "sbx_1", 400, "USD", "ref_1"))
    assert r1.outcome is ProcessorOutcome.APPROVED
    assert (await connector.refund(RefundRequest("pay_1", "sbx_1", 400, "USD", "ref_1"))) == r1
    over = await connector.refund(RefundRequest("pay_1", "sbx_1", 201, "USD", "ref_2"))
    assert over.outcome is ProcessorOutcome.DECLINED
    rest = await connector.refund(RefundRequest("pay_1", "sbx_1", 200, "USD", "ref_3"))
    assert rest.outcome is ProcessorOutcome.APPROVED


async def test_void_releases_an_authorization_and_blocks_capture() -> None:
    connector = sandbox()
    await connector.authorize(authorize())
    assert (await connector.void(VoidRequest("pay_1", "sbx_1", "v1"))).outcome is (
        ProcessorOutcome.APPROVED
    )
    capture = await connector.capture(CaptureRequest("pay_1", "sbx_1", 10, "USD", "c1"))
    assert capture.outcome is ProcessorOutcome.DECLINED


async def test_void_of_unknown_or_timed_out_payment_succeeds() -> None:
    connector = sandbox()
    assert (await connector.void(VoidRequest("pay_x", None, "v"))).outcome is (
        ProcessorOutcome.APPROVED
    )
    await connector.authorize(authorize(number="4000000000000119"))
    assert (await connector.void(VoidRequest("pay_1", None, "v2"))).outcome is (
        ProcessorOutcome.APPROVED
    )


async def test_void_of_a_pending_transfer_stops_it() -> None:
    clock = FakeClock()
    connector = sandbox(settle_after=timedelta(minutes=1), clock=clock)
    await connector.authorize(authorize(method=PaymentMethodType.BANK_TRANSFER))
    assert (await connector.void(VoidRequest("pay_1", "sbx_1", "v"))).outcome is (
        ProcessorOutcome.APPROVED
    )
    clock.now = T0 + timedelta(hours=1)
    status = await connector.status("pay_1")
    assert status.outcome is ProcessorOutcome.DECLINED


async def test_refund_or_capture_of_a_declined_payment_is_declined() -> None:
    connector = sandbox()
    await connector.authorize(authorize(number="4000000000000002"))
    cap = await connector.capture(CaptureRequest("pay_1", None, 10, "USD", "c"))
    ref = await connector.refund(RefundRequest("pay_1", None, 10, "USD", "r"))
    assert cap.outcome is ref.outcome is ProcessorOutcome.DECLINED


def _strings_in(value: object, seen: set[int] | None = None) -> list[str]:
    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, str):
        return [value]
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _strings_in(k, seen) + _strings_in(v, seen)
    elif isinstance(value, list | tuple | set):
        for item in value:
            found += _strings_in(item, seen)
    elif hasattr(value, "__dict__") or hasattr(value, "__slots__"):
        names = list(getattr(value, "__dict__", {}))
        for cls in type(value).__mro__:
            names += list(getattr(cls, "__slots__", ()))
        for name in names:
            if hasattr(value, name) and not callable(getattr(value, name)):
                found += _strings_in(getattr(value, name), seen)
    return found


async def test_the_sandbox_keeps_no_card_or_account_data() -> None:
    connector = sandbox()
    for index, number in enumerate([*TEST_CARDS, "5555555555554444"]):
        await connector.authorize(authorize(f"pay_{index}", number=number))
    await connector.authorize(authorize("pay_b", method=PaymentMethodType.BANK_TRANSFER))
    await connector.authorize(authorize("pay_w", method=PaymentMethodType.WALLET))
    kept = " ".join(_strings_in(connector))
    for secret in [*TEST_CARDS, "5555555555554444", "DE8937040044", "tok_wallet_secret", "123"]:
        assert secret not in kept


async def test_a_timed_out_payment_is_reconciled_to_failed_processor_unavailable() -> None:
    """The whole rule: timeout leaves PROCESSING; the reconciler asks status() and settles."""
    connector = SandboxConnector()
    request = validate_payment_request(
        transaction_id="txn_1",
        amount=0,
        method=PaymentMethodType.CARD,
        capture_mode=CaptureMode.AUTOMATIC,
        card=CardInput("4000000000000119", 12, 2030, "123"),
        bank_transfer=None,
        wallet=None,
        today=TODAY,
    )
    ref = TransactionRef("txn_1", "mer_1", 1000, "USD")
    begun = start_payment(
        ref, request, payment_id="pay_1", merchant_id="mer_1", fingerprint_key=b"k", now=T0
    )
    result = await connector.authorize(
        AuthorizeRequest("pay_1", "mer_1", 1000, "USD", True, request.details)
    )
    after_call = authorize_outcome(
        begun.ref,
        begun.payment,
        result.outcome,
        failure_reason=result.failure_reason,
        processor_reference=result.reference,
        now=T0,
    )
    assert after_call.payment.status is PaymentStatus.PROCESSING
    assert after_call.ref.held_amount == 1000

    status = await connector.status("pay_1")
    assert reconcile_action(after_call.payment, status.outcome, now=T0) is ReconcileAction.SETTLE
    settled = authorize_outcome(
        after_call.ref,
        after_call.payment,
        status.outcome,
        failure_reason=status.failure_reason,
        now=T0 + timedelta(minutes=1),
    )
    assert settled.payment.status is PaymentStatus.FAILED
    assert settled.payment.failure_reason is FailureReason.PROCESSOR_UNAVAILABLE
    assert settled.ref.held_amount == 0


async def test_a_bank_transfer_is_reconciled_to_succeeded() -> None:
    clock = FakeClock()
    connector = SandboxConnector(settle_after=timedelta(minutes=5), clock=clock)
    request = validate_payment_request(
        transaction_id="txn_1",
        amount=0,
        method=PaymentMethodType.BANK_TRANSFER,
        capture_mode=None,
        card=None,
        bank_transfer=BankTransferInput("Jane", "12345678"),
        wallet=None,
        today=TODAY,
    )
    ref = TransactionRef("txn_1", "mer_1", 500, "EUR")
    begun = start_payment(
        ref, request, payment_id="pay_1", merchant_id="mer_1", fingerprint_key=b"k", now=T0
    )
    first = await connector.authorize(
        AuthorizeRequest("pay_1", "mer_1", 500, "EUR", True, request.details)
    )
    waiting = authorize_outcome(
        begun.ref, begun.payment, first.outcome, processor_reference=first.reference, now=T0
    )
    assert waiting.payment.status is PaymentStatus.PROCESSING
    assert waiting.payment.processor_reference == first.reference
    pending = await connector.status("pay_1")
    assert reconcile_action(waiting.payment, pending.outcome, now=T0) is ReconcileAction.WAIT
    clock.now = T0 + timedelta(minutes=5)
    final = await connector.status("pay_1")
    assert reconcile_action(waiting.payment, final.outcome, now=clock.now) is (
        ReconcileAction.SETTLE
    )
    done = authorize_outcome(waiting.ref, waiting.payment, final.outcome, now=clock.now)
    assert done.payment.status is PaymentStatus.SUCCEEDED
    assert done.ref.captured_amount == 500
