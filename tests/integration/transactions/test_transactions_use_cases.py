"""Transaction use cases on real PostgreSQL, with a fake payment ledger: what only the
database shows, round trips and concurrent requests. Their behaviour is tested on the
in-memory store (tests/unit/transactions), which the unit-of-work contract
(test_transactions_units_contract.py) holds to PostgreSQL's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from pi.platform.kernel.errors import AlreadyExists, FailedPrecondition
from pi.platform.kernel.money import MAX_AMOUNT
from pi.platform.kernel.principal import Principal
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.domain import Movement, MovementKind, TransactionStatus
from tests.support.round_trips import count_round_trips

ALICE = Principal.merchant("mer_alice")
SERVICE = Principal.service()

Count = Callable[..., Awaitable[int]]


async def create(service: TransactionUseCases, principal: Principal = ALICE, **fields: Any) -> Any:
    values: dict[str, Any] = {
        "amount": 10_000,
        "currency": "USD",
        "description": "Order #1",
        "metadata": {"order": "1"},
    }
    values.update(fields)
    return await service.create_transaction(principal, **values)


def movement(
    transaction: Any,
    kind: MovementKind,
    *,
    id: str,
    authorized: int = 0,
    captured: int = 0,
    refunded: int = 0,
    merchant_id: str | None = None,
) -> Movement:
    return Movement(
        id=id,
        merchant_id=transaction.merchant_id if merchant_id is None else merchant_id,
        transaction_id=transaction.id,
        payment_id="pay_test",
        kind=kind,
        authorized_delta=authorized,
        captured_delta=captured,
        refunded_delta=refunded,
        occur_time=datetime.now(UTC),
    )


# Create -----------------------------------------------------------------------------------


async def test_limits_themselves_are_accepted(service: TransactionUseCases) -> None:
    created = await create(
        service,
        amount=MAX_AMOUNT,
        currency="KWD",
        description="d" * 1000,
        metadata={f"{i:02d}" + "k" * 38: "v" * 500 for i in range(50)},
    )
    assert created.amount == MAX_AMOUNT
    assert len(created.metadata) == 50


async def test_create_is_two_round_trips_and_a_replay_still_replays(
    service: TransactionUseCases, count_rows: Count
) -> None:
    for attempt in range(6):  # prepared on the first run: two after too
        with count_round_trips() as trips:
            first = await create(service, idempotency_key=f"order-{attempt}", fingerprint="fp")
        assert trips.count == 2  # BEGIN + claim + insert, then COMMIT
    # A replay finds the key taken: rolled back, then claimed the ordinary way.
    assert await create(service, idempotency_key="order-5", fingerprint="fp") == first
    with pytest.raises(AlreadyExists):
        await create(service, idempotency_key="order-5", fingerprint="other")
    assert await count_rows("transactions") == 6


async def test_concurrent_duplicates_create_exactly_one_transaction(
    service: TransactionUseCases, count_rows: Count
) -> None:
    results = await asyncio.gather(
        *(create(service, idempotency_key="burst", fingerprint="fp") for _ in range(50))
    )
    assert len({r.id for r in results}) == 1
    assert await count_rows("transactions") == 1


# Cancel -----------------------------------------------------------------------------------


async def test_concurrent_cancels_apply_the_cancellation_once(
    service: TransactionUseCases, count_rows: Count
) -> None:
    created = await create(service)
    results = await asyncio.gather(
        *(service.cancel_transaction(ALICE, created.id) for _ in range(10))
    )
    assert {r.status for r in results} == {TransactionStatus.CANCELLED}
    assert await count_rows("applied_movements") == 1


# Reads and movements -----------------------------------------------------------------------


async def test_reads_take_one_round_trip_and_a_movement_five(service: TransactionUseCases) -> None:
    created = await create(service)
    for attempt in range(6):  # prepared on the first runs: the same after
        with count_round_trips() as get:
            await service.get_transaction(ALICE, created.id)
        with count_round_trips() as listing:
            await service.list_transactions(ALICE, page_size=5)
        with count_round_trips() as lookup:
            await service.lookup_transaction(SERVICE, "mer_alice", created.id)
        auth = movement(created, MovementKind.AUTHORIZATION, id=f"a{attempt}", authorized=10)
        with count_round_trips() as one:
            await service.apply_movement(SERVICE, auth)
        batch = [
            movement(created, MovementKind.AUTHORIZATION, id=f"b{attempt}", authorized=10),
            movement(created, MovementKind.VOID, id=f"v{attempt}", authorized=-10),
        ]
        with count_round_trips() as many:
            await service.apply_movements(SERVICE, batch)
        assert (get.count, listing.count, lookup.count) == (1, 1, 1)
        assert one.count == 5  # BEGIN, lock, record, update, COMMIT
        assert many.count == 5  # BEGIN, lock, record, the updates pipelined, COMMIT


async def test_fifty_concurrent_movements_on_one_transaction_sum_exactly(
    service: TransactionUseCases, count_rows: Count
) -> None:
    created = await create(service, amount=10_000)
    auths = [
        movement(created, MovementKind.AUTHORIZATION, id=f"auth_{i}", authorized=100 + i)
        for i in range(50)
    ]
    # Every movement delivered twice, all at once: each must count exactly once.
    await asyncio.gather(*(service.apply_movement(SERVICE, m) for m in auths + auths))
    after = await service.get_transaction(ALICE, created.id)
    assert after.authorized_amount == sum(100 + i for i in range(50))
    assert after.status is TransactionStatus.AUTHORIZED
    assert await count_rows("applied_movements") == 50


async def test_concurrent_movements_never_exceed_the_amount(
    service: TransactionUseCases, count_rows: Count
) -> None:
    created = await create(service, amount=1000)
    auths = [
        movement(created, MovementKind.AUTHORIZATION, id=f"auth_{i}", authorized=20)
        for i in range(60)
    ]
    results = await asyncio.gather(
        *(service.apply_movement(SERVICE, m) for m in auths), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 10
    assert all(
        isinstance(r, FailedPrecondition) and r.reason == "LEDGER_INVARIANT_VIOLATED"
        for r in refused
    )
    after = await service.get_transaction(ALICE, created.id)
    assert after.authorized_amount == 1000
    assert await count_rows("applied_movements") == 50
