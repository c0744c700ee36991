"""ApplyMovements: batches of movements in one unit of work, on real PostgreSQL, through
the use case, the PostgreSQL adapter's statements and over gRPC."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from generated.pi.transactions.v1 import transactions_pb2 as pb
from pi.platform.kernel.errors import (
    InvalidArgument,
)
from pi.platform.kernel.principal import Principal
from pi.transactions.adapters.postgres.tables import applied_movements
from pi.transactions.adapters.postgres.uow import PostgresUnits
from pi.transactions.app import apply_movements as apply_module
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.domain import (
    AppliedMovement,
    Movement,
    MovementKind,
    Transaction,
    TransactionStatus,
    apply_movement,
    new_transaction,
)
from pi.transactions.domain import batches as batches_module
from tests.support import movements as scenarios
from tests.support.movements import ALICE, amounts, create, interleave, move, outcome

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SERVICE = Principal.service()
K = MovementKind
S = TransactionStatus

Count = Callable[..., Awaitable[int]]


async def recorded_ids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(applied_movements.c.id))).scalars())


@contextmanager
def statements() -> Iterator[list[str]]:
    """The first word of every statement sent to PostgreSQL inside the block.

    Counted on psycopg's cursors, so both SQLAlchemy's `conn.execute` and the prebuilt
    `pi.platform.db.statements` (which bypass SQLAlchemy's cursor events) are seen. An
    `executemany` counts once per run: pipelined in one round trip, each run is still a
    statement the server parses and executes.
    """
    sent: list[str] = []
    execute = psycopg.AsyncCursor.execute
    executemany = psycopg.AsyncCursor.executemany

    async def counted_execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query).split()[0])
        return await execute(cursor, query, *args, **kwargs)

    async def counted_executemany(cursor: Any, query: Any, runs: Any, **kwargs: Any) -> Any:
        runs = list(runs)
        sent.extend([str(query).split()[0]] * len(runs))
        return await executemany(cursor, query, runs, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(psycopg.AsyncCursor, "execute", counted_execute)
        patch.setattr(psycopg.AsyncCursor, "executemany", counted_executemany)
        yield sent


def every_transition(made: Sequence[Transaction]) -> list[list[Movement]]:
    """Movement chains that walk through every status change the trigger allows."""
    t1, t2, t3, t4 = made
    return [
        [  # PENDING -> AUTHORIZED -> COMPLETED -> PARTIALLY_REFUNDED -> REFUNDED
            move(t1, K.AUTHORIZATION, "t1_auth", a=1000),
            move(t1, K.CAPTURE, "t1_capture", a=-300, c=700),
            move(t1, K.REFUND, "t1_refund_1", r=200),
            move(t1, K.REFUND, "t1_refund_2", r=500),
        ],
        [  # PENDING -> FAILED -> AUTHORIZED -> PENDING -> ... -> CANCELLED, and after it
            move(t2, K.FAILURE, "t2_fail"),
            move(t2, K.AUTHORIZATION, "t2_auth", a=500),
            move(t2, K.VOID, "t2_void", a=-500),
            move(t2, K.AUTHORIZATION, "t2_auth_2", a=200),
            move(t2, K.CANCELLATION, "t2_cancel"),
            move(t2, K.VOID, "t2_void_2", a=-200),
        ],
        [  # AUTHORIZED -> FAILED (the authorization voided after a failed attempt)
            move(t3, K.AUTHORIZATION, "t3_auth", a=100),
            move(t3, K.FAILURE, "t3_fail"),
            move(t3, K.VOID, "t3_void", a=-100),
            move(t3, K.CANCELLATION, "t3_cancel"),
        ],
        [  # COMPLETED -> REFUNDED -> PARTIALLY_REFUNDED (another payment captured)
            move(t4, K.AUTHORIZATION, "t4_auth", a=300),
            move(t4, K.CAPTURE, "t4_capture", c=300),
            move(t4, K.REFUND, "t4_refund", r=300),
            move(t4, K.AUTHORIZATION, "t4_auth_2", a=100),
            move(t4, K.CAPTURE, "t4_capture_2", c=100),
        ],
    ]


def expected_after(made: Sequence[Transaction], chains: list[list[Movement]]) -> list[Any]:
    """What the domain gives, one movement at a time."""
    finals = []
    for transaction, chain in zip(made, chains, strict=True):
        for movement in chain:
            transaction = apply_movement(transaction, movement)
        finals.append(amounts(transaction))
    return finals


# The use case -----------------------------------------------------------------------------


async def test_a_batch_walks_every_transition_in_one_unit_of_work_of_three_statements(
    service: TransactionUseCases, count_rows: Count
) -> None:
    made = [await create(service) for _ in range(4)]
    chains = every_transition(made)
    batch = interleave(chains)
    with statements() as sent:
        results = await service.apply_movements(SERVICE, batch)
    assert [outcome(r) for r in results] == [("OK", None)] * len(batch)
    assert [r.movement_id for r in results] == [m.id for m in batch]
    # Lock, record, then one set-based UPDATE per round of writes (the n-th write of
    # every row together; the trigger needs a write per status change it judges: t2
    # takes three). (A write the trigger refused would have fallen back to one unit of
    # work per movement.)
    assert sent == ["SELECT", "INSERT", "UPDATE", "UPDATE", "UPDATE"]
    stored = [amounts(await service.get_transaction(ALICE, t.id)) for t in made]
    assert stored == expected_after(made, chains)
    assert stored[0] == (S.REFUNDED, 700, 700, 700)
    assert stored[1][0] is S.CANCELLED
    assert stored[3] == (S.PARTIALLY_REFUNDED, 400, 400, 300)
    assert await count_rows("applied_movements") == len(batch)


async def test_the_statements_of_a_batch_do_not_grow_with_its_size(
    service: TransactionUseCases,
) -> None:
    made = [await create(service, amount=5000) for _ in range(40)]
    batch = interleave(
        [
            [move(t, K.AUTHORIZATION, f"{t.id}_a", a=5000), move(t, K.CAPTURE, f"{t.id}_c", c=5000)]
            for t in made
        ]
    )
    with statements() as sent:
        results = await service.apply_movements(SERVICE, batch)
    assert all(r.error is None for r in results)
    # Forty card payments captured at once: each row goes PENDING -> AUTHORIZED ->
    # COMPLETED (two writes the trigger judges), so two UPDATEs for all forty rows.
    assert sent == ["SELECT", "INSERT", "UPDATE", "UPDATE"]
    for transaction in made:
        assert (await service.get_transaction(ALICE, transaction.id)).status is S.COMPLETED


async def test_duplicates_apply_once_and_a_reused_id_is_already_exists(
    service: TransactionUseCases, engine: AsyncEngine
) -> None:
    await scenarios.duplicates_apply_once_and_a_reused_id_is_refused(
        service, recorded=lambda: recorded_ids(engine)
    )


async def test_a_refused_movement_stops_its_transaction_only_and_is_not_recorded(
    service: TransactionUseCases, engine: AsyncEngine
) -> None:
    await scenarios.a_refused_movement_stops_its_transaction_only(
        service, recorded=lambda: recorded_ids(engine)
    )


async def test_unknown_foreign_and_malformed_movements_are_reported_per_movement(
    service: TransactionUseCases, engine: AsyncEngine
) -> None:
    t1, t2, t3 = [await create(service) for _ in range(3)]
    unknown = dataclasses.replace(move(t1, K.FAILURE, "m_unknown"), transaction_id="txn_nope")
    results = await service.apply_movements(
        SERVICE,
        [
            unknown,
            move(t1, K.AUTHORIZATION, "m_foreign", a=5, merchant_id="mer_bob"),
            move(t1, K.AUTHORIZATION, "m_after_foreign", a=5),
            move(t2, K.VOID, "m_bad_shape", a=5),
            move(t2, K.AUTHORIZATION, "m_after_bad", a=5),
            move(t3, K.AUTHORIZATION, "m_fine", a=5),
        ],
    )
    assert [outcome(r) for r in results] == [
        ("NOT_FOUND", "TRANSACTION_NOT_FOUND"),
        ("NOT_FOUND", "TRANSACTION_NOT_FOUND"),
        ("ABORTED", "EARLIER_MOVEMENT_NOT_APPLIED"),
        ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("ABORTED", "EARLIER_MOVEMENT_NOT_APPLIED"),
        ("OK", None),
    ]
    bad = results[3].error
    assert isinstance(bad, InvalidArgument)
    assert [v.field for v in bad.violations] == ["movement.authorized_delta"]
    assert await recorded_ids(engine) == {"m_fine"}
    assert (await service.get_transaction(ALICE, t1.id)) == t1
    assert (await service.get_transaction(ALICE, t2.id)) == t2


async def test_a_batch_must_hold_1_to_1000_movements_and_come_from_the_platform(
    service: TransactionUseCases, count_rows: Count
) -> None:
    await scenarios.a_batch_holds_1_to_1000_movements_from_the_platform(service, count_rows)


async def test_a_database_refusal_falls_back_to_one_movement_at_a_time(
    service: TransactionUseCases,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t1, t2 = [await create(service) for _ in range(2)]

    def no_checks(transaction: Transaction, movement: Movement, *, now: datetime) -> Transaction:
        return dataclasses.replace(
            transaction,
            authorized_amount=transaction.authorized_amount + movement.authorized_delta,
            status=S.AUTHORIZED,
            update_time=now,
        )

    # Bypassed in the batch (the domain's plan) and in the one-by-one fallback alike.
    monkeypatch.setattr(batches_module, "apply_movement", no_checks)
    monkeypatch.setattr(apply_module, "apply_movement", no_checks)
    batch = [
        move(t1, K.AUTHORIZATION, "m_too_much", a=1001),  # the CHECK constraint refuses it
        move(t1, K.AUTHORIZATION, "m_after", a=1),
        move(t2, K.AUTHORIZATION, "m_fine", a=100),
    ]
    results = await service.apply_movements(SERVICE, batch)
    assert [outcome(r) for r in results] == [
        ("FAILED_PRECONDITION", "LEDGER_INVARIANT_VIOLATED"),
        ("ABORTED", "EARLIER_MOVEMENT_NOT_APPLIED"),
        ("OK", None),
    ]
    assert await recorded_ids(engine) == {"m_fine"}
    assert await service.get_transaction(ALICE, t1.id) == t1
    assert (await service.get_transaction(ALICE, t2.id)).authorized_amount == 100


async def test_concurrent_batches_over_the_same_transactions_neither_deadlock_nor_lose_updates(
    service: TransactionUseCases, count_rows: Count
) -> None:
    made = [await create(service, amount=100_000) for _ in range(6)]
    batches = []
    for n in range(12):
        order = made if n % 2 else list(reversed(made))  # opposite orders
        batches.append([move(t, K.AUTHORIZATION, f"m_{n}_{t.id}", a=10 + n) for t in order])
    # Every batch delivered twice, all at once.
    answers = await asyncio.gather(*(service.apply_movements(SERVICE, b) for b in batches * 2))
    assert all(r.error is None for results in answers for r in results)
    for transaction in made:
        stored = await service.get_transaction(ALICE, transaction.id)
        assert stored.authorized_amount == sum(10 + n for n in range(12))
    assert await count_rows("applied_movements") == 12 * len(made)


# The PostgreSQL adapter's batch statements ---------------------------------------------------


async def stored(units: PostgresUnits, transaction_id: str) -> Transaction:
    transaction = new_transaction(
        id=transaction_id,
        merchant_id="mer_alice",
        amount=1000,
        currency="USD",
        description="",
        metadata={},
        now=datetime(2030, 1, 1, tzinfo=UTC),
    )
    async with units() as unit:
        unit.transactions.add(transaction)
        await unit.commit()
    return transaction


def as_recorded(movement: Movement, apply_time: datetime) -> AppliedMovement:
    """The `applied_movements` row of a movement."""
    return AppliedMovement.of(movement, apply_time)


async def test_the_adapter_records_a_batch_exactly_as_it_records_one_movement(
    units: PostgresUnits,
) -> None:
    t = await stored(units, "txn_store")
    tokyo = timezone(timedelta(hours=9))
    at = datetime(2030, 1, 2, 8, 30, 0, 250000, tzinfo=tokyo)
    authorized = move(t, K.AUTHORIZATION, "m_auth", a=500)
    failed = dataclasses.replace(move(t, K.FAILURE, "m_fail"), payment_id=None, occur_time=at)
    voided = move(t, K.VOID, "m_void", a=-100)
    apply_time = datetime(2030, 1, 3, 12, tzinfo=tokyo)
    async with units() as unit:
        movements = unit.movements
        recorded = await movements.record_many([authorized, failed], apply_time)
        assert await movements.record(voided, apply_time)
        assert not await movements.record(authorized, apply_time)
        again = await movements.record_many(
            [voided, move(t, K.CAPTURE, "m_capture", c=1)], apply_time
        )
        await movements.forget(["m_capture", "m_unknown"])
        rows = await movements.get_many(["m_auth", "m_fail", "m_void", "m_capture", "m_x"])
        one = await movements.get("m_fail")
        assert await movements.get("m_capture") is None
        await unit.commit()
    assert (recorded, again) == ({"m_auth", "m_fail"}, {"m_capture"})
    assert rows == {m.id: as_recorded(m, apply_time) for m in (authorized, failed, voided)}
    assert one is not None
    assert one == rows["m_fail"]
    assert (one.occur_time.tzinfo, one.apply_time.tzinfo) == (UTC, UTC)


async def test_the_adapter_looks_ids_up_whole_never_cut_to_the_column_length(
    units: PostgresUnits,
) -> None:
    t = await stored(units, "txn_" + "a" * 36)  # as long as the column allows
    movement_id = "m" * 128
    async with units() as unit:
        await unit.movements.record_many([move(t, K.FAILURE, movement_id)], NOW)
        assert await unit.transactions.lock_many([t.id + "a", "txn_unknown"]) == {}
        assert await unit.movements.get_many([movement_id + "m"]) == {}
        await unit.movements.forget([movement_id + "m"])
        assert list(await unit.movements.get_many([movement_id])) == [movement_id]
        assert await unit.transactions.lock_many([t.id]) == {t.id: t}
        await unit.commit()


# Over gRPC ----------------------------------------------------------------------------------


def _ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def pb_move(transaction: Any, kind: int, id: str, **deltas: int) -> pb.Movement:
    return pb.Movement(
        id=id,
        merchant_id=transaction.merchant_id,
        transaction_id=transaction.id,
        payment_id="pay_1",
        kind=kind,  # type: ignore[arg-type]
        occur_time=_ts(datetime.now(UTC)),
        **deltas,
    )


def reason_and_fields(status: Any) -> tuple[str | None, list[str]]:
    reason, fields = None, []
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return reason, fields


async def test_apply_movements_over_grpc_answers_a_status_per_movement_in_order(
    rpc: Any, count_rows: Count
) -> None:
    alice = rpc.merchant("mer_alice")
    order = pb.Transaction(amount=1000, currency="USD")
    t1, t2 = [
        (
            await rpc.transactions.CreateTransaction(
                pb.CreateTransactionRequest(transaction=order), metadata=alice
            )
        ).transaction
        for _ in range(2)
    ]
    request = pb.ApplyMovementsRequest(
        movements=[
            pb_move(t1, pb.MOVEMENT_KIND_AUTHORIZATION, "g1", authorized_delta=1000),
            pb_move(t2, pb.MOVEMENT_KIND_UNSPECIFIED, "g2"),  # cannot be read
            pb_move(t1, pb.MOVEMENT_KIND_CAPTURE, "g3", captured_delta=1000),
            pb_move(t2, pb.MOVEMENT_KIND_AUTHORIZATION, "g4", authorized_delta=5),
            pb_move(t1, pb.MOVEMENT_KIND_REFUND, "g5", refunded_delta=2000),
        ]
    )
    response = await rpc.ledger.ApplyMovements(request, metadata=rpc.service)
    assert [r.movement_id for r in response.results] == ["g1", "g2", "g3", "g4", "g5"]
    codes = [r.status.code for r in response.results]
    assert codes == [
        code_pb2.OK,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.OK,
        code_pb2.ABORTED,
        code_pb2.FAILED_PRECONDITION,
    ]
    assert reason_and_fields(response.results[1].status) == ("INVALID_ARGUMENT", ["movement.kind"])
    assert reason_and_fields(response.results[3].status)[0] == "EARLIER_MOVEMENT_NOT_APPLIED"
    assert reason_and_fields(response.results[4].status)[0] == "LEDGER_INVARIANT_VIOLATED"
    assert response.results[0].status.message == ""
    got = await rpc.transactions.GetTransaction(pb.GetTransactionRequest(id=t1.id), metadata=alice)
    assert got.transaction.status == pb.TRANSACTION_STATUS_COMPLETED
    assert await count_rows("applied_movements") == 2

    again = await rpc.ledger.ApplyMovements(request, metadata=rpc.service)
    assert [r.status.code for r in again.results] == codes


async def test_apply_movements_over_grpc_checks_the_request_and_the_caller(
    rpc: Any, count_rows: Count
) -> None:
    one = pb_move(pb.Transaction(id="txn_x", merchant_id="mer_x"), pb.MOVEMENT_KIND_FAILURE, "x")
    for request in (
        pb.ApplyMovementsRequest(),
        pb.ApplyMovementsRequest(movements=[one] * 1001),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rpc.ledger.ApplyMovements(request, metadata=rpc.service)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "movements" in (caught.value.details() or "")
    for metadata in (rpc.merchant("mer_x"), rpc.admin):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rpc.ledger.ApplyMovements(
                pb.ApplyMovementsRequest(movements=[one]), metadata=metadata
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    unknown = await rpc.ledger.ApplyMovements(
        pb.ApplyMovementsRequest(movements=[one]), metadata=rpc.service
    )
    assert [r.status.code for r in unknown.results] == [code_pb2.NOT_FOUND]
    assert await count_rows("applied_movements") == 0
