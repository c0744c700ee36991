"""The background workers on fakes: the facts publisher (batches, a bounded queue, backoff,
futures always resolved) and the purge of old idempotency keys."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest

from pi.platform.kernel.errors import Unavailable
from pi.platform.kernel.units import Mode
from pi.transactions.adapters.memory import MemoryUnits
from pi.transactions.app.ports import TransactionFacts
from pi.transactions.domain import Transaction, new_transaction
from pi.transactions.entrypoints.workers import FactsPublisher, purge_idempotency_keys
from tests.support.ledgers import GatedLedger
from tests.unit.transactions.fakes import Clock

M = "mer_facts"


def transactions(count: int) -> list[Transaction]:
    return [
        new_transaction(
            id=f"txn_{n:026d}",
            merchant_id=M,
            amount=n + 1,
            currency="USD",
            description="",
            metadata={},
            now=datetime(2030, 1, 1, tzinfo=UTC),
        )
        for n in range(count)
    ]


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def running(publisher: FactsPublisher) -> AsyncIterator[asyncio.Task[None]]:
    """The publisher's loop as a task, started; on exit it must stop within a second."""
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: publisher.healthy)
        yield task
    finally:
        task.cancel()
        async with asyncio.timeout(1):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def stats_add_up(publisher: FactsPublisher) -> None:
    s = publisher.stats
    assert s.published == s.sent + s.lost + s.dropped + publisher.queued, s


async def test_the_facts_of_a_transaction_are_what_never_changes_about_it() -> None:
    ledger = GatedLedger()
    publisher = FactsPublisher(ledger)
    [made] = transactions(1)
    async with running(publisher):
        done = publisher.publish(made)
        assert done is not None
        assert await done is True
    assert ledger.batches == [[TransactionFacts(made.id, M, made.amount, "USD")]]
    stats_add_up(publisher)


async def test_a_call_carries_at_most_per_call_transactions_and_a_full_queue_drops_the_oldest() -> (
    None
):
    ledger = GatedLedger()
    publisher = FactsPublisher(ledger, capacity=20, per_call=8)
    made = transactions(25)
    for transaction in made:
        publisher.publish(transaction)
    assert (publisher.stats.dropped, publisher.queued) == (5, 20)

    async with running(publisher):
        await eventually(lambda: publisher.queued == 0 and publisher.stats.sent == 20)
    assert [len(batch) for batch in ledger.batches] == [8, 8, 4]
    assert ledger.registered == [t.id for t in made[5:]]  # oldest first, the first 5 dropped
    stats_add_up(publisher)


async def test_a_failed_call_loses_its_facts_backs_off_and_recovers() -> None:
    ledger = GatedLedger()
    ledger.error = Unavailable("down", reason="PAYMENT_SERVICE_UNAVAILABLE")
    publisher = FactsPublisher(ledger, base_backoff=0.01, max_backoff=0.02)
    lost, kept = transactions(2)
    async with running(publisher):
        done = publisher.publish(lost)
        assert done is not None and await done is False
        assert not publisher.healthy
        assert publisher.publish(kept) is None  # unhealthy: nothing worth waiting for
        ledger.error = None
        await eventually(lambda: publisher.stats.sent == 1)
        assert publisher.healthy
    assert (publisher.stats.lost, publisher.stats.failed_calls, publisher.stats.calls) == (1, 1, 1)
    assert ledger.registered == [lost.id, kept.id]
    stats_add_up(publisher)


async def test_every_future_is_resolved_when_dropped_or_when_the_publisher_stops() -> None:
    made = transactions(4)
    ledger = GatedLedger()
    ledger.gate.clear()
    publisher = FactsPublisher(ledger, capacity=2)
    assert publisher.publish(made[0]) is None  # not running: nothing to wait for
    async with running(publisher):
        await eventually(lambda: len(ledger.batches) == 1)
        futures = [publisher.publish(t) for t in made[1:]]  # the third drops the first
        assert all(f is not None for f in futures)
        first = futures[0]
        assert first is not None and first.done() and first.result() is False
        assert publisher.stats.dropped == 1 and publisher.waiting == 2
        # Leaving `running` cancels the loop mid-call, with two futures still pending.
    assert publisher.waiting == 0
    assert [f.result() for f in futures if f is not None] == [False, False, False]
    assert publisher.publish(made[0]) is None  # stopped: nothing to wait for
    assert publisher.waiting == 0


async def test_the_publisher_runs_once_at_a_time_and_checks_its_limits() -> None:
    publisher = FactsPublisher(GatedLedger())
    async with running(publisher):
        with pytest.raises(RuntimeError, match="already running"):
            await publisher.run()
    for wrong in ({"capacity": 0}, {"per_call": 0}, {"per_call": 1001}):
        with pytest.raises(ValueError):
            FactsPublisher(GatedLedger(), **wrong)  # type: ignore[arg-type]


async def test_the_purge_forgets_keys_older_than_the_retention_only() -> None:
    clock = Clock()
    units = MemoryUnits(clock=clock)
    async with units() as unit:
        await unit.idempotency.claim("mer", "Op", "old", "fp", response=b"r")
        await unit.commit()
    clock.advance(timedelta(hours=20))
    async with units() as unit:
        await unit.idempotency.claim("mer", "Op", "new", "fp", response=b"r")
        await unit.commit()
    clock.advance(timedelta(hours=5))
    assert await purge_idempotency_keys(units) == 1
    async with units(Mode.LOCKED) as unit:
        assert await unit.idempotency.claim("mer", "Op", "new", "fp") == b"r"
        assert await unit.idempotency.claim("mer", "Op", "old", "fp") is None  # free again
    with pytest.raises(ValueError, match="24 hours"):
        await purge_idempotency_keys(units, timedelta(hours=1))
