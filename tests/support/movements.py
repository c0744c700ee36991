"""Movements as the transaction service's tests write them, and what they read back, for
the use-case tests on memory and the batch tests on PostgreSQL alike; and the batch
scenarios both run, each store reading back what it recorded its own way."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import pytest

from pi.platform.kernel.errors import (
    Aborted,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
)
from pi.platform.kernel.principal import Principal
from pi.transactions.app.apply_movements import MovementResult
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.domain import Movement, MovementKind, Transaction, TransactionStatus

ALICE = Principal.merchant("mer_alice")
SERVICE = Principal.service()
K = MovementKind
S = TransactionStatus

Recorded = Callable[[], Awaitable[set[str]]]
"""The ids of the movements the store recorded as applied."""
Count = Callable[[str], Awaitable[int]]
"""The number of rows of a table of the store."""


def move(
    transaction: Transaction,
    kind: MovementKind,
    id: str,
    a: int = 0,
    c: int = 0,
    r: int = 0,
    *,
    merchant_id: str | None = None,
) -> Movement:
    return Movement(
        id=id,
        merchant_id=transaction.merchant_id if merchant_id is None else merchant_id,
        transaction_id=transaction.id,
        payment_id="pay_1",
        kind=kind,
        authorized_delta=a,
        captured_delta=c,
        refunded_delta=r,
        occur_time=datetime.now(UTC),
    )


async def create(service: TransactionUseCases, amount: int = 1000) -> Transaction:
    return await service.create_transaction(
        ALICE, amount=amount, currency="USD", description="", metadata={}
    )


def outcome(result: MovementResult) -> tuple[str, str | None]:
    """(code, reason) of a result; ("OK", None) if applied."""
    if result.error is None:
        return ("OK", None)
    assert isinstance(result.error, DomainError), result.error
    return (result.error.code.value, result.error.reason)


def amounts(transaction: Transaction) -> tuple[TransactionStatus, int, int, int]:
    return (
        transaction.status,
        transaction.authorized_amount,
        transaction.captured_amount,
        transaction.refunded_amount,
    )


def interleave(chains: Sequence[Sequence[Movement]]) -> list[Movement]:
    """Round-robin over the chains: each keeps its order, transactions are mixed."""
    longest = max(len(chain) for chain in chains)
    return [chain[i] for i in range(longest) for chain in chains if i < len(chain)]


# Batch scenarios ----------------------------------------------------------------------------


async def a_refused_movement_stops_its_transaction_only(
    service: TransactionUseCases, recorded: Recorded
) -> None:
    """A refused movement stops the rest of its transaction's movements in the batch,
    not the others', and is not recorded; sent again corrected, they apply."""
    t1, t2 = [await create(service) for _ in range(2)]
    batch = [
        move(t1, K.AUTHORIZATION, "m1", a=1000),
        move(t2, K.AUTHORIZATION, "m2", a=50),
        move(t1, K.CAPTURE, "m3", c=2000),  # more than authorized
        move(t1, K.REFUND, "m4", r=10),
        move(t2, K.CAPTURE, "m5", c=50),
        move(t1, K.VOID, "m6", a=-1000),
    ]
    results = await service.apply_movements(SERVICE, batch)
    assert [outcome(r) for r in results] == [
        ("OK", None),
        ("OK", None),
        ("FAILED_PRECONDITION", "LEDGER_INVARIANT_VIOLATED"),
        ("ABORTED", "EARLIER_MOVEMENT_NOT_APPLIED"),
        ("OK", None),
        ("ABORTED", "EARLIER_MOVEMENT_NOT_APPLIED"),
    ]
    assert isinstance(results[2].error, FailedPrecondition)
    assert results[2].error.metadata["invariant"] == "captured <= authorized"
    assert isinstance(results[3].error, Aborted)
    assert results[3].error.metadata == {"transaction_id": t1.id}
    assert amounts(await service.get_transaction(ALICE, t1.id)) == (S.AUTHORIZED, 1000, 0, 0)
    assert amounts(await service.get_transaction(ALICE, t2.id)) == (S.COMPLETED, 50, 50, 0)
    assert await recorded() == {"m1", "m2", "m5"}

    fixed = await service.apply_movements(SERVICE, [move(t1, K.CAPTURE, "m3b", c=1000), batch[3]])
    assert [outcome(r) for r in fixed] == [("OK", None), ("OK", None)]
    assert amounts(await service.get_transaction(ALICE, t1.id)) == (
        S.PARTIALLY_REFUNDED,
        1000,
        1000,
        10,
    )


