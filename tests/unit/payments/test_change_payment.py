"""Capture, cancel and refund on the in-memory unit of work: partial and whole amounts,
what is refused (and then left unchanged), replays, and the movements each makes."""

from __future__ import annotations

from typing import Any

import pytest

from pi.payments.domain import PaymentStatus, RefundStatus
from pi.platform.kernel.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from pi.platform.kernel.principal import Principal


async def test_a_partial_capture_releases_the_rest_of_the_authorization(world: Any) -> None:
    held = await world.pay(amount=400, manual=True)
    captured = await world.use.capture_payment(world.MERCHANT, held.id, amount=300)
    assert (captured.status, captured.captured_amount) == (PaymentStatus.SUCCEEDED, 300)
    assert world.movements() == [("AUTHORIZATION", 1, 400, 0, 0), ("CAPTURE", 2, -100, 300, 0)]
    assert world.ref() == (0, 300, 0, False)
    assert (await world.pay(amount=700)).amount == 700  # the released 100 is payable again


async def test_capture_refuses_more_than_authorized_and_what_is_not_capturable(
    world: Any,
) -> None:
    held = await world.pay(amount=400, manual=True)
    with pytest.raises(FailedPrecondition) as over:
        await world.use.capture_payment(world.MERCHANT, held.id, amount=401)
    assert (over.value.reason, over.value.metadata) == (
        "AMOUNT_EXCEEDS_AUTHORIZED",
        {"authorized": "400"},
    )
    assert world.state.payments[held.id] == held
    assert world.ref() == (400, 0, 0, False)
    await world.use.capture_payment(world.MERCHANT, held.id)
    with pytest.raises(FailedPrecondition) as again:
        await world.use.capture_payment(world.MERCHANT, held.id)
    assert again.value.reason == "PAYMENT_NOT_CAPTURABLE"
    with pytest.raises(InvalidArgument):
        await world.use.capture_payment(world.MERCHANT, held.id, amount=-5)


async def test_a_capture_replays_with_its_key(world: Any) -> None:
    held = await world.pay(amount=400, manual=True)
    first = await world.use.capture_payment(
        world.MERCHANT, held.id, amount=200, idempotency_key="cap"
    )
    again = await world.use.capture_payment(
        world.MERCHANT, held.id, amount=200, idempotency_key="cap"
    )
    assert again == first
    with pytest.raises(AlreadyExists):
        await world.use.capture_payment(world.MERCHANT, held.id, amount=100, idempotency_key="cap")
    assert [kind for kind, *_ in world.movements()] == ["AUTHORIZATION", "CAPTURE"]


async def test_cancel_voids_an_authorization_only(world: Any) -> None:
    held = await world.pay(amount=400, manual=True)
    cancelled = await world.use.cancel_payment(world.MERCHANT, held.id, idempotency_key="void")
    assert cancelled.status is PaymentStatus.CANCELLED
    assert world.movements()[-1] == ("VOID", 2, -400, 0, 0)
    assert world.ref() == (0, 0, 0, False)
    replay = await world.use.cancel_payment(world.MERCHANT, held.id, idempotency_key="void")
    assert replay == cancelled
    paid = await world.pay(amount=100)
    for payment_id in (held.id, paid.id):
        with pytest.raises(FailedPrecondition) as refused:
            await world.use.cancel_payment(world.MERCHANT, payment_id)
        assert refused.value.reason == "PAYMENT_NOT_CANCELLABLE"


async def test_refunds_are_partial_until_nothing_is_left(world: Any) -> None:
    paid = await world.pay(amount=500)
    first = await world.use.refund_payment(
        world.MERCHANT, paid.id, amount=200, reason="one item back", idempotency_key="r1"
    )
    assert (first.refund.amount, first.refund.status, first.refund.reason) == (
        200,
        RefundStatus.SUCCEEDED,
        "one item back",
    )
    assert first.payment.refunded_amount == 200
    replay = await world.use.refund_payment(
        world.MERCHANT, paid.id, amount=200, reason="one item back", idempotency_key="r1"
    )
    assert replay == first
    with pytest.raises(FailedPrecondition) as over:
        await world.use.refund_payment(world.MERCHANT, paid.id, amount=301)
    assert (over.value.reason, over.value.metadata) == (
        "AMOUNT_EXCEEDS_REFUNDABLE",
        {"refundable": "300"},
    )
    rest = await world.use.refund_payment(world.MERCHANT, paid.id)
    assert (rest.refund.amount, rest.payment.refunded_amount) == (300, 500)
    with pytest.raises(FailedPrecondition) as nothing:
        await world.use.refund_payment(world.MERCHANT, paid.id, amount=1)
    assert nothing.value.reason == "PAYMENT_NOT_REFUNDABLE"
    assert len(world.state.refunds) == 2
    assert [m[0] for m in world.movements()] == ["AUTHORIZATION", "CAPTURE", "REFUND", "REFUND"]
    assert world.ref() == (0, 500, 500, False)


async def test_a_refund_of_an_uncaptured_payment_or_with_a_bad_reason_is_refused(
    world: Any,
) -> None:
    held = await world.pay(amount=500, manual=True)
    with pytest.raises(FailedPrecondition) as refused:
        await world.use.refund_payment(world.MERCHANT, held.id)
    assert refused.value.reason == "PAYMENT_NOT_REFUNDABLE"
    with pytest.raises(InvalidArgument) as invalid:
        await world.use.refund_payment(world.MERCHANT, held.id, reason="x" * 501, amount=-1)
    assert sorted(v.field for v in invalid.value.violations) == ["amount", "reason"]
    assert world.state.refunds == {}


async def test_another_merchants_payment_is_not_found(world: Any) -> None:
    held = await world.pay(amount=400, manual=True)
    paid = await world.pay(amount=100)
    intruder = Principal.merchant("mer_intruder")
    calls = (
        world.use.get_payment(intruder, held.id),
        world.use.capture_payment(intruder, held.id),
        world.use.cancel_payment(intruder, held.id),
        world.use.refund_payment(intruder, paid.id),
    )
    for call in calls:
        with pytest.raises(NotFound) as missing:
            await call
        assert missing.value.reason == "PAYMENT_NOT_FOUND"
    assert (await world.use.list_payments(intruder)).payments == []
    assert world.state.payments[held.id] == held
