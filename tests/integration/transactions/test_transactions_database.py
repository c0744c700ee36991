"""The transactions schema enforces the money rules itself, whatever the code does."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, insert, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pi.platform.kernel.errors import FailedPrecondition
from pi.platform.kernel.principal import Principal
from pi.transactions import service as service_module
from pi.transactions.domain import (
    ALLOWED_TRANSITIONS,
    Movement,
    MovementKind,
    Transaction,
    TransactionStatus,
    derive_status,
)
from pi.transactions.service import TransactionService
from pi.transactions.store import metadata, transactions

ALICE = Principal.merchant("mer_alice")
SERVICE = Principal.service()
NOW = datetime(2030, 1, 1, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class State:
    authorized: int
    captured: int
    refunded: int
    cancelled: bool
    failed: bool

    @property
    def status(self) -> TransactionStatus:
        return derive_status(
            cancelled=self.cancelled,
            authorized=self.authorized,
            captured=self.captured,
            refunded=self.refunded,
            last_payment_failed=self.failed,
        )

    def values(self, status: TransactionStatus | None = None) -> dict[str, Any]:
        return {
            "authorized_amount": self.authorized,
            "captured_amount": self.captured,
            "refunded_amount": self.refunded,
            "cancelled": self.cancelled,
            "last_payment_failed": self.failed,
            "status": (status or self.status).value,
        }


AMOUNT = 100
AMOUNTS = [
    (0, 0, 0),
    (50, 0, 0),
    (50, 30, 0),
    (80, 50, 0),
    (50, 30, 10),
    (50, 30, 30),
    (80, 50, 30),
]
STATES = [
    State(a, c, r, cancelled, failed)
    for (a, c, r), cancelled, failed in itertools.product(AMOUNTS, (False, True), (False, True))
    if not (cancelled and c > 0)
]


def row(id: str = "txn_1", **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": id,
        "merchant_id": "mer_alice",
        "amount": AMOUNT,
        "currency": "USD",
        "description": "",
        "metadata": {},
        "create_time": NOW,
        "update_time": NOW,
        **State(0, 0, 0, False, False).values(),
    }
    base.update(values)
    return base


async def attempt(conn: AsyncConnection, statement: Any) -> bool:
    """Run `statement` in a savepoint; False (rolled back) if the database refuses it."""
    savepoint = await conn.begin_nested()
    try:
        await conn.execute(statement)
    except (IntegrityError, DBAPIError):
        await savepoint.rollback()
        return False
    await savepoint.commit()
    return True


def _diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migration_builds_exactly_the_declared_tables(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
        trigger = await conn.execute(
            text(
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'transactions_guard_update'"
                " AND tgrelid = 'transactions'::regclass"
            )
        )
        assert trigger.scalar_one() == 1


async def test_raw_update_beyond_the_amount_is_refused_by_the_database(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(transactions).values(**row()))
    attempts = [
        "UPDATE transactions SET authorized_amount = amount + 1, status = 'AUTHORIZED'",
        "UPDATE transactions SET authorized_amount = authorized_amount - 1",
        "UPDATE transactions SET captured_amount = 1, status = 'COMPLETED'",
        "UPDATE transactions SET authorized_amount = 10, captured_amount = 10,"
        " refunded_amount = 11, status = 'PARTIALLY_REFUNDED'",
        "UPDATE transactions SET status = 'COMPLETED'",
        "UPDATE transactions SET status = 'BOGUS'",
        "UPDATE transactions SET amount = 0",
    ]
    async with engine.begin() as conn:
        for sql in attempts:
            assert not await attempt(conn, text(sql)), sql
        stored = (await conn.execute(text("SELECT * FROM transactions"))).mappings().one()
    assert (stored["authorized_amount"], stored["captured_amount"], stored["status"]) == (
        0,
        0,
        "PENDING",
    )


async def test_inserts_breaking_the_rules_are_refused(engine: AsyncEngine, count_rows: Any) -> None:
    bad_rows = [
        row(amount=0),
        row(amount=-1),
        row(**State(AMOUNT + 1, 0, 0, False, False).values()),
        row(**State(10, 20, 0, False, False).values()),
        row(**State(10, 10, 20, False, False).values()),
        row(**State(-1, 0, 0, False, False).values(TransactionStatus.PENDING)),
        row(**State(10, 10, 0, True, False).values(TransactionStatus.CANCELLED)),
    ]
    async with engine.begin() as conn:
        for values in bad_rows:
            assert not await attempt(conn, insert(transactions).values(**values)), values
    assert await count_rows("transactions") == 0


async def test_the_stored_status_is_always_the_derived_one(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for number, (state, status) in enumerate(itertools.product(STATES, TransactionStatus)):
            statement = insert(transactions).values(**row(f"txn_{number}", **state.values(status)))
            accepted = await attempt(conn, statement)
            assert accepted == (status is state.status), (state, status)


def _witness(old: TransactionStatus, new: TransactionStatus) -> tuple[State, State] | None:
    """Two states with these statuses that one movement could connect, if any."""
    for before, after in itertools.product(STATES, STATES):
        if (before.status, after.status) != (old, new):
            continue
        if after.captured < before.captured or after.refunded < before.refunded:
            continue
        if before.cancelled and not after.cancelled:
            continue
        return before, after
    return None


async def test_the_database_allows_exactly_the_state_machine_transitions(
    engine: AsyncEngine,
) -> None:
    allowed_seen: set[tuple[TransactionStatus, TransactionStatus]] = set()
    refused_seen: set[tuple[TransactionStatus, TransactionStatus]] = set()
    async with engine.begin() as conn:
        for number, (old, new) in enumerate(itertools.product(TransactionStatus, repeat=2)):
            witness = _witness(old, new)
            if witness is None:
                continue  # no amounts lead from old to new; the trigger never sees it
            before, after = witness
            txn_id = f"txn_{number}"
            await conn.execute(insert(transactions).values(**row(txn_id, **before.values())))
            change = update(transactions).where(transactions.c.id == txn_id)
            accepted = await attempt(conn, change.values(**after.values()))
            allowed = old is new or new in ALLOWED_TRANSITIONS[old]
            assert accepted == allowed, (old, new, before, after)
            (allowed_seen if allowed else refused_seen).add((old, new))
    every_edge = {(old, new) for old, targets in ALLOWED_TRANSITIONS.items() for new in targets}
    assert every_edge <= allowed_seen
    # Pairs the amounts permit but the state machine does not, e.g. AUTHORIZED -> REFUNDED.
    assert len(refused_seen) >= 5


async def test_the_trigger_keeps_immutable_columns_and_monotonic_amounts(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(transactions).values(**row(**State(80, 50, 30, False, False).values()))
        )
        await conn.execute(
            insert(transactions).values(**row("txn_2", **State(0, 0, 0, True, False).values()))
        )
    attempts = [
        # Each keeps every CHECK constraint satisfied: only the trigger refuses them.
        "UPDATE transactions SET amount = 90 WHERE id = 'txn_1'",
        "UPDATE transactions SET currency = 'EUR' WHERE id = 'txn_1'",
        "UPDATE transactions SET merchant_id = 'mer_bob' WHERE id = 'txn_1'",
        "UPDATE transactions SET create_time = now() WHERE id = 'txn_1'",
        "UPDATE transactions SET captured_amount = 40 WHERE id = 'txn_1'",
        "UPDATE transactions SET refunded_amount = 20 WHERE id = 'txn_1'",
        "UPDATE transactions SET cancelled = false, status = 'PENDING' WHERE id = 'txn_2'",
    ]
    async with engine.begin() as conn:
        for sql in attempts:
            assert not await attempt(conn, text(sql)), sql
        assert await attempt(
            conn, text("UPDATE transactions SET description = 'edited' WHERE id = 'txn_1'")
        )


async def test_database_refuses_a_movement_even_when_the_domain_check_is_bypassed(
    service: TransactionService, count_rows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await service.create_transaction(
        ALICE, amount=1000, currency="USD", description="", metadata={}
    )

    def no_checks(transaction: Transaction, movement: Movement, *, now: datetime) -> Transaction:
        authorized = transaction.authorized_amount + movement.authorized_delta
        return dataclasses.replace(
            transaction,
            authorized_amount=authorized,
            status=TransactionStatus.AUTHORIZED,
            update_time=now,
        )

    monkeypatch.setattr(service_module, "apply_movement", no_checks)
    too_much = Movement(
        id="mov_too_much",
        merchant_id="mer_alice",
        transaction_id=created.id,
        payment_id="pay_1",
        kind=MovementKind.AUTHORIZATION,
        authorized_delta=1001,
        captured_delta=0,
        refunded_delta=0,
        occur_time=NOW,
    )
    with pytest.raises(FailedPrecondition) as caught:
        await service.apply_movement(SERVICE, too_much)
    assert caught.value.reason == "LEDGER_INVARIANT_VIOLATED"
    assert await count_rows("applied_movements") == 0
    assert await service.get_transaction(ALICE, created.id) == created
