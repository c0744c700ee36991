"""Movement delivery in batches (ApplyMovements) between the real payment and transaction
services over gRPC, on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from generated.pi.transactions.v1 import transactions_pb2 as tpb
from pi.payments.adapters.postgres.tables import outbox
from pi.payments.app.ports import LedgerError
from pi.platform.db.statements import Statement
from pi.platform.kernel.errors import Unavailable
from pi.platform.ledger import Movement, MovementKind
from pi.transactions.adapters.postgres.tables import applied_movements

M = "mer_batches"


def move(transaction_id: str, kind: MovementKind, id: str, a: int = 0, c: int = 0) -> Movement:
    return Movement(
        id=id,
        merchant_id=M,
        transaction_id=transaction_id,
        payment_id=None,
        kind=kind,
        authorized_delta=a,
        captured_delta=c,
        refunded_delta=0,
        occur_time=datetime.now(UTC),
    )


async def test_movements_made_while_the_transaction_service_is_down_converge(mesh: Any) -> None:
    txns = [await mesh.create_transaction(M, 10_000) for _ in range(4)]
    held = {}
    for txn in txns:
        held[txn.id] = await mesh.pay(M, txn.id, amount=3000, manual=True)
        await mesh.pay(M, txn.id, amount=2000)
    await mesh.drain()

    await mesh.stop_transactions()
    for txn in txns:
        await mesh.capture(M, held[txn.id].id, amount=1000)
        paid = await mesh.pay(M, txn.id, amount=1000)
        await mesh.refund(M, paid.id, amount=400)
        await mesh.refund(M, paid.id, amount=600)
    await mesh.start_transactions()
    # Every waiting row due at once, so a round carries whole chains of a transaction
    # (COMPLETED -> PARTIALLY_REFUNDED -> REFUNDED -> PARTIALLY_REFUNDED) in one call.
    async with mesh.payments_engine.begin() as conn:
        await conn.execute(
            outbox.update()
            .where(outbox.c.delivered_time.is_(None))
            .values(next_attempt_time=datetime.now(UTC))
        )
    await mesh.drain()

    for txn in txns:
        after = await mesh.assert_transaction_matches_payments(M, txn.id)
        assert (after.captured_amount, after.refunded_amount) == (4000, 1000)
        assert after.status == tpb.TRANSACTION_STATUS_PARTIALLY_REFUNDED
    async with mesh.payments_engine.connect() as conn:
        sent = set((await conn.execute(sa.select(outbox.c.id))).scalars())
    async with mesh.transactions_app.database.reading() as conn:
        applied = {row.id for row in await Statement(sa.select(applied_movements.c.id)).all(conn)}
    assert applied == sent
    assert len(sent) == 4 * 8


async def test_the_grpc_ledger_reports_an_outcome_per_movement(mesh: Any) -> None:
    ledger = mesh.payments_app.ledger
    t1, t2 = [await mesh.create_transaction(M, 500) for _ in range(2)]
    batch = [
        move(t1.id, MovementKind.AUTHORIZATION, "mov_g1", a=500),
        move(t2.id, MovementKind.CAPTURE, "mov_g2", c=10),  # nothing authorized
        move(t2.id, MovementKind.AUTHORIZATION, "mov_g3", a=10),
        move("txn_unknown", MovementKind.FAILURE, "mov_g4"),
        move(t1.id, MovementKind.CAPTURE, "mov_g5", c=500),
    ]
    outcomes = await ledger.apply_movements(batch)
    assert [o.movement_id for o in outcomes] == [m.id for m in batch]
    assert [o.applied for o in outcomes] == [True, False, False, False, True]
    refusals = [(o.error.code, o.error.reason) for o in outcomes if o.error is not None]
    assert refusals == [
        ("FAILED_PRECONDITION", "LEDGER_INVARIANT_VIOLATED"),
        ("ABORTED", "EARLIER_MOVEMENT_NOT_APPLIED"),
        ("NOT_FOUND", "TRANSACTION_NOT_FOUND"),
    ]
    assert (await mesh.get_transaction(M, t1.id)).status == tpb.TRANSACTION_STATUS_COMPLETED
    assert (await ledger.apply_movements(batch[:1]))[0].applied  # a duplicate

    with pytest.raises(LedgerError) as caught:
        await ledger.apply_movements(batch[:1] * 1001)
    assert caught.value.code == "INVALID_ARGUMENT"
    await mesh.stop_transactions()
    with pytest.raises(Unavailable):
        await ledger.apply_movements(batch[:1])
