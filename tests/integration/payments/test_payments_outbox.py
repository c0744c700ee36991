"""The outbox dispatcher and the reconciler against the real store (PostgreSQL; the
tests of delivery order also on the in-memory one), with a scripted transaction ledger:
order per transaction, backoff, nudges, housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from pi.payments.adapters.postgres.tables import outbox
from pi.payments.adapters.processor import SandboxConnector
from pi.payments.app.create_payment import CreatePaymentInput
from pi.payments.app.ports import LedgerError, MovementOutcome, TransactionFacts
from pi.payments.app.use_cases import PaymentUseCases, payment_use_cases
from pi.payments.domain import (
    BankTransferInput,
    CaptureMode,
    CardInput,
    ConnectorResult,
    PaymentMethodType,
    PaymentStatus,
)
from pi.payments.entrypoints.workers import OutboxDispatcher, Reconciler
from pi.platform.kernel.errors import Unavailable
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.principal import Principal
from pi.platform.ledger import Movement

MERCHANT = Principal.merchant("mer_outbox")
EXPIRY = datetime.now(UTC).year + 2


@dataclass
class ScriptedLedger:
    """Knows every transaction id it is asked about (amount 10 000 USD); records applied
    movements and every call's batch. Fails whole calls while `down`; refuses the next
    `failures[txn]` movements of a transaction, and like the transaction service aborts
    the later movements of a transaction in the same call after a refusal."""

    down: bool = False
    failures: dict[str, int] = field(default_factory=dict)
    applied: list[Movement] = field(default_factory=list)
    batches: list[list[Movement]] = field(default_factory=list)

    async def lookup_transaction(self, merchant_id: str, transaction_id: str) -> TransactionFacts:
        return TransactionFacts(transaction_id, merchant_id, 10_000, "USD", cancelled=False)

    async def apply_movements(self, movements: Sequence[Movement]) -> list[MovementOutcome]:
        self.batches.append(list(movements))
        if self.down:
            raise Unavailable("down", reason="TRANSACTIONS_UNAVAILABLE")
        outcomes = []
        refused: set[str] = set()
        for movement in movements:
            txn = movement.transaction_id
            left = self.failures.get(txn, 0)
            if txn in refused:
                error = LedgerError("ABORTED", "not attempted", "EARLIER_MOVEMENT_NOT_APPLIED")
            elif left:
                self.failures[txn] = left - 1
                error = LedgerError("FAILED_PRECONDITION", "flaky", "LEDGER_INVARIANT_VIOLATED")
            else:
                self.applied.append(movement)
                outcomes.append(MovementOutcome(movement.id))
                continue
            refused.add(txn)
            outcomes.append(MovementOutcome(movement.id, error))
        return outcomes


@dataclass
class Clock:
    """The real time plus `ahead`, for a dispatcher: a test moves it past a backoff instead
    of sleeping through it, so a retry is due exactly when the test says, whatever the
    machine's load."""

    ahead: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@dataclass
class World:
    backend: Any  # conftest Backend
    ledger: ScriptedLedger
    connector: SandboxConnector
    dispatcher: OutboxDispatcher
    service: PaymentUseCases
    clock: Clock = field(default_factory=Clock)

    @property
    def engine(self) -> Any:
        assert self.backend.engine is not None, "a PostgreSQL world"
        return self.backend.engine

    def patient_dispatcher(self, batch_size: int = 500) -> OutboxDispatcher:
        """A dispatcher on `clock` whose first retry waits 45 to 60 s: not due until the
        test moves `clock` ahead."""
        return OutboxDispatcher(
            self.backend.outbox,
            self.ledger,
            batch_size=batch_size,
            idle_poll=60.0,
            base_backoff=30.0,
            max_backoff=60.0,
            clock=self.clock,
        )

    async def pay(self, transaction_id: str, amount: int = 100, manual: bool = False) -> Any:
        return await self.service.create_payment(
            MERCHANT,
            CreatePaymentInput(
                transaction_id=transaction_id,
                amount=amount,
                method=PaymentMethodType.CARD,
                capture_mode=CaptureMode.MANUAL if manual else CaptureMode.AUTOMATIC,
                card=CardInput("4242424242424242", 1, EXPIRY, "123"),
            ),
            idempotency_key=None,
        )


