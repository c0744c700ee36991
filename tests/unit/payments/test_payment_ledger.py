"""What the transaction service asks of the payment service, on the in-memory unit of
work: CloseTransaction and RegisterTransactions."""

from __future__ import annotations

from typing import Any

import pytest

from pi.payments.app.payment_ledger import TransactionFactsInput
from pi.payments.domain import PaymentStatus
from pi.platform.kernel.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)


async def close(world: Any, transaction_id: str = "txn_1", **facts: Any) -> Any:
    values = {"merchant_id": "mer_unit", "amount": 1000, "currency": "USD", **facts}
    return await world.use.close_transaction(world.SERVICE, transaction_id=transaction_id, **values)


async def test_closing_voids_the_authorizations_and_takes_no_more_payments(world: Any) -> None:
    first = await world.pay(amount=300, manual=True)
    second = await world.pay(amount=200, manual=True)
    declined = await world.pay(number=world.DECLINE, amount=100)
    closed = await close(world)
    assert closed.movement_id == "mov_cancel_txn_1"
    # In id order (two ids of one millisecond compare in random order).
    assert closed.voided_payment_ids == tuple(sorted((first.id, second.id)))
    for payment_id in closed.voided_payment_ids:
        assert world.state.payments[payment_id].status is PaymentStatus.CANCELLED
    assert world.state.payments[declined.id].status is PaymentStatus.FAILED
    # The close is recorded first (CANCELLATION), each void once the processor approved it.
    assert [m[0] for m in world.movements()][-3:] == ["CANCELLATION", "VOID", "VOID"]
    assert world.state.outbox["mov_cancel_txn_1"].movement.payment_id is None
    assert world.ref() == (0, 0, 0, True)
    with pytest.raises(FailedPrecondition) as refused:
        await world.pay(amount=100)
    assert refused.value.reason == "TRANSACTION_CLOSED"

    count = len(world.state.outbox)
    again = await close(world)
    assert (again.movement_id, again.voided_payment_ids) == ("mov_cancel_txn_1", ())
    assert len(world.state.outbox) == count


async def test_an_unseen_transaction_is_closed_as_given(world: Any) -> None:
    closed = await close(world, "txn_never_paid", amount=50, currency="EUR")
    assert closed.voided_payment_ids == ()
    assert world.ref("txn_never_paid") == (0, 0, 0, True)
    assert world.state.refs["txn_never_paid"].ref.currency == "EUR"


async def test_a_transaction_with_money_captured_or_pending_cannot_be_closed(
    world: Any,
) -> None:
    world.ledger.add("txn_2", 1000)
    await world.pay(amount=100)
    await world.pay("txn_2", number=world.TIMEOUT, amount=100)
    with pytest.raises(FailedPrecondition) as captured:
        await close(world)
    assert captured.value.reason == "TRANSACTION_CAPTURED"
    with pytest.raises(FailedPrecondition) as processing:
        await close(world, "txn_2")
    assert processing.value.reason == "PAYMENT_PROCESSING"
    assert world.ref("txn_2") == (100, 0, 0, False)


async def test_closing_with_other_facts_is_refused(world: Any) -> None:
    await world.pay(amount=100, manual=True)
    with pytest.raises(FailedPrecondition) as mismatch:
        await close(world, amount=999)
    assert mismatch.value.reason == "TRANSACTION_MISMATCH"
    with pytest.raises(NotFound):
        await close(world, merchant_id="mer_other")
    with pytest.raises(PermissionDenied):
        await world.use.close_transaction(
            world.MERCHANT, merchant_id="mer_unit", transaction_id="txn_1", amount=1, currency="USD"
        )
    with pytest.raises(InvalidArgument):
        await close(world, amount=0, currency="usd")
    assert world.ref() == (100, 0, 0, False)


async def test_registered_transactions_are_kept_and_conflicts_reported(world: Any) -> None:
    def facts(transaction_id: str, amount: int = 500, currency: str = "USD") -> Any:
        return TransactionFactsInput(transaction_id, "mer_unit", amount, currency)

    first = await world.use.register_transactions(world.SERVICE, [facts("txn_a"), facts("txn_b")])
    assert (first.registered_count, first.conflicting_transaction_ids) == (2, ())
    again = await world.use.register_transactions(
        world.SERVICE, [facts("txn_a"), facts("txn_b", 7, "EUR"), facts("txn_c")]
    )
    assert (again.registered_count, again.conflicting_transaction_ids) == (1, ("txn_b",))
    assert world.state.refs["txn_b"].ref.amount == 500
    with pytest.raises(InvalidArgument) as invalid:
        await world.use.register_transactions(world.SERVICE, [facts("txn_d"), facts("txn_d")])
    assert [v.field for v in invalid.value.violations] == ["transactions[1].transaction_id"]
    with pytest.raises(PermissionDenied):
        await world.use.register_transactions(world.MERCHANT, [facts("txn_e")])
    assert set(world.state.refs) == {"txn_a", "txn_b", "txn_c"}