async def duplicates_apply_once_and_a_reused_id_is_refused(
    service: TransactionUseCases, recorded: Recorded
) -> None:
    """A movement delivered twice applies once; an id reused with other contents is
    ALREADY_EXISTS; what follows a refusal in its transaction is ABORTED."""
    t1, t2, t3 = [await create(service) for _ in range(3)]
    auth = move(t1, K.AUTHORIZATION, "m_auth", a=600)
    first = await service.apply_movements(SERVICE, [auth, auth])
    assert [outcome(r) for r in first] == [("OK", None), ("OK", None)]
    assert (await service.get_transaction(ALICE, t1.id)).authorized_amount == 600

    later = move(t1, K.AUTHORIZATION, "m_later", a=100)
    again = await service.apply_movements(
        SERVICE,
        [
            auth,  # applied by the earlier call, same contents: OK, no effect
            dataclasses.replace(auth, authorized_delta=1),  # same id, other contents
            later,  # after a refusal of its transaction: not attempted
            move(t2, K.AUTHORIZATION, "m_other", a=50),  # another transaction goes on
            move(t3, K.AUTHORIZATION, "m_twice", a=5),
            move(t3, K.AUTHORIZATION, "m_twice", a=6),  # reused within the batch
        ],
    )
    assert [outcome(r) for r in again] == [
        ("OK", None),
        ("ALREADY_EXISTS", "MOVEMENT_ID_REUSED"),
        ("ABORTED", "EARLIER_MOVEMENT_NOT_APPLIED"),
        ("OK", None),
        ("OK", None),
        ("ALREADY_EXISTS", "MOVEMENT_ID_REUSED"),
    ]
    assert (await service.get_transaction(ALICE, t1.id)).authorized_amount == 600
    assert (await service.get_transaction(ALICE, t2.id)).authorized_amount == 50
    assert (await service.get_transaction(ALICE, t3.id)).authorized_amount == 5
    assert await recorded() == {"m_auth", "m_other", "m_twice"}

    # The aborted movement applies once it is sent again.
    retried = await service.apply_movements(SERVICE, [later])
    assert retried[0].error is None
    assert (await service.get_transaction(ALICE, t1.id)).authorized_amount == 700


async def a_batch_holds_1_to_1000_movements_from_the_platform(
    service: TransactionUseCases, count: Count
) -> None:
    """An empty or too large batch is INVALID_ARGUMENT, a merchant's or the admin's is
    PERMISSION_DENIED, and nothing is recorded; 1000 movements apply."""
    t1 = await create(service)
    with pytest.raises(InvalidArgument) as caught:
        await service.apply_movements(SERVICE, [])
    assert [v.field for v in caught.value.violations] == ["movements"]
    too_many = [move(t1, K.FAILURE, f"m_{i}") for i in range(1001)]
    with pytest.raises(InvalidArgument) as caught:
        await service.apply_movements(SERVICE, too_many)
    assert [v.field for v in caught.value.violations] == ["movements"]
    for caller in (ALICE, Principal.admin()):
        with pytest.raises(PermissionDenied):
            await service.apply_movements(caller, too_many[:1])
    assert await count("applied_movements") == 0
    assert all(r.error is None for r in await service.apply_movements(SERVICE, too_many[:1000]))
    assert await count("applied_movements") == 1000