def _world(backend: Any) -> World:
    ledger = ScriptedLedger()
    connector = SandboxConnector(settle_after=timedelta(days=1))
    dispatcher = OutboxDispatcher(backend.outbox, ledger, idle_poll=60.0, base_backoff=0.005)
    service = payment_use_cases(
        backend.units,
        connector,
        ledger,
        card_key=secrets.token_bytes(32),
        request_key=secrets.token_bytes(32),
        page_tokens=PageToken(secrets.token_bytes(32)),
        notify=dispatcher.nudge,
    )
    return World(backend, ledger, connector, dispatcher, service)


@pytest.fixture
async def world(make_backend: Callable[[str], Awaitable[Any]]) -> World:
    return _world(await make_backend("postgresql"))


@pytest.fixture
async def any_world(backend: Any) -> World:
    """`world` on PostgreSQL, then on the in-memory store."""
    return _world(backend)


async def test_movements_are_delivered_in_order_per_transaction_despite_failures(
    world: World,
) -> None:
    for txn in ("txn_a", "txn_b", "txn_c"):
        for _ in range(3):
            payment = await world.pay(txn, manual=True)
            await world.service.capture_payment(MERCHANT, payment.id, amount=50)
    world.ledger.failures = {"txn_a": 2, "txn_c": 5}
    await world.dispatcher.drain(timeout=30)
    async with world.engine.connect() as conn:
        rows = (
            await conn.execute(sa.select(outbox.c.id, outbox.c.transaction_id, outbox.c.seq))
        ).all()
    expected = {
        txn: [r.id for r in sorted(rows, key=lambda r: r.seq) if r.transaction_id == txn]
        for txn in ("txn_a", "txn_b", "txn_c")
    }
    delivered = {
        txn: [m.id for m in world.ledger.applied if m.transaction_id == txn] for txn in expected
    }
    assert delivered == expected
    assert all(len(ids) == 6 for ids in expected.values())
    kinds = [m.kind.value for m in world.ledger.applied if m.transaction_id == "txn_b"]
    assert kinds == ["AUTHORIZATION", "CAPTURE"] * 3


async def outbox_rows(world: World) -> list[Any]:
    return list(await world.backend.outbox_rows())


async def test_a_round_is_one_call_carrying_every_due_movement_in_order(world: World) -> None:
    for txn in ("txn_a", "txn_b", "txn_c"):
        for _ in range(2):
            await world.pay(txn)
    delivered, more = await world.dispatcher.deliver_once()
    assert (delivered, more) == (12, False)
    assert len(world.ledger.batches) == 1
    rows = await outbox_rows(world)
    assert all(r.delivered_time is not None for r in rows)
    sent = world.ledger.batches[0]
    for txn in ("txn_a", "txn_b", "txn_c"):
        expected = [r.id for r in sorted(rows, key=lambda r: r.seq) if r.transaction_id == txn]
        assert [m.id for m in sent if m.transaction_id == txn] == expected
        kinds = [m.kind.value for m in sent if m.transaction_id == txn]
        assert kinds == ["AUTHORIZATION", "CAPTURE"] * 2
    assert await world.dispatcher.deliver_once() == (0, False)
    assert len(world.ledger.batches) == 1


