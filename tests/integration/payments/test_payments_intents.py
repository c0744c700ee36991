"""Capture, cancel and refund around the processor on PostgreSQL: the intent is committed
before the call (no transaction or lock is held while the processor answers), a crash
between the processor's approval and the settlement's commit leaves an intent the
reconciler settles, a declined refund is a FAILED row with its reason, and concurrent
duplicates of one request reach the processor with one key and move money once."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from pi.payments.adapters.postgres.tables import outbox, payments, refunds
from pi.payments.adapters.processor import SandboxConnector
from pi.payments.app.create_payment import CreatePaymentInput
from pi.payments.app.ports import MovementOutcome, TransactionFacts
from pi.payments.app.use_cases import PaymentUseCases, payment_use_cases
from pi.payments.domain import CaptureMode, CardInput, PaymentMethodType, PaymentStatus
from pi.payments.entrypoints.workers import Reconciler
from pi.platform.kernel.errors import FailedPrecondition, Unavailable
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.principal import Principal
from tests.support.processors import Crash, Faulty

MERCHANT = Principal.merchant("mer_intents")
EXPIRY = datetime.now(UTC).year + 2


class Ledger:
    async def lookup_transaction(self, merchant_id: str, transaction_id: str) -> TransactionFacts:
        return TransactionFacts(transaction_id, merchant_id, 10_000, "USD", cancelled=False)

    async def apply_movements(self, movements: Any) -> list[MovementOutcome]:
        return [MovementOutcome(m.id) for m in movements]


@dataclass
class World:
    backend: Any
    faulty: Faulty
    use: PaymentUseCases

    async def pay(self, transaction_id: str = "txn_1", amount: int = 400) -> Any:
        return await self.use.create_payment(
            MERCHANT,
            CreatePaymentInput(
                transaction_id,
                amount,
                PaymentMethodType.CARD,
                CaptureMode.MANUAL,
                card=CardInput("4242424242424242", 1, EXPIRY, "123"),
            ),
            idempotency_key=None,
        )

    async def rows(self, table: sa.Table, **where: Any) -> list[Any]:
        query = sa.select(table).where(*(table.c[k] == v for k, v in where.items()))
        async with self.backend.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    async def movements(self, transaction_id: str = "txn_1") -> list[str]:
        rows = await self.rows(outbox, transaction_id=transaction_id)
        return [row.kind for row in sorted(rows, key=lambda r: r.seq)]

    async def reconcile(self) -> int:
        return await Reconciler(self.use.reconcile_payment).run_once(grace=timedelta(0))


@pytest.fixture
async def world(make_backend: Callable[[str], Awaitable[Any]]) -> World:
    backend = await make_backend("postgresql")
    faulty = Faulty(SandboxConnector())
    use = payment_use_cases(
        backend.units,
        faulty,
        Ledger(),
        card_key=secrets.token_bytes(32),
        request_key=secrets.token_bytes(32),
        page_tokens=PageToken(secrets.token_bytes(32)),
    )
    return World(backend, faulty, use)


async def test_the_capture_intent_is_committed_before_the_processor_is_called(
    world: World,
) -> None:
    held = await world.pay()
    seen: list[tuple[str, int]] = []
    capture = world.faulty.sandbox.capture

    async def looking(request: Any) -> Any:
        # Another connection sees the intent while the processor works: it is committed,
        # and no lock on the payment is held (FOR UPDATE NOWAIT would fail otherwise).
        async with world.backend.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(payments.c.status, payments.c.capturing_amount)
                    .where(payments.c.id == held.id)
                    .with_for_update(nowait=True)
                )
            ).one()
            await conn.rollback()
        seen.append((row.status, row.capturing_amount))
        return await capture(request)

    world.faulty.sandbox.capture = looking  # type: ignore[method-assign]  # a spy
    captured = await world.use.capture_payment(MERCHANT, held.id, amount=300)
    assert seen == [("CAPTURING", 300)]
    assert (captured.status, captured.captured_amount) == (PaymentStatus.SUCCEEDED, 300)


async def test_a_crash_between_approval_and_settle_commit_is_settled_by_the_reconciler(
    world: World,
) -> None:
    held = await world.pay()
    paid = await world.pay("txn_2", amount=500)
    world.faulty.crash.update({"capture", "void", "refund"})
    with pytest.raises(Crash):
        await world.use.capture_payment(MERCHANT, held.id, amount=300, idempotency_key="c")
    await world.pay("txn_3")
    voided = (await world.use.list_payments(MERCHANT, transaction_id="txn_3")).payments[0]
    with pytest.raises(Crash):
        await world.use.cancel_payment(MERCHANT, voided.id)
    with pytest.raises(Crash):
        await world.use.capture_payment(MERCHANT, paid.id)
    world.faulty.crash.difference_update({"capture", "void"})
    assert await world.reconcile() == 3  # the two captures and the void
    with pytest.raises(Crash):
        await world.use.refund_payment(MERCHANT, paid.id, amount=200, idempotency_key="r")
    (pending,) = await world.rows(refunds, payment_id=paid.id)
    assert (pending.status, pending.failure_reason) == ("PENDING", None)
    world.faulty.crash.clear()
    assert await world.reconcile() == 1

    rows = {row.id: row for row in await world.rows(payments)}
    assert (rows[held.id].status, rows[held.id].captured_amount) == ("SUCCEEDED", 300)
    assert rows[voided.id].status == "CANCELLED"
    assert (rows[paid.id].refunded_amount, rows[paid.id].refunding_amount) == (200, 0)
    assert (await world.rows(refunds, id=pending.id))[0].status == "SUCCEEDED"
    assert await world.movements() == ["AUTHORIZATION", "CAPTURE"]
    assert await world.movements("txn_2") == ["AUTHORIZATION", "CAPTURE", "REFUND"]
    assert await world.movements("txn_3") == ["AUTHORIZATION", "VOID"]
    # Retries with the keys get the settled results, not a second change.
    again = await world.use.capture_payment(MERCHANT, held.id, amount=300, idempotency_key="c")
    assert again.captured_amount == 300
    refund = await world.use.refund_payment(MERCHANT, paid.id, amount=200, idempotency_key="r")
    assert refund.refund.id == pending.id
    assert await world.movements("txn_2") == ["AUTHORIZATION", "CAPTURE", "REFUND"]
    assert await world.reconcile() == 0


async def test_a_declined_refund_is_stored_failed_with_its_reason(world: World) -> None:
    held = await world.pay()
    await world.use.capture_payment(MERCHANT, held.id)
    world.faulty.decline.add("refund")
    failed = await world.use.refund_payment(MERCHANT, held.id, amount=100, idempotency_key="r")
    (row,) = await world.rows(refunds, payment_id=held.id)
    assert (row.id, row.status, row.failure_reason, row.amount) == (
        failed.refund.id,
        "FAILED",
        "PROCESSOR_DECLINED",
        100,
    )
    (payment,) = await world.rows(payments, id=held.id)
    assert (payment.refunded_amount, payment.refunding_amount) == (0, 0)
    assert await world.movements() == ["AUTHORIZATION", "CAPTURE"]
    replay = await world.use.refund_payment(MERCHANT, held.id, amount=100, idempotency_key="r")
    assert replay == failed


async def test_an_unanswered_capture_stays_capturing_and_holds_no_lock(world: World) -> None:
    held = await world.pay()
    world.faulty.silent.add("capture")
    with pytest.raises(Unavailable):
        await world.use.capture_payment(MERCHANT, held.id, idempotency_key="c")
    (row,) = await world.rows(payments, id=held.id)
    assert (row.status, row.capturing_amount) == ("CAPTURING", 400)
    with pytest.raises(FailedPrecondition) as refused:
        await world.use.cancel_payment(MERCHANT, held.id)
    assert refused.value.reason == "PAYMENT_NOT_CANCELLABLE"
    assert await world.reconcile() == 0  # still no answer: left for the next round
    world.faulty.silent.clear()
    assert await world.reconcile() == 1
    (row,) = await world.rows(payments, id=held.id)
    assert (row.status, row.captured_amount, row.capturing_amount) == ("SUCCEEDED", 400, 0)


async def test_concurrent_duplicates_reach_the_processor_with_one_key_and_move_money_once(
    world: World,
) -> None:
    held = await world.pay()
    paid = await world.pay("txn_2", amount=500)
    await world.use.capture_payment(MERCHANT, paid.id)
    captures = [
        world.use.capture_payment(MERCHANT, held.id, amount=250, idempotency_key="cap")
        for _ in range(6)
    ]
    refund_calls = [
        world.use.refund_payment(MERCHANT, paid.id, amount=100, idempotency_key="ref")
        for _ in range(6)
    ]
    results = await asyncio.gather(*captures, *refund_calls, return_exceptions=True)
    # A duplicate that found the key locked by the first may be told to retry; none
    # makes a second change.
    done = [r for r in results if not isinstance(r, BaseException)]
    assert done, results
    for error in (r for r in results if isinstance(r, BaseException)):
        assert getattr(error, "reason", None) in {"IDEMPOTENCY_KEY_IN_USE"}, error
    assert {key for op, key in world.faulty.calls if op == "capture"} == {
        f"capture_{held.id}",
        f"capture_{paid.id}",
    }
    assert len({key for op, key in world.faulty.calls if op == "refund"}) == 1
    assert await world.movements() == ["AUTHORIZATION", "CAPTURE"]
    assert await world.movements("txn_2") == ["AUTHORIZATION", "CAPTURE", "REFUND"]
    assert len(await world.rows(refunds)) == 1
