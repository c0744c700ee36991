"""Delivering the outbox to the transaction service, on the in-memory outbox: in order
per transaction, a refusal holding back its transaction only, everything waiting while
the transaction service is down."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pi.payments.app.deliver_movements import DeliverMovements
from pi.payments.app.ports import LedgerError, MovementOutcome
from pi.platform.kernel.errors import Unavailable
from pi.platform.ledger import Movement


class Refusing:
    """Refuses the first `refusals` movements of `transaction_id`, and like the transaction
    service every later one of that transaction in the same call; down while `down`."""

    def __init__(self, applied: list[Movement], transaction_id: str, refusals: int) -> None:
        self.applied = applied
        self.transaction_id = transaction_id
        self.refusals = refusals
        self.down = False
        self.calls = 0

    async def apply_movements(self, movements: Sequence[Movement]) -> list[MovementOutcome]:
        self.calls += 1
        if self.down:
            raise Unavailable("down", reason="TRANSACTIONS_UNAVAILABLE")
        outcomes, refused = [], False
        for movement in movements:
            if movement.transaction_id == self.transaction_id and (refused or self.refusals):
                self.refusals = max(0, self.refusals - 1)
                refused = True
                error = LedgerError("FAILED_PRECONDITION", "no", "LEDGER_INVARIANT_VIOLATED")
                outcomes.append(MovementOutcome(movement.id, error))
            else:
                self.applied.append(movement)
                outcomes.append(MovementOutcome(movement.id))
        return outcomes


def deliver(world: Any, ledger: Any) -> DeliverMovements:
    return DeliverMovements(world.outbox, ledger, clock=world.clock, base_backoff=1.0)


async def test_a_round_delivers_every_due_movement_in_order_in_one_call(world: Any) -> None:
    world.ledger.add("txn_2", 1000)
    await world.pay(amount=100)
    await world.pay("txn_2", amount=100, manual=True)
    await world.pay(amount=100)
    ledger = Refusing(world.ledger.applied, "none", 0)
    assert await deliver(world, ledger)() == (5, False)
    assert ledger.calls == 1
    ids = [(m.transaction_id, m.kind.value) for m in world.ledger.applied]
    assert [kind for txn, kind in ids if txn == "txn_1"] == ["AUTHORIZATION", "CAPTURE"] * 2
    assert await world.outbox.undelivered_count() == 0
    assert await deliver(world, ledger)() == (0, False)


async def test_a_refused_movement_holds_back_its_transaction_until_its_retry(
    world: Any,
) -> None:
    world.ledger.add("txn_2", 1000)
    await world.pay(amount=100)
    await world.pay("txn_2", amount=100)
    ledger = Refusing(world.ledger.applied, "txn_1", 1)
    assert await deliver(world, ledger)() == (2, False)
    assert {m.transaction_id for m in world.ledger.applied} == {"txn_2"}
    head = min(
        (r for r in world.state.outbox.values() if r.transaction_id == "txn_1"),
        key=lambda r: r.seq,
    )
    assert (head.attempts, head.last_error) == (
        1,
        "FAILED_PRECONDITION LEDGER_INVARIANT_VIOLATED: no",
    )
    await world.pay(amount=100)  # due now, but behind the postponed ones
    assert await deliver(world, ledger)() == (0, False)
    world.clock.advance(seconds=5)
    assert await deliver(world, ledger)() == (2, False)  # the retried ones first
    assert await deliver(world, ledger)() == (2, False)  # then those behind them
    kinds = [m.kind.value for m in world.ledger.applied if m.transaction_id == "txn_1"]
    assert kinds == ["AUTHORIZATION", "CAPTURE"] * 2


async def test_while_the_transaction_service_is_down_every_transaction_waits(
    world: Any,
) -> None:
    world.ledger.add("txn_2", 1000)
    await world.pay(amount=100)
    await world.pay("txn_2", amount=100)
    ledger = Refusing(world.ledger.applied, "none", 0)
    ledger.down = True
    assert await deliver(world, ledger)() == (0, False)
    rows = sorted(world.state.outbox.values(), key=lambda r: (r.transaction_id, r.seq))
    assert [(r.attempts, r.last_error is not None) for r in rows] == [
        (1, True),
        (0, False),
        (1, True),
        (0, False),
    ]
    assert rows[0].last_error.startswith("TRANSACTIONS_UNAVAILABLE")
    ledger.down = False
    assert await deliver(world, ledger)() == (0, False)  # not due before the retry
    world.clock.advance(seconds=5)
    assert await deliver(world, ledger)() == (4, False)