async def test_a_refused_movement_holds_back_its_transaction_only(world: World) -> None:
    dispatcher = world.patient_dispatcher()
    for txn in ("txn_a", "txn_b"):
        for _ in range(2):
            await world.pay(txn)
    world.ledger.failures = {"txn_a": 1}
    before = world.clock()
    assert await dispatcher.deliver_once() == (4, False)
    rows = await outbox_rows(world)
    a_rows = [r for r in rows if r.transaction_id == "txn_a"]
    assert all(r.delivered_time is not None for r in rows if r.transaction_id == "txn_b")
    assert all(r.delivered_time is None for r in a_rows)
    # The refused head counts the attempt; its later rows wait with it, untouched.
    head, *later = sorted(a_rows, key=lambda r: r.seq)
    assert (head.attempts, head.last_error) == (
        1,
        "FAILED_PRECONDITION LEDGER_INVARIANT_VIOLATED: flaky",
    )
    assert all(r.attempts == 0 and r.last_error is None for r in later)
    assert len({r.next_attempt_time for r in a_rows}) == 1
    assert head.next_attempt_time > before
    assert await dispatcher.deliver_once() == (0, False)  # not due yet

    world.clock.ahead += timedelta(minutes=2)
    await dispatcher.drain(timeout=10)
    a_applied = [m.id for m in world.ledger.applied if m.transaction_id == "txn_a"]
    assert a_applied == [r.id for r in sorted(a_rows, key=lambda r: r.seq)]


async def test_a_movement_made_while_its_transaction_waits_for_a_retry_waits_too(
    any_world: World,
) -> None:
    world = any_world
    dispatcher = world.patient_dispatcher()
    await world.pay("txn_a")
    world.ledger.failures = {"txn_a": 1}
    assert await dispatcher.deliver_once() == (0, False)  # refused: waits a minute
    # Written due now, behind the two rows that wait for their retry.
    await world.pay("txn_a")
    await world.pay("txn_b")
    assert await dispatcher.deliver_once() == (2, False)
    assert {m.transaction_id for m in world.ledger.applied} == {"txn_b"}

    world.clock.ahead += timedelta(minutes=2)
    await dispatcher.drain(timeout=10)
    rows = await outbox_rows(world)
    expected = [r.id for r in rows if r.transaction_id == "txn_a"]
    assert len(expected) == 4
    assert [m.id for m in world.ledger.applied if m.transaction_id == "txn_a"] == expected


async def test_a_batch_never_holds_a_movement_without_the_earlier_ones_of_its_transaction(
    any_world: World,
) -> None:
    world = any_world
    dispatcher = world.patient_dispatcher(batch_size=2)
    await world.pay("txn_a")
    world.ledger.failures = {"txn_a": 1}
    assert (await dispatcher.deliver_once())[0] == 0
    await world.pay("txn_a")
    # Every row is due now, the newer ones (written before the retry time) due first:
    # a batch of two must still be the older two.
    world.clock.ahead += timedelta(minutes=2)
    assert await dispatcher.deliver_once() == (2, True)
    rows = await outbox_rows(world)
    expected = [r.id for r in rows if r.transaction_id == "txn_a"]
    assert [m.id for m in world.ledger.applied] == expected[:2]
    await dispatcher.drain(timeout=10)
    assert [m.id for m in world.ledger.applied] == expected


async def test_a_round_larger_than_one_call_is_split_and_keeps_the_order(world: World) -> None:
    dispatcher = OutboxDispatcher(
        world.backend.outbox,
        world.ledger,
        movements_per_call=4,
        idle_poll=60.0,
        base_backoff=0.005,
    )
    for _ in range(3):
        await world.pay("txn_a")
    for _ in range(2):
        await world.pay("txn_b")
    world.ledger.failures = {"txn_a": 1}
    assert await dispatcher.deliver_once() == (4, False)
    rows = await outbox_rows(world)
    ids = {txn: [r.id for r in rows if r.transaction_id == txn] for txn in ("txn_a", "txn_b")}
    # txn_a's head is refused in the first call: its rows of the next call stay unsent.
    assert [[m.id for m in batch] for batch in world.ledger.batches] == [
        ids["txn_a"][:4],
        ids["txn_b"][:2],
        ids["txn_b"][2:],
    ]
    world.ledger.batches.clear()
    await dispatcher.drain(timeout=10)
    assert [m.id for m in world.ledger.applied if m.transaction_id == "txn_a"] == ids["txn_a"]
    assert all(len(batch) <= 4 for batch in world.ledger.batches)


