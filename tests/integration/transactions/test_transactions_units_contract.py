"""The unit of work's contract, the same assertions on the in-memory store and on
PostgreSQL: what the use cases rely on (uniqueness, idempotency keys, ordering and
pages, the modes) and the invariants the database keeps, refused with the same errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pi.platform.kernel.errors import Aborted, AlreadyExists, DomainError, FailedPrecondition
from pi.platform.kernel.ids import new_id
from pi.platform.kernel.money import MAX_AMOUNT
from pi.platform.kernel.units import Mode, optimistically
from pi.transactions.adapters.memory import MemoryUnits
from pi.transactions.adapters.postgres.uow import PostgresUnits
from pi.transactions.app.ports import Cursor, ListQuery, StorageRefused, UnitOfWork, UnitsOfWork
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

T0 = datetime(2030, 1, 1, tzinfo=UTC)
K = MovementKind
S = TransactionStatus


@pytest.fixture(params=["memory", "postgresql"])
def store(request: pytest.FixtureRequest) -> UnitsOfWork:
    """Units of work on the in-memory store, or on the test's PostgreSQL schema."""
    if request.param == "memory":
        return MemoryUnits()
    return PostgresUnits(request.getfixturevalue("database"))


def txn(
    number: int, *, merchant: str = "mer_alice", at: datetime = T0, **fields: Any
) -> Transaction:
    values: dict[str, Any] = {
        "amount": 1000,
        "currency": "USD",
        "description": "",
        "metadata": {},
    }
    values.update(fields)
    return new_transaction(id=f"txn_{number:026d}", merchant_id=merchant, now=at, **values)


def move(transaction: Transaction, kind: MovementKind, id: str, a: int = 0, c: int = 0) -> Movement:
    return Movement(id, transaction.merchant_id, transaction.id, "pay_1", kind, a, c, 0, T0)


async def add(store: UnitsOfWork, *transactions: Transaction) -> None:
    async with store() as unit:
        for transaction in transactions:
            unit.transactions.add(transaction)
        await unit.commit()


async def get(store: UnitsOfWork, transaction: Transaction) -> Transaction | None:
    async with store(Mode.READ) as unit:
        return await unit.transactions.get(transaction.merchant_id, transaction.id)


def error_of(raised: pytest.ExceptionInfo[DomainError]) -> tuple[Any, ...]:
    error = raised.value
    return (type(error), error.reason, error.message, dict(error.metadata))


# Transactions -----------------------------------------------------------------------------


async def test_a_transaction_reads_back_as_added_for_its_merchant_only(store: UnitsOfWork) -> None:
    big = txn(
        1,
        amount=MAX_AMOUNT,
        currency="KWD",
        description="d" * 998 + "\n🧾",
        metadata={f"{i:02d}" + "k" * 38: "v" * 500 for i in range(49)} | {"emoji": "🧾"},
    )
    await add(store, big)
    assert await get(store, big) == big
    async with store(Mode.READ) as unit:
        assert await unit.transactions.get("mer_bob", big.id) is None
        assert await unit.transactions.get("mer_alice", "txn_unknown") is None


async def test_an_id_is_added_once_and_a_refused_unit_keeps_nothing(store: UnitsOfWork) -> None:
    first = txn(1)
    await add(store, first)
    with pytest.raises(StorageRefused):
        await add(store, txn(2), dataclasses.replace(first, description="again"))
    assert await get(store, txn(2)) is None
    assert await get(store, first) == first


async def test_a_unit_left_without_a_commit_keeps_nothing(store: UnitsOfWork) -> None:
    async with store() as unit:
        unit.transactions.add(txn(1))
        assert await unit.transactions.get("mer_alice", txn(1).id) == txn(1)  # its own write
    assert await get(store, txn(1)) is None


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"amount": 0}, id="amount not positive"),
        pytest.param({"authorized_amount": 1001}, id="authorized beyond the amount"),
        pytest.param({"status": S.AUTHORIZED}, id="status not the derived one"),
        pytest.param(
            {"authorized_amount": 5, "captured_amount": 5, "status": S.CANCELLED},
            id="cancelled with money captured",
        ),
    ],
)
async def test_a_row_breaking_the_stored_invariants_is_refused(
    store: UnitsOfWork, changes: dict[str, Any]
) -> None:
    with pytest.raises(StorageRefused):
        await add(store, dataclasses.replace(txn(1), **changes))
    assert await get(store, txn(1)) is None


