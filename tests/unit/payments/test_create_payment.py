"""CreatePayment on the in-memory unit of work: every processor outcome, idempotency,
the transaction's budget, first sight of a transaction and the movements it makes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pi.payments.app.create_payment import CreatePaymentInput
from pi.payments.app.payment_ledger import TransactionFactsInput
from pi.payments.app.recent_refs import RecentRefs
from pi.payments.app.use_cases import payment_use_cases
from pi.payments.domain import (
    CaptureMode,
    CardInput,
    FailureReason,
    PaymentMethodType,
    PaymentStatus,
    TransactionRef,
)
from pi.platform.kernel.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.principal import Principal
from pi.platform.kernel.units import Mode


async def test_an_approved_card_is_captured_at_once_with_its_movements(world: Any) -> None:
    payment = await world.pay(amount=400)
    assert (payment.status, payment.amount, payment.captured_amount) == (
        PaymentStatus.SUCCEEDED,
        400,
        400,
    )
    assert payment.card.last4 == "4242" and len(payment.card.fingerprint) == 32
    assert payment.processor_reference is not None
    assert world.movements() == [("AUTHORIZATION", 1, 400, 0, 0), ("CAPTURE", 2, 0, 400, 0)]
    assert world.ref() == (0, 400, 0, False)
    assert world.nudges == [1]


async def test_a_manual_capture_holds_the_authorized_amount(world: Any) -> None:
    payment = await world.pay(amount=300, manual=True)
    assert payment.status is PaymentStatus.REQUIRES_CAPTURE
    assert world.movements() == [("AUTHORIZATION", 1, 300, 0, 0)]
    assert world.ref() == (300, 0, 0, False)


@pytest.mark.parametrize(
    ("card", "reason"),
    [("DECLINE", FailureReason.CARD_DECLINED), ("INSUFFICIENT", FailureReason.INSUFFICIENT_FUNDS)],
)
async def test_a_declined_card_is_a_failed_payment_releasing_its_hold(
    world: Any, card: str, reason: FailureReason
) -> None:
    payment = await world.pay(number=getattr(world, card), amount=300)
    assert (payment.status, payment.failure_reason) == (PaymentStatus.FAILED, reason)
    assert world.movements() == [("FAILURE", 1, 0, 0, 0)]
    assert world.ref() == (0, 0, 0, False)
    assert (await world.pay(amount=1000)).status is PaymentStatus.SUCCEEDED  # budget back


async def test_a_processor_timeout_leaves_the_payment_processing_with_its_hold(
    world: Any,
) -> None:
    payment = await world.pay(number=world.TIMEOUT, amount=300, key="k")
    assert (payment.status, payment.processor_reference) == (PaymentStatus.PROCESSING, None)
    assert world.movements() == []
    assert world.ref() == (300, 0, 0, False)
    assert world.nudges == []
    assert (
        await world.pay(number=world.TIMEOUT, amount=300, key="k") == payment
    )  # the final response


@pytest.mark.parametrize("method", ["BANK", "WALLET"])
async def test_bank_transfers_and_wallets_settle_asynchronously(world: Any, method: str) -> None:
    given = {"bank_transfer" if method == "BANK" else "wallet": getattr(world, method)}
    payment = await world.pay(amount=250, **given)
    assert payment.status is PaymentStatus.PROCESSING
    assert payment.processor_reference is not None  # PENDING at the processor
    assert world.ref() == (250, 0, 0, False)
    if method == "BANK":
        assert payment.bank_transfer.account_last4 == "3000"
    else:
        assert payment.wallet is not None and payment.method is PaymentMethodType.WALLET


async def test_the_amount_defaults_to_what_remains(world: Any) -> None:
    await world.pay(amount=300, manual=True)
    rest = await world.pay()
    assert (rest.amount, rest.status) == (700, PaymentStatus.SUCCEEDED)
    with pytest.raises(FailedPrecondition) as nothing_left:
        await world.pay()
    assert nothing_left.value.metadata == {"remaining": "0"}


async def test_a_payment_beyond_what_remains_is_refused_and_writes_nothing(world: Any) -> None:
    await world.pay(amount=600, manual=True)
    with pytest.raises(FailedPrecondition) as refused:
        await world.pay(amount=500, key="too-much")
    assert refused.value.reason == "AMOUNT_EXCEEDS_REMAINING"
    assert refused.value.metadata == {"remaining": "400"}
    assert len(world.state.payments) == 1
    assert world.state.keys == {}  # the claim went with the refusal
    assert world.ref() == (600, 0, 0, False)


async def test_a_cancelled_transaction_takes_no_payment(world: Any) -> None:
    world.ledger.add("txn_cancelled", 500, cancelled=True)
    with pytest.raises(FailedPrecondition) as refused:
        await world.pay("txn_cancelled")
    assert refused.value.reason == "TRANSACTION_CLOSED"
    assert world.state.payments == {} and world.state.refs == {}


async def test_an_unknown_or_another_merchants_transaction_is_not_found(world: Any) -> None:
    world.ledger.add("txn_theirs", 500, merchant_id="mer_other")
    for transaction_id in ("txn_unknown", "txn_theirs"):
        with pytest.raises(NotFound) as missing:
            await world.pay(transaction_id)
        assert missing.value.reason == "TRANSACTION_NOT_FOUND"
    await world.pay(amount=100)  # txn_1 is known from now on
    with pytest.raises(NotFound):
        await world.pay(principal=Principal.merchant("mer_other"))
    assert len(world.state.payments) == 1


async def test_a_replay_returns_the_first_response_and_another_request_is_refused(
    world: Any,
) -> None:
    first = await world.pay(amount=100, key="k")
    assert await world.pay(amount=100, key="k") == first
    with pytest.raises(AlreadyExists) as reused:
        await world.pay(amount=200, key="k")
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    other = Principal.merchant("mer_other")
    world.ledger.add("txn_2", 500, merchant_id="mer_other")
    theirs = await world.pay("txn_2", amount=100, key="k", principal=other)
    assert theirs.id != first.id
    assert len(world.state.payments) == 2
    assert world.movements() == [("AUTHORIZATION", 1, 100, 0, 0), ("CAPTURE", 2, 0, 100, 0)]


async def test_concurrent_duplicates_make_one_payment(world: Any) -> None:
    results = await asyncio.gather(*(world.pay(amount=100, key="same") for _ in range(10)))
    assert len({r.id for r in results}) == 1
    assert {r.status for r in results} == {PaymentStatus.SUCCEEDED}
    assert len(world.state.payments) == 1
    assert world.ref() == (0, 100, 0, False)


async def test_concurrent_payments_never_hold_more_than_the_amount(world: Any) -> None:
    results = await asyncio.gather(
        *(world.pay(amount=300, manual=True) for _ in range(5)), return_exceptions=True
    )
    held = [r for r in results if not isinstance(r, BaseException)]
    assert len(held) == 3
    assert all(
        isinstance(r, FailedPrecondition) and r.reason == "AMOUNT_EXCEEDS_REMAINING"
        for r in results
        if isinstance(r, BaseException)
    )
    assert world.ref() == (900, 0, 0, False)


async def test_a_transaction_is_looked_up_once_unless_it_was_registered(world: Any) -> None:
    await world.pay(amount=100)
    await world.pay(amount=100)
    assert world.ledger.lookups == ["txn_1"]
    facts = [TransactionFactsInput("txn_pushed", "mer_unit", 800, "USD")]
    await world.use.register_transactions(world.SERVICE, facts)
    paid = await world.pay("txn_pushed")
    assert (paid.amount, world.ledger.lookups) == (800, ["txn_1"])


async def test_a_transaction_registered_here_is_paid_without_reading_its_ref(
    world: Any,
) -> None:
    facts = [TransactionFactsInput("txn_pushed", "mer_unit", 800, "USD")]
    await world.use.register_transactions(world.SERVICE, facts)
    world.units.opened.clear()
    await world.pay("txn_pushed", amount=300)
    assert Mode.READ not in world.units.opened, world.units.opened
    # Taken once: the next payment reads the ref its predecessor changed.
    await world.pay("txn_pushed", amount=500)
    assert world.units.opened.count(Mode.READ) == 1, world.units.opened
    assert world.ref("txn_pushed") == (0, 800, 0, False)


async def test_a_ref_remembered_here_but_paid_on_another_replica_is_decided_again(
    world: Any,
) -> None:
    """Another replica (its own use cases, the same database) takes most of the budget
    after this one registered the transaction: the remembered ref (holding nothing) is
    stale, and the payment is refused on the row as it is, not approved on the memory."""
    other = payment_use_cases(
        world.units,
        world.connector,
        world.ledger,
        card_key=b"k" * 32,
        request_key=b"r" * 32,
        page_tokens=PageToken(b"p" * 32),
        clock=world.clock,
    )
    facts = [TransactionFactsInput("txn_pushed", "mer_unit", 1000, "USD")]
    await world.use.register_transactions(world.SERVICE, facts)
    card = CardInput(world.APPROVE, 12, 2030, "123")
    manual = CreatePaymentInput(
        "txn_pushed", 700, PaymentMethodType.CARD, CaptureMode.MANUAL, card=card
    )
    await other.create_payment(world.MERCHANT, manual, idempotency_key=None)
    with pytest.raises(FailedPrecondition) as refused:
        await world.pay("txn_pushed", amount=400, manual=True)
    assert refused.value.metadata == {"remaining": "300"}
    assert world.ref("txn_pushed") == (700, 0, 0, False)
    assert (await world.pay("txn_pushed", amount=300, manual=True)).amount == 300


def test_recent_refs_are_taken_once_and_the_oldest_go_first() -> None:
    recent = RecentRefs(capacity=2)
    refs = [TransactionRef(f"txn_{n}", "mer_unit", 100, "USD") for n in range(3)]
    recent.remember(refs)
    assert len(recent) == 2
    assert recent.take("txn_0") is None
    assert recent.take("txn_1") == refs[1]
    assert recent.take("txn_1") is None
    assert recent.take("txn_2") == refs[2]


async def test_a_ref_pushed_and_held_during_the_lookup_is_decided_again_under_locks(
    world: Any,
) -> None:
    lookup = world.ledger.lookup_transaction

    async def racing(merchant_id: str, transaction_id: str) -> Any:
        facts = await lookup(merchant_id, transaction_id)
        pushed = TransactionFactsInput(transaction_id, merchant_id, 1000, "USD")
        await world.use.register_transactions(world.SERVICE, [pushed])
        await world.pay(transaction_id, amount=700, manual=True)  # the ref is known now
        return facts

    world.ledger.lookup_transaction = racing
    with pytest.raises(FailedPrecondition) as refused:
        await world.pay(amount=400, manual=True)
    assert refused.value.metadata == {"remaining": "300"}
    world.ledger.lookup_transaction = lookup
    assert (await world.pay(amount=300, manual=True)).amount == 300
    assert world.ref() == (1000, 0, 0, False)


async def test_a_failed_lookup_still_reports_a_reused_key_first(world: Any) -> None:
    await world.pay(amount=100, key="k")

    async def down(merchant_id: str, transaction_id: str) -> Any:
        raise Unavailable("down", reason="TRANSACTIONS_UNAVAILABLE")

    world.ledger.lookup_transaction = down
    world.ledger.add("txn_2", 500)
    with pytest.raises(AlreadyExists):
        await world.pay("txn_2", amount=50, key="k")
    with pytest.raises(Unavailable):
        await world.pay("txn_2", amount=50, key="k2")


async def test_bad_input_is_refused_with_every_field_and_writes_nothing(world: Any) -> None:
    data = CreatePaymentInput(transaction_id="t" * 65, amount=-1, method=None)
    with pytest.raises(InvalidArgument) as invalid:
        await world.use.create_payment(world.MERCHANT, data, idempotency_key=None)
    fields = sorted(v.field for v in invalid.value.violations)
    assert fields == ["payment.amount", "payment.method", "payment.transaction_id"]
    with pytest.raises(PermissionDenied):
        await world.pay(principal=world.SERVICE)
    assert world.state.refs == {} and world.ledger.lookups == []
