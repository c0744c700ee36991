"""Reading payments (get, list in pages) and reconciling those the processor had not
settled, on the in-memory unit of work."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from pi.payments.domain import UNKNOWN_OUTCOME_TIMEOUT, FailureReason, PaymentStatus
from pi.payments.entrypoints.workers import Reconciler
from pi.platform.kernel.errors import InvalidArgument, NotFound


async def test_payments_are_listed_newest_first_in_signed_pages(world: Any) -> None:
    world.ledger.add("txn_2", 1000)
    made = []
    for _ in range(5):
        made.append(await world.pay(amount=100, manual=True))
        world.clock.advance(seconds=1)
    other = await world.pay("txn_2", amount=100)
    everything = await world.use.list_payments(world.MERCHANT)
    assert [p.id for p in everything.payments] == [other.id, *(p.id for p in reversed(made))]
    assert everything.next_page_token == ""

    seen, token = [], ""
    while True:
        page = await world.use.list_payments(
            world.MERCHANT, transaction_id="txn_1", page_size=2, page_token=token
        )
        assert len(page.payments) <= 2
        seen.extend(p.id for p in page.payments)
        token = page.next_page_token
        if not token:
            break
    assert seen == [p.id for p in reversed(made)]

    first = await world.use.list_payments(world.MERCHANT, transaction_id="txn_1", page_size=2)
    with pytest.raises(InvalidArgument) as other_filters:
        await world.use.list_payments(
            world.MERCHANT, transaction_id="txn_2", page_token=first.next_page_token
        )
    assert other_filters.value.violations[0].field == "page_token"
    with pytest.raises(InvalidArgument):
        await world.use.list_payments(world.MERCHANT, page_token="forged.token")
    with pytest.raises(InvalidArgument):
        await world.use.list_payments(world.MERCHANT, page_size=-1)


async def test_get_payment_needs_an_id_and_finds_only_existing_ones(world: Any) -> None:
    paid = await world.pay(amount=100)
    assert await world.use.get_payment(world.MERCHANT, paid.id) == paid
    with pytest.raises(InvalidArgument):
        await world.use.get_payment(world.MERCHANT, "")
    with pytest.raises(NotFound):
        await world.use.get_payment(world.MERCHANT, "pay_missing")


async def test_an_asynchronous_payment_is_settled_once_the_processor_settled_it(
    world: Any,
) -> None:
    pending = await world.pay(amount=400, bank_transfer=world.BANK)
    reconciler = Reconciler(world.use.reconcile_payment, grace=timedelta(0), clock=world.clock)
    world.clock.advance(seconds=1)
    assert await reconciler.run_once() == 0  # the processor still settles it
    assert world.movements() == []
    world.clock.advance(minutes=5)
    assert await reconciler.run_once() == 1
    settled = world.state.payments[pending.id]
    assert (settled.status, settled.captured_amount) == (PaymentStatus.SUCCEEDED, 400)
    assert [m[0] for m in world.movements()] == ["AUTHORIZATION", "CAPTURE"]
    assert world.ref() == (0, 400, 0, False)
    assert world.nudges == [1]
    assert await reconciler.run_once() == 0


async def test_a_payment_with_an_unknown_outcome_is_voided_and_failed_in_the_end(
    world: Any,
) -> None:
    unknown = await world.pay(number=world.TIMEOUT, amount=300, key="k")
    world.clock.advance(seconds=10)
    # The sandbox never got it: DECLINED PROCESSOR_UNAVAILABLE, settled at once.
    reconciled = await world.use.reconcile_payment(unknown)
    assert (reconciled.status, reconciled.failure_reason) == (
        PaymentStatus.FAILED,
        FailureReason.PROCESSOR_UNAVAILABLE,
    )
    assert world.movements() == [("FAILURE", 1, 0, 0, 0)]
    assert world.ref() == (0, 0, 0, False)
    # The key still answers with what the request returned.
    assert (await world.pay(number=world.TIMEOUT, amount=300, key="k")).status is (
        PaymentStatus.PROCESSING
    )
    assert await world.use.reconcile_payment(reconciled) == reconciled


async def test_a_status_that_stays_unknown_fails_the_payment_only_after_the_timeout(
    world: Any,
) -> None:
    unknown = await world.pay(number=world.TIMEOUT, amount=300)

    async def no_answer(payment_id: str) -> Any:
        from pi.payments.domain import ConnectorResult

        return ConnectorResult.timeout()

    world.connector.status = no_answer
    assert await world.use.reconcile_payment(unknown) == unknown
    world.clock.advance(seconds=UNKNOWN_OUTCOME_TIMEOUT.total_seconds())
    failed = await world.use.reconcile_payment(unknown)
    assert (failed.status, failed.failure_reason) == (
        PaymentStatus.FAILED,
        FailureReason.PROCESSOR_UNAVAILABLE,
    )