async def test_while_the_transaction_service_is_down_every_transaction_waits(
    world: World,
) -> None:
    for txn in ("txn_a", "txn_b"):
        await world.pay(txn)
    world.ledger.down = True
    assert await world.dispatcher.deliver_once() == (0, False)
    rows = await outbox_rows(world)
    for txn in ("txn_a", "txn_b"):
        head, later = [r for r in rows if r.transaction_id == txn]
        assert (head.attempts, later.attempts) == (1, 0)
        assert head.last_error.startswith("TRANSACTIONS_UNAVAILABLE")
        assert head.next_attempt_time == later.next_attempt_time
    assert all(r.delivered_time is None for r in rows)


async def test_backoff_while_the_transaction_service_is_down_is_capped(world: World) -> None:
    await world.pay("txn_down")
    world.ledger.down = True
    for _ in range(12):
        await world.dispatcher.deliver_once()
        async with world.engine.begin() as conn:  # make every row due again
            await conn.execute(outbox.update().values(next_attempt_time=datetime.now(UTC)))
    before = datetime.now(UTC)
    await world.dispatcher.deliver_once()
    after = datetime.now(UTC)
    async with world.engine.connect() as conn:
        rows = (await conn.execute(sa.select(outbox))).all()
    head = min(rows, key=lambda r: r.seq)
    assert head.attempts == 13
    assert head.last_error.startswith("TRANSACTIONS_UNAVAILABLE")
    assert all(r.delivered_time is None for r in rows)
    # The cap (2 s) less up to a quarter of jitter, from when the round postponed it.
    retry_at = max(r.next_attempt_time for r in rows)
    assert before + timedelta(seconds=1.5) <= retry_at <= after + timedelta(seconds=2)
    # The later row of the transaction waits with its head, never overtaking it.
    assert len({r.next_attempt_time for r in rows}) == 1
    assert next(r for r in rows if r.seq > head.seq).attempts == 0

    world.ledger.down = False
    async with world.engine.begin() as conn:
        await conn.execute(outbox.update().values(next_attempt_time=datetime.now(UTC)))
    await world.dispatcher.drain(timeout=10)
    assert [m.kind.value for m in world.ledger.applied] == ["AUTHORIZATION", "CAPTURE"]


async def test_a_nudge_delivers_within_milliseconds(world: World) -> None:
    task = asyncio.create_task(world.dispatcher.run())
    try:
        await asyncio.sleep(0.05)  # the loop is idle, polling only every 60 s
        await world.pay("txn_fast")
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(2):
            while len(world.ledger.applied) < 2:
                await asyncio.sleep(0.005)
        assert asyncio.get_running_loop().time() - started < 1.0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_reconciler_does_not_starve_behind_long_pending_payments(world: World) -> None:
    ids = []
    for _ in range(5):
        payment = await world.service.create_payment(
            MERCHANT,
            CreatePaymentInput(
                transaction_id="txn_slow",
                amount=100,
                method=PaymentMethodType.BANK_TRANSFER,
                bank_transfer=BankTransferInput("Ada", "12345678"),
            ),
            idempotency_key=None,
        )
        ids.append(payment.id)
    asked: list[str] = []
    original = world.connector.status

    async def spy(payment_id: str) -> ConnectorResult:
        asked.append(payment_id)
        return await original(payment_id)

    world.connector.status = spy  # type: ignore[method-assign]  # a spy on the sandbox
    reconciler = Reconciler(world.service.reconcile_payment, batch_size=2)
    for _ in range(3):
        assert await reconciler.run_once(grace=timedelta(0)) == 0
    assert sorted(set(asked)) == sorted(ids)


async def test_housekeeping_drops_old_delivered_movements_only(world: World) -> None:
    await world.pay("txn_old")
    world.ledger.down = True
    await world.pay("txn_new")
    world.ledger.down = False
    await world.dispatcher.deliver_once()
    world.ledger.down = True
    await world.pay("txn_pending")
    payment = await world.pay("txn_pending", manual=True)
    assert payment.status is PaymentStatus.REQUIRES_CAPTURE
    removed = await world.backend.outbox.purge(
        delivered_before=datetime.now(UTC) + timedelta(seconds=1)
    )
    assert removed == 4
    async with world.engine.connect() as conn:
        left = (await conn.execute(sa.select(outbox.c.transaction_id))).scalars().all()
    assert sorted(left) == ["txn_pending"] * 3
