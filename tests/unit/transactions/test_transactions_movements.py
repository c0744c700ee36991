"""ApplyMovement and ApplyMovements on the in-memory store: amounts and derived statuses,
redeliveries, refusals, and the fallback when the store refuses a batch."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import datetime

import pytest

from pi.platform.kernel.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from pi.platform.kernel.principal import Principal
from pi.transactions.adapters.memory import MemoryUnits
from pi.transactions.app import apply_movements as apply_module
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.domain import (
    Movement,
    MovementKind,
    Transaction,
    TransactionStatus,
    UnreadableMovement,
    apply_movement,
)
from pi.transactions.domain import batches as batches_module
from tests.support import movements as scenarios
from tests.support.movements import ALICE, amounts, create, interleave, move, outcome

SERVICE = Principal.service()
K = MovementKind
S = TransactionStatus

Rows = Callable[[str], int]


def recorded(units: MemoryUnits) -> set[str]:
    return set(units.state.movements)


async def _recorded_async(units: MemoryUnits) -> set[str]:
    return recorded(units)


# One movement -----------------------------------------------------------------------------


async def test_movements_drive_the_amounts_and_the_status(service: TransactionUseCases) -> None:
    created = await create(service)
    steps: list[tuple[Movement, S, tuple[int, int, int]]] = [
        (move(created, K.FAILURE, "m0"), S.FAILED, (0, 0, 0)),
        (move(created, K.AUTHORIZATION, "m1", a=1000), S.AUTHORIZED, (1000, 0, 0)),
        (move(created, K.CAPTURE, "m2", a=-300, c=700), S.COMPLETED, (700, 700, 0)),
        (move(created, K.REFUND, "m3", r=200), S.PARTIALLY_REFUNDED, (700, 700, 200)),
        (move(created, K.REFUND, "m4", r=500), S.REFUNDED, (700, 700, 700)),
    ]
    for movement, status, expected in steps:
        after = await service.apply_movement(SERVICE, movement)
        assert after.status is status
        assert (after.authorized_amount, after.captured_amount, after.refunded_amount) == expected
        assert after.update_time >= created.update_time
    assert await service.get_transaction(ALICE, created.id) == after


async def test_the_same_movement_twice_is_applied_once(
    service: TransactionUseCases, rows: Rows
) -> None:
    created = await create(service)
    auth = move(created, K.AUTHORIZATION, "mov_auth", a=600)
    first = await service.apply_movement(SERVICE, auth)
    second = await service.apply_movement(SERVICE, auth)
    assert first == second
    assert second.authorized_amount == 600
    assert rows("applied_movements") == 1
    changed = dataclasses.replace(auth, authorized_delta=1)
    with pytest.raises(AlreadyExists) as caught:
        await service.apply_movement(SERVICE, changed)
    assert caught.value.reason == "MOVEMENT_ID_REUSED"
    assert caught.value.metadata == {"movement_id": "mov_auth"}


async def test_a_movement_of_another_merchant_is_not_found_and_writes_nothing(
    service: TransactionUseCases, rows: Rows
) -> None:
    created = await create(service)
    foreign = move(created, K.AUTHORIZATION, "mov_x", a=1, merchant_id="mer_bob")
    with pytest.raises(NotFound) as caught:
        await service.apply_movement(SERVICE, foreign)
    assert caught.value.reason == "TRANSACTION_NOT_FOUND"
    assert rows("applied_movements") == 0
    assert (await service.get_transaction(ALICE, created.id)).authorized_amount == 0


async def test_a_movement_breaking_an_invariant_is_refused_and_writes_nothing(
    service: TransactionUseCases, rows: Rows
) -> None:
    created = await create(service)
    with pytest.raises(FailedPrecondition) as caught:
        await service.apply_movement(SERVICE, move(created, K.AUTHORIZATION, "too_much", a=1001))
    assert caught.value.reason == "LEDGER_INVARIANT_VIOLATED"
    assert caught.value.metadata["invariant"] == "authorized <= amount"
    with pytest.raises(FailedPrecondition):
        await service.apply_movement(SERVICE, move(created, K.REFUND, "refund_nothing", r=1))
    assert rows("applied_movements") == 0
    assert await service.get_transaction(ALICE, created.id) == created


async def test_malformed_movements_are_invalid_argument(service: TransactionUseCases) -> None:
    created = await create(service)
    bad = move(created, K.VOID, "", a=5, merchant_id="")
    with pytest.raises(InvalidArgument) as caught:
        await service.apply_movement(SERVICE, bad)
    assert {v.field for v in caught.value.violations} == {
        "movement.id",
        "movement.merchant_id",
        "movement.authorized_delta",
    }
    too_long = dataclasses.replace(
        move(created, K.FAILURE, "m" * 129), payment_id="pay with spaces"
    )
    with pytest.raises(InvalidArgument) as long_ids:
        await service.apply_movement(SERVICE, too_long)
    assert [v.field for v in long_ids.value.violations] == ["movement.id", "movement.payment_id"]
    with pytest.raises(PermissionDenied):
        await service.apply_movement(ALICE, move(created, K.FAILURE, "m"))


async def test_the_store_refuses_what_a_bypassed_domain_check_let_through(
    service: TransactionUseCases, rows: Rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await create(service)

    def no_checks(transaction: Transaction, movement: Movement, *, now: datetime) -> Transaction:
        return dataclasses.replace(
            transaction,
            authorized_amount=transaction.authorized_amount + movement.authorized_delta,
            status=S.AUTHORIZED,
            update_time=now,
        )

    monkeypatch.setattr(apply_module, "apply_movement", no_checks)
    with pytest.raises(FailedPrecondition) as caught:
        await service.apply_movement(SERVICE, move(created, K.AUTHORIZATION, "m", a=1001))
    assert caught.value.reason == "LEDGER_INVARIANT_VIOLATED"
    assert caught.value.metadata == {"transaction_id": created.id}
    assert rows("applied_movements") == 0
    assert await service.get_transaction(ALICE, created.id) == created


async def test_concurrent_movements_never_exceed_the_amount(
    service: TransactionUseCases, rows: Rows
) -> None:
    created = await create(service)
    auths = [move(created, K.AUTHORIZATION, f"auth_{i}", a=20) for i in range(60)]
    results = await asyncio.gather(
        *(service.apply_movement(SERVICE, m) for m in auths + auths[:5]), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 10
    assert all(isinstance(r, FailedPrecondition) for r in refused)
    assert (await service.get_transaction(ALICE, created.id)).authorized_amount == 1000
    assert rows("applied_movements") == 50


# Batches ----------------------------------------------------------------------------------


async def test_a_batch_walks_every_transition(
    service: TransactionUseCases, units: MemoryUnits
) -> None:
    t1, t2, t3, t4 = [await create(service) for _ in range(4)]
    chains = [
        [
            move(t1, K.AUTHORIZATION, "t1_auth", a=1000),
            move(t1, K.CAPTURE, "t1_capture", a=-300, c=700),
            move(t1, K.REFUND, "t1_refund_1", r=200),
            move(t1, K.REFUND, "t1_refund_2", r=500),
        ],
        [
            move(t2, K.FAILURE, "t2_fail"),
            move(t2, K.AUTHORIZATION, "t2_auth", a=500),
            move(t2, K.VOID, "t2_void", a=-500),
            move(t2, K.AUTHORIZATION, "t2_auth_2", a=200),
            move(t2, K.CANCELLATION, "t2_cancel"),
            move(t2, K.VOID, "t2_void_2", a=-200),
        ],
        [
            move(t3, K.AUTHORIZATION, "t3_auth", a=100),
            move(t3, K.FAILURE, "t3_fail"),
            move(t3, K.VOID, "t3_void", a=-100),
        ],
        [
            move(t4, K.AUTHORIZATION, "t4_auth", a=300),
            move(t4, K.CAPTURE, "t4_capture", c=300),
            move(t4, K.REFUND, "t4_refund", r=300),
            move(t4, K.AUTHORIZATION, "t4_auth_2", a=100),
            move(t4, K.CAPTURE, "t4_capture_2", c=100),
        ],
    ]
    batch = interleave(chains)
    results = await service.apply_movements(SERVICE, batch)
    assert [outcome(r) for r in results] == [("OK", None)] * len(batch)
    assert [r.movement_id for r in results] == [m.id for m in batch]
    expected = []
    for transaction, chain in zip((t1, t2, t3, t4), chains, strict=True):
        for movement in chain:
            transaction = apply_movement(transaction, movement)
        expected.append(amounts(transaction))
    stored = [amounts(await service.get_transaction(ALICE, t.id)) for t in (t1, t2, t3, t4)]
    assert stored == expected
    assert stored[0] == (S.REFUNDED, 700, 700, 700)
    assert stored[1] == (S.CANCELLED, 0, 0, 0)
    assert stored[2] == (S.FAILED, 0, 0, 0)
    assert stored[3] == (S.PARTIALLY_REFUNDED, 400, 400, 300)
    assert recorded(units) == {m.id for m in batch}


async def test_duplicates_apply_once_and_a_reused_id_is_already_exists(
    service: TransactionUseCases, units: MemoryUnits
) -> None:
    await scenarios.duplicates_apply_once_and_a_reused_id_is_refused(
        service, recorded=lambda: _recorded_async(units)
    )


async def test_a_refused_movement_stops_its_transaction_only_and_is_not_recorded(
    service: TransactionUseCases, units: MemoryUnits
) -> None:
    await scenarios.a_refused_movement_stops_its_transaction_only(
        service, recorded=lambda: _recorded_async(units)
    )


async def test_unknown_foreign_malformed_and_unreadable_movements_are_reported_per_movement(
    service: TransactionUseCases, units: MemoryUnits
) -> None:
    t1, t2, t3 = [await create(service) for _ in range(3)]
    unknown = dataclasses.replace(move(t1, K.FAILURE, "m_unknown"), transaction_id="txn_nope")
    unreadable = UnreadableMovement(
        "m_unreadable", t3.id, InvalidArgument.field("movement.kind", "must be a movement kind")
    )
    results = await service.apply_movements(
        SERVICE,
        [
            unknown,
            move(t1, K.AUTHORIZATION, "m_foreign", a=5, merchant_id="mer_bob"),
            move(t1, K.AUTHORIZATION, "m_after_foreign", a=5),
            move(t2, K.VOID, "m_bad_shape", a=5),
            move(t2, K.AUTHORIZATION, "m_after_bad", a=5),
            unreadable,
            move(t3, K.AUTHORIZATION, "m_after_unreadable", a=5),
        ],
    )
    assert [outcome(r) for r in results] == [
        ("NOT_FOUND", "TRANSACTION_NOT_FOUND"),
        ("NOT_FOUND", "TRANSACTION_NOT_FOUND"),
        ("ABORTED", "EARLIER_MOVEMENT_NOT_APPLIED"),
        ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("ABORTED", "EARLIER_MOVEMENT_NOT_APPLIED"),
        ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("ABORTED", "EARLIER_MOVEMENT_NOT_APPLIED"),
    ]
    bad = results[3].error
    assert isinstance(bad, InvalidArgument)
    assert [v.field for v in bad.violations] == ["movement.authorized_delta"]
    assert results[5].error is unreadable.error
    assert recorded(units) == set()
    for transaction in (t1, t2, t3):
        assert await service.get_transaction(ALICE, transaction.id) == transaction


async def test_a_batch_must_hold_1_to_1000_movements_and_come_from_the_platform(
    service: TransactionUseCases, rows: Rows
) -> None:
    async def count(table: str) -> int:
        return rows(table)

    await scenarios.a_batch_holds_1_to_1000_movements_from_the_platform(service, count)


async def test_a_store_refusal_falls_back_to_one_movement_at_a_time(
    service: TransactionUseCases, units: MemoryUnits, monkeypatch: pytest.MonkeyPatch
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
        move(t1, K.AUTHORIZATION, "m_too_much", a=1001),  # the store refuses it
        move(t1, K.AUTHORIZATION, "m_after", a=1),
        move(t2, K.AUTHORIZATION, "m_fine", a=100),
    ]
    results = await service.apply_movements(SERVICE, batch)
    assert [outcome(r) for r in results] == [
        ("FAILED_PRECONDITION", "LEDGER_INVARIANT_VIOLATED"),
        ("ABORTED", "EARLIER_MOVEMENT_NOT_APPLIED"),
        ("OK", None),
    ]
    assert recorded(units) == {"m_fine"}
    assert await service.get_transaction(ALICE, t1.id) == t1
    assert (await service.get_transaction(ALICE, t2.id)).authorized_amount == 100


async def test_concurrent_batches_over_the_same_transactions_lose_no_update(
    service: TransactionUseCases, rows: Rows
) -> None:
    made = [await create(service, amount=100_000) for _ in range(4)]
    batches = [
        [move(t, K.AUTHORIZATION, f"m_{n}_{t.id}", a=10 + n) for t in made] for n in range(6)
    ]
    answers = await asyncio.gather(*(service.apply_movements(SERVICE, b) for b in batches * 2))
    assert all(r.error is None for results in answers for r in results)
    for transaction in made:
        stored = await service.get_transaction(ALICE, transaction.id)
        assert stored.authorized_amount == sum(10 + n for n in range(6))
    assert rows("applied_movements") == 6 * len(made)
