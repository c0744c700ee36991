"""The outbox dispatcher and the reconciler against the real store (PostgreSQL), with a
scripted transaction ledger: order per transaction, backoff, nudges, housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pi.payments import main as payments_main
from pi.payments.connectors.base import ConnectorResult
from pi.payments.connectors.sandbox import SandboxConnector
from pi.payments.domain import (
    BankTransferInput,
    CaptureMode,
    CardInput,
    PaymentMethodType,
    PaymentStatus,
)
from pi.payments.ledger_client import TransactionFacts
from pi.payments.outbox import OutboxDispatcher
from pi.payments.reconciler import Reconciler
from pi.payments.service import CreatePaymentInput, PaymentService
from pi.payments.store import PaymentStore
from pi.payments.tables import idempotency_keys, outbox
from pi.platform import migrations
from pi.platform.config import Settings
from pi.platform.errors import Unavailable
from pi.platform.idempotency import Idempotency
from pi.platform.principal import Principal
from pi.platform.validation import PageToken
from pi.transactions.domain import Movement

MERCHANT = Principal.merchant("mer_outbox")
EXPIRY = datetime.now(UTC).year + 2


@dataclass
class ScriptedLedger:
    """Knows every transaction id it is asked about (amount 10 000 USD); records applied
    movements; fails while `down` or for the next `failures[txn]` calls of a transaction."""

    down: bool = False
    failures: dict[str, int] = field(default_factory=dict)
    applied: list[Movement] = field(default_factory=list)
    calls: int = 0

    async def lookup_transaction(self, merchant_id: str, transaction_id: str) -> TransactionFacts:
        return TransactionFacts(transaction_id, merchant_id, 10_000, "USD", cancelled=False)

    async def apply_movement(self, movement: Movement) -> None:
        self.calls += 1
        if self.down:
            raise Unavailable("down", reason="TRANSACTIONS_UNAVAILABLE")
        left = self.failures.get(movement.transaction_id, 0)
        if left:
            self.failures[movement.transaction_id] = left - 1
            raise Unavailable("flaky", reason="TRANSACTIONS_UNAVAILABLE")
        self.applied.append(movement)


@dataclass
class World:
    engine: AsyncEngine
    store: PaymentStore
    ledger: ScriptedLedger
    connector: SandboxConnector
    dispatcher: OutboxDispatcher
    service: PaymentService

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


@pytest.fixture
async def world(
    settings_factory: Callable[..., Settings], make_engine: Callable[..., AsyncEngine]
) -> AsyncIterator[World]:
    settings = settings_factory("payments")
    await asyncio.to_thread(
        migrations.upgrade, settings, settings.db_schema, payments_main.MIGRATIONS
    )
    engine = make_engine(settings.db_schema)
    store = PaymentStore(engine)
    ledger = ScriptedLedger()
    connector = SandboxConnector(settle_after=timedelta(days=1))
    dispatcher = OutboxDispatcher(store, ledger, idle_poll=60.0, base_backoff=0.005)
    service = PaymentService(
        store,
        connector,
        ledger,
        idempotency=Idempotency(idempotency_keys),
        fingerprint_key=secrets.token_bytes(32),
        request_key=secrets.token_bytes(32),
        page_tokens=PageToken(secrets.token_bytes(32)),
        notify=dispatcher.nudge,
    )
    yield World(engine, store, ledger, connector, dispatcher, service)


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


async def test_backoff_while_the_transaction_service_is_down_is_capped(world: World) -> None:
    await world.pay("txn_down")
    world.ledger.down = True
    for _ in range(12):
        await world.dispatcher.deliver_once()
        async with world.engine.begin() as conn:  # make every row due again
            await conn.execute(outbox.update().values(next_attempt_time=datetime.now(UTC)))
    await world.dispatcher.deliver_once()
    async with world.engine.connect() as conn:
        rows = (await conn.execute(sa.select(outbox))).all()
    head = min(rows, key=lambda r: r.seq)
    assert head.attempts == 13
    assert head.last_error.startswith("TRANSACTIONS_UNAVAILABLE")
    assert all(r.delivered_time is None for r in rows)
    wait = max(r.next_attempt_time for r in rows) - datetime.now(UTC)
    assert timedelta(seconds=1) < wait <= timedelta(seconds=2)
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
    reconciler = Reconciler(world.store, world.service, batch_size=2)
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
    removed = await world.store.purge(
        delivered_before=datetime.now(UTC) + timedelta(seconds=1),
        idempotency=Idempotency(idempotency_keys),
    )
    assert removed == 4
    async with world.engine.connect() as conn:
        left = (await conn.execute(sa.select(outbox.c.transaction_id))).scalars().all()
    assert sorted(left) == ["txn_pending"] * 3