async def test_listing_is_newest_first_ties_by_id_filtered_and_paged(store: UnitsOfWork) -> None:
    hour = timedelta(hours=1)
    # Pairs share a time; real ids (digits and letters) break the ties.
    made = [
        dataclasses.replace(txn(n, at=T0 + hour * (n // 2)), id=new_id("txn")) for n in range(8)
    ]
    made[3] = dataclasses.replace(made[3], status=S.CANCELLED)
    await add(store, *made, txn(99, merchant="mer_bob"))
    newest_first = sorted(made, key=lambda t: (t.create_time, t.id), reverse=True)

    async def ids(**query: Any) -> list[str]:
        async with store(Mode.READ) as unit:
            found = await unit.transactions.list(ListQuery("mer_alice", **query))
        return [t.id for t in found]

    def expected(rows: list[Transaction]) -> list[str]:
        return [t.id for t in rows]

    assert await ids(limit=100) == expected(newest_first)
    assert await ids(limit=3) == expected(newest_first[:3])
    assert await ids(limit=100, status=S.CANCELLED) == [made[3].id]
    pending = [t for t in newest_first if t.status is S.PENDING]
    assert await ids(limit=100, status=S.PENDING) == expected(pending)
    # Start inclusive, end exclusive.
    window = await ids(limit=100, create_time_start=T0 + hour, create_time_end=T0 + 3 * hour)
    assert window == expected(
        [t for t in newest_first if T0 + hour <= t.create_time < T0 + 3 * hour]
    )
    assert len(window) == 4
    # After a row that shares its time with the next one.
    last = newest_first[2]
    after = Cursor(last.create_time, last.id)
    assert newest_first[3].create_time == last.create_time
    assert await ids(limit=100, after=after) == expected(newest_first[3:])
    later_pending = [t for t in newest_first[3:] if t.status is S.PENDING]
    assert await ids(limit=2, after=after, status=S.PENDING) == expected(later_pending[:2])


# Modes ------------------------------------------------------------------------------------


async def test_a_read_unit_refuses_writes(store: UnitsOfWork) -> None:
    async with store(Mode.READ) as unit:
        with pytest.raises(RuntimeError, match="cannot write"):
            unit.transactions.add(txn(1))
        with pytest.raises(RuntimeError, match="nothing to commit"):
            await unit.commit()


async def test_writes_needed_at_once_take_a_locked_unit(store: UnitsOfWork) -> None:
    await add(store, txn(1))
    for mode in (Mode.OPTIMISTIC, Mode.READ):
        async with store(mode) as unit:
            with pytest.raises(RuntimeError, match="no statement in a transaction"):
                await unit.movements.record(move(txn(1), K.FAILURE, "m"), T0)
            with pytest.raises(RuntimeError, match="no statement in a transaction"):
                await unit.transactions.advance(txn(1), txn(1))
            with pytest.raises(RuntimeError, match="no statement in a transaction"):
                await unit.movements.apply_batch([move(txn(1), K.FAILURE, "m")], [None], T0)


# Idempotency keys -------------------------------------------------------------------------


async def claim(
    store: UnitsOfWork,
    key: str | None,
    fingerprint: str = "fp",
    *,
    response: bytes | None = None,
    then: Callable[[UnitOfWork], Awaitable[None]] | None = None,
    scope: str = "mer_alice",
    operation: str = "Op",
) -> bytes | None:
    async with store() as unit:
        replay = await unit.idempotency.claim(scope, operation, key, fingerprint, response=response)
        if then is not None:
            await then(unit)
        await unit.commit()
    return replay


async def test_a_key_replays_its_response_and_refuses_another_request(store: UnitsOfWork) -> None:
    assert await claim(store, "k", response=b"first") is None
    assert await claim(store, "k", response=b"second") == b"first"
    with pytest.raises(AlreadyExists) as reused:
        await claim(store, "k", "other-fp", response=b"x")
    assert error_of(reused) == (
        AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
        "This idempotency key was already used with a different request.",
        {"idempotency_key": "k"},
    )
    # Scoped by caller and operation; no key claims nothing.
    assert await claim(store, "k", scope="mer_bob", response=b"bob") is None
    assert await claim(store, "k", operation="Other", response=b"other") is None
    assert await claim(store, None, response=b"x") is None
    assert await claim(store, None, response=b"y") is None


async def test_a_key_completed_in_its_unit_replays_and_one_never_completed_is_in_use(
    store: UnitsOfWork,
) -> None:
    async def complete(unit: UnitOfWork) -> None:
        await unit.idempotency.complete("mer_alice", "Op", "done", b"answer")
        await unit.idempotency.complete("mer_alice", "Op", None, b"ignored")

    assert await claim(store, "done", then=complete) is None
    assert await claim(store, "done") == b"answer"
    assert await claim(store, "open") is None  # committed without a response
    with pytest.raises(Aborted) as in_use:
        await claim(store, "open")
    assert error_of(in_use) == (
        Aborted,
        "IDEMPOTENCY_KEY_IN_USE",
        "A request with this idempotency key is in progress; retry.",
        {},
    )


async def test_a_claim_rolled_back_frees_the_key(store: UnitsOfWork) -> None:
    async with store() as unit:
        assert await unit.idempotency.claim("mer_alice", "Op", "k", "fp") is None
    assert await claim(store, "k", "another-fp", response=b"r") is None


async def test_optimistically_a_taken_key_gives_its_replay_and_adds_nothing(
    store: UnitsOfWork,
) -> None:
    async def create(transaction: Transaction) -> bytes | None:
        async def step(unit: UnitOfWork) -> bytes | None:
            async with unit:
                replay = await unit.idempotency.claim(
                    "mer_alice", "Create", "k", "fp", response=transaction.id.encode()
                )
                if replay is not None:
                    return replay
                unit.transactions.add(transaction)
                await unit.commit()
            return None

        return await optimistically(store, step)

    assert await create(txn(1)) is None
    assert await create(txn(2)) == txn(1).id.encode()
    assert await get(store, txn(2)) is None
    async with store(Mode.OPTIMISTIC) as unit:
        with pytest.raises(ValueError, match="holds its response"):
            await unit.idempotency.claim("mer_alice", "Create", "k2", "fp")


async def test_purging_keeps_keys_younger_than_the_retention(store: UnitsOfWork) -> None:
    assert await claim(store, "k", response=b"r") is None
    async with store() as unit:
        assert await unit.idempotency.purge(timedelta(hours=24)) == 0
        with pytest.raises(ValueError, match="24 hours"):
            await unit.idempotency.purge(timedelta(hours=1))
        await unit.commit()
    assert await claim(store, "k") == b"r"


# Movements --------------------------------------------------------------------------------


async def test_a_movement_id_is_recorded_once(store: UnitsOfWork) -> None:
    await add(store, txn(1))
    auth = move(txn(1), K.AUTHORIZATION, "m1", a=5)
    async with store() as unit:
        assert await unit.movements.record(auth, T0)
        assert not await unit.movements.record(dataclasses.replace(auth, authorized_delta=6), T0)
        assert await unit.movements.get("m1") == AppliedMovement.of(auth, T0)
        assert await unit.movements.get("m2") is None
        await unit.commit()
    orphan = dataclasses.replace(auth, id="m_orphan", transaction_id="txn_unknown")
    with pytest.raises(StorageRefused):
        async with store() as unit:
            await unit.movements.record(orphan, T0)


async def test_advancing_adds_the_differences_to_what_is_stored(store: UnitsOfWork) -> None:
    await add(store, txn(1))
    after = apply_movement(txn(1), move(txn(1), K.AUTHORIZATION, "m", a=600), now=T0 + timedelta(1))
    async with store() as unit:
        locked = await unit.transactions.get("mer_alice", txn(1).id)
        assert locked == txn(1)
        stored = await unit.transactions.advance(locked, after)
        await unit.commit()
    assert stored == after
    assert await get(store, txn(1)) == after


async def test_advances_the_stored_invariants_refuse_are_ledger_invariant_violations(
    store: UnitsOfWork,
) -> None:
    captured = apply_movement(
        apply_movement(txn(1), move(txn(1), K.AUTHORIZATION, "a", a=500)),
        move(txn(1), K.CAPTURE, "c", c=500),
    )
    authorized = apply_movement(txn(2), move(txn(2), K.AUTHORIZATION, "a2", a=500))
    cancelled = apply_movement(txn(3), move(txn(3), K.CANCELLATION, "x"))
    await add(store, captured, authorized, cancelled)
    refused = [
        (captured, dataclasses.replace(captured, captured_amount=400, status=S.COMPLETED)),
        (authorized, dataclasses.replace(authorized, authorized_amount=1001)),
        (authorized, dataclasses.replace(authorized, status=S.COMPLETED)),  # not derived
        (  # derived, but AUTHORIZED -> REFUNDED is no transition
            authorized,
            dataclasses.replace(
                authorized, captured_amount=500, refunded_amount=500, status=S.REFUNDED
            ),
        ),
        (cancelled, dataclasses.replace(cancelled, status=S.PENDING)),  # undo a cancellation
    ]
    for before, after in refused:
        with pytest.raises(FailedPrecondition) as raised:
            async with store() as unit:
                await unit.transactions.get(before.merchant_id, before.id)
                await unit.transactions.advance(before, after)
        assert error_of(raised) == (
            FailedPrecondition,
            "LEDGER_INVARIANT_VIOLATED",
            f"The movement would break an invariant of transaction {before.id}.",
            {"transaction_id": before.id},
        )
        assert await get(store, before) == before


async def test_a_batch_applies_redeliveries_once_and_reports_per_movement(
    store: UnitsOfWork,
) -> None:
    await add(store, txn(1), txn(2))
    auth = move(txn(1), K.AUTHORIZATION, "m_auth", a=600)
    batch = [
        auth,
        move(txn(1), K.CAPTURE, "m_capture", c=600),
        auth,  # redelivered in the batch
        move(txn(2), K.CAPTURE, "m_nothing_held", c=1),
        move(txn(2), K.AUTHORIZATION, "m_after", a=1),
    ]
    async with store() as unit:
        errors = await unit.movements.apply_batch(batch, [None] * len(batch), T0)
        await unit.commit()
    assert [None if e is None else getattr(e, "reason", e) for e in errors] == [
        None,
        None,
        None,
        "LEDGER_INVARIANT_VIOLATED",
        "EARLIER_MOVEMENT_NOT_APPLIED",
    ]
    stored = await get(store, txn(1))
    assert stored is not None
    assert (stored.status, stored.authorized_amount, stored.captured_amount) == (
        S.COMPLETED,
        600,
        600,
    )
    assert await get(store, txn(2)) == txn(2)
    async with store() as unit:
        assert await unit.movements.get("m_nothing_held") is None
        assert not await unit.movements.record(auth, T0)
        again = await unit.movements.apply_batch(batch[:3], [None] * 3, T0)
        assert again == [None, None, None]
        await unit.commit()
    assert await get(store, txn(1)) == stored


async def test_a_batch_the_stored_invariants_refuse_is_storage_refused_and_kept_nowhere(
    store: UnitsOfWork, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add(store, txn(1), txn(2))

    def no_checks(transaction: Transaction, movement: Movement, *, now: datetime) -> Transaction:
        return dataclasses.replace(
            transaction,
            authorized_amount=transaction.authorized_amount + movement.authorized_delta,
            status=S.AUTHORIZED,
            update_time=now,
        )

    monkeypatch.setattr(batches_module, "apply_movement", no_checks)
    batch = [
        move(txn(2), K.AUTHORIZATION, "m_fine", a=5),
        move(txn(1), K.AUTHORIZATION, "m", a=1001),
    ]
    with pytest.raises(StorageRefused):
        async with store() as unit:
            await unit.movements.apply_batch(batch, [None, None], T0)
    assert (await get(store, txn(1)), await get(store, txn(2))) == (txn(1), txn(2))
    async with store(Mode.READ) as unit:
        assert await unit.movements.get("m_fine") is None
