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


async def test_a_movement_refused_too_often_goes_to_the_dead_letters_until_retried(
    world: Any, caplog: Any
) -> None:
    world.ledger.add("txn_2", 1000)
    await world.pay(amount=100)  # txn_1: AUTHORIZATION, CAPTURE
    await world.pay("txn_2", amount=100)
    ledger = Refusing(world.ledger.applied, "txn_1", 10**6)
    dispatch = DeliverMovements(
        world.outbox, ledger, clock=world.clock, base_backoff=1.0, max_attempts=3
    )
    for _ in range(3):
        await dispatch()
        world.clock.advance(minutes=1)
    assert [r.movement.kind.value for r, _ in world.state.dead_letters.values()] == [
        "AUTHORIZATION",
        "CAPTURE",
    ]
    (dead_log,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert dead_log.getMessage() == "movement refused too often; moved to the dead letters"
    assert (dead_log.transaction_id, dead_log.attempts, dead_log.moved) == ("txn_1", 3, 2)
    calls = ledger.calls
    await world.pay(amount=100)  # waits behind the dead letters, in order
    assert await dispatch() == (0, False)
    assert ledger.calls == calls  # nothing of txn_1 is sent any more
    assert await world.outbox.next_due() is None
    listed = await world.outbox.dead_letters(10, after=None)
    listed.sort(key=lambda d: d.seq)
    assert [(d.transaction_id, d.seq, d.attempts) for d in listed] == [
        ("txn_1", 1, 3),
        ("txn_1", 2, 0),
    ]
    assert listed[0].last_error == "FAILED_PRECONDITION LEDGER_INVARIANT_VIOLATED: no"

    ledger.refusals = 0
    assert await world.outbox.retry_dead_letters(["txn_1"], world.clock()) == 2
    assert world.state.dead_letters == {}
    assert await dispatch() == (4, False)
    kinds = [m.kind.value for m in world.ledger.applied if m.transaction_id == "txn_1"]
    assert kinds == ["AUTHORIZATION", "CAPTURE", "AUTHORIZATION", "CAPTURE"]


async def test_an_unanswering_ledger_never_sends_movements_to_the_dead_letters(
    world: Any,
) -> None:
    await world.pay(amount=100)
    ledger = Refusing(world.ledger.applied, "none", 0)
    ledger.down = True
    dispatch = DeliverMovements(
        world.outbox, ledger, clock=world.clock, base_backoff=1.0, max_attempts=2
    )
    for _ in range(5):
        await dispatch()
        world.clock.advance(minutes=1)
    assert world.state.dead_letters == {}
    ledger.down = False
    assert await dispatch() == (2, False)
