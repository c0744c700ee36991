"""The repositories of the PostgreSQL unit of work: transactions, applied movements and
idempotency keys, each running its statements through the unit.

Reads lock what they return on a LOCKED unit. Writes whose result the use case needs at
once (recording a movement, moving a row, claiming a key under locks) run on the unit's
transaction at once; the others are queued and go with the commit.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pi.platform.db.errors import IntegrityError
from pi.platform.db.idempotency import Claim
from pi.platform.kernel.units import Mode
from pi.transactions.adapters.postgres import statements as sql
from pi.transactions.adapters.postgres.rows import (
    advance_params,
    applied_movement_from_record,
    movement_columns,
    movement_row,
    transaction_from_record,
    transaction_row,
)
from pi.transactions.app.ports import ListQuery, StorageRefused
from pi.transactions.domain import (
    ALLOWED_TRANSITIONS,
    AppliedMovement,
    Movement,
    Transaction,
    UnreadableMovement,
    candidates,
    invariant_violated,
    plan_batch,
    readable,
)

if TYPE_CHECKING:
    from pi.transactions.adapters.postgres.uow import PostgresTransactionsUnit

__all__ = ["PostgresIdempotencyKeys", "PostgresMovements", "PostgresTransactions"]


class PostgresTransactions:
    def __init__(self, unit: PostgresTransactionsUnit) -> None:
        self._unit = unit

    async def get(self, merchant_id: str, transaction_id: str) -> Transaction | None:
        statement = sql.GET_FOR_UPDATE if self._unit.locking else sql.GET
        row = await self._unit.read(
            statement, {"p_id": transaction_id, "p_merchant_id": merchant_id}
        )
        return None if row is None else transaction_from_record(row)

    async def list(self, query: ListQuery) -> list[Transaction]:
        statement = sql.list_statement(
            status=query.status is not None,
            start=query.create_time_start is not None,
            end=query.create_time_end is not None,
            after=query.after is not None,
        )
        params: dict[str, Any] = {
            "p_merchant_id": query.merchant_id,
            "p_status": None if query.status is None else query.status.value,
            "p_start": query.create_time_start,
            "p_end": query.create_time_end,
            "p_after_create_time": None if query.after is None else query.after.create_time,
            "p_after_id": None if query.after is None else query.after.id,
            "p_limit": query.limit,
        }
        return [
            transaction_from_record(row) for row in await self._unit.read_all(statement, params)
        ]

    def add(self, transaction: Transaction) -> None:
        self._unit.execute(sql.INSERT_TRANSACTION, transaction_row(transaction))

    async def advance(self, before: Transaction, after: Transaction) -> Transaction:
        conn = await self._unit.connection()
        try:
            row = await sql.ADD_MOVEMENT.one(conn, advance_params(before, after))
        except IntegrityError as exc:  # a CHECK constraint or the guard trigger
            raise invariant_violated(after.id) from exc
        return transaction_from_record(row)

    async def lock_many(self, transaction_ids: Collection[str]) -> dict[str, Transaction]:
        """The transactions with these ids (any merchant's), locked, by id.

        One statement, locking in id order: two batches that touch the same transactions
        queue behind each other instead of deadlocking.
        """
        rows = await self._unit.read_all(sql.LOCK_MANY, {"p_ids": list(transaction_ids)})
        return {row.id: transaction_from_record(row) for row in rows}

    async def write_steps(self, steps: Sequence[tuple[Transaction, Transaction]]) -> None:
        """Move each locked row from `before` to `after` of its steps, in the given order.

        Each step adds the differences of the amounts to what is stored, like `advance`,
        so the CHECK constraints and the guard trigger judge every step; a violation
        raises IntegrityError. The n-th steps of all rows go together, as one set-based
        UPDATE (distinct rows): a batch of card payments captured at once is two
        statements, not two per payment.
        """
        conn = await self._unit.connection()
        rounds: list[list[dict[str, Any]]] = []
        taken: dict[str, int] = {}
        for before, after in steps:
            n = taken.get(before.id, 0)
            taken[before.id] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(advance_params(before, after))
        for runs in rounds:
            await sql.ADD_DELTAS.execute_many(conn, runs)


class PostgresMovements:
    def __init__(self, unit: PostgresTransactionsUnit, transactions: PostgresTransactions) -> None:
        self._unit = unit
        self._transactions = transactions

    async def record(self, movement: Movement, apply_time: datetime) -> bool:
        conn = await self._unit.connection()
        try:
            row = await sql.RECORD_MOVEMENT.first(conn, movement_row(movement, apply_time))
        except IntegrityError as exc:
            raise StorageRefused(f"the database refused movement {movement.id}") from exc
        return row is not None

    async def get(self, movement_id: str) -> AppliedMovement | None:
        row = await self._unit.read(sql.GET_MOVEMENT, {"p_id": movement_id})
        return None if row is None else applied_movement_from_record(row)

    async def apply_batch(
        self,
        movements: Sequence[Movement | UnreadableMovement],
        invalid: Sequence[Exception | None],
        now: datetime,
    ) -> list[Exception | None]:
        """Lock every touched row (one statement, id order), record the candidates' ids
        (one statement; a known id is a redelivery, checked for sameness with one more
        statement), plan in memory, forget the ids of refused movements, and write the
        rows (one round trip, a step per movement only where the trigger needs it)."""
        # Refuses a unit that is not LOCKED: what the plan decided on must stay locked.
        await self._unit.connection()
        try:
            current = await self._transactions.lock_many(
                {movement.transaction_id for movement in readable(movements, invalid)}
            )
            recordable = candidates(movements, invalid, current)
            recorded = await self.record_many(recordable, now)
            known = await self.get_many([m.id for m in recordable if m.id not in recorded])
            plan = plan_batch(movements, invalid, current, recorded, known, now)
            await self.forget(
                [m.id for m in recordable if m.id in recorded and m.id not in plan.applied]
            )
            await self._transactions.write_steps(
                [step for chain in plan.chains.values() for step in _steps(chain)]
            )
        except IntegrityError as exc:
            raise StorageRefused("the database refused a batch of movements") from exc
        return plan.errors

    async def record_many(self, movements: Sequence[Movement], apply_time: datetime) -> set[str]:
        """Remember the movements as applied (one statement); the ids that were new.

        The ids must be distinct. An id missing from the answer was applied before.
        """
        if not movements:
            return set()
        conn = await self._unit.connection()
        rows = await sql.RECORD_MOVEMENTS.all(conn, movement_columns(movements, apply_time))
        return {row.id for row in rows}

    async def get_many(self, movement_ids: Collection[str]) -> dict[str, AppliedMovement]:
        """The applied movements with these ids (one statement), by id."""
        if not movement_ids:
            return {}
        rows = await self._unit.read_all(sql.GET_MOVEMENTS, {"p_ids": list(movement_ids)})
        return {row.id: applied_movement_from_record(row) for row in rows}

    async def forget(self, movement_ids: Collection[str]) -> None:
        """Undo `record_many` for movements that turned out not to apply."""
        if movement_ids:
            conn = await self._unit.connection()
            await sql.FORGET_MOVEMENTS.execute(conn, {"p_ids": list(movement_ids)})


def _steps(chain: list[Transaction]) -> list[tuple[Transaction, Transaction]]:
    """The (before, after) row writes that take a row along `chain`, its states from the
    locked one through one per movement.

    The guard trigger judges each UPDATE's old and new status, so consecutive movements
    share one write only while the status change from that write's start is still an
    allowed transition: PENDING -> AUTHORIZED -> COMPLETED (a card payment captured at
    once) takes two writes, a run of refunds one. The other rules (amounts that never
    decrease, a final cancellation) hold for a merged write when they hold for each
    movement.
    """
    steps: list[tuple[Transaction, Transaction]] = []
    start = previous = chain[0]
    for state in chain[1:]:
        if (
            state.status is not start.status
            and state.status not in ALLOWED_TRANSITIONS[start.status]
        ):
            steps.append((start, previous))
            start = previous
        previous = state
    steps.append((start, previous))
    return steps


class PostgresIdempotencyKeys:
    """The keys in the service's `idempotency_keys` (`pi.platform.db.idempotency`)."""

    def __init__(self, unit: PostgresTransactionsUnit) -> None:
        self._unit = unit

    async def claim(
        self,
        scope: str,
        operation: str,
        key: str | None,
        fingerprint: str,
        *,
        response: bytes | None = None,
    ) -> bytes | None:
        if key is None:
            return None
        if self._unit.mode is Mode.OPTIMISTIC:
            if response is None:
                raise ValueError("an optimistic claim holds its response")
            queued = sql.IDEMPOTENCY.queue_claim(
                self._unit, scope, operation, key, fingerprint, response=response
            )
            assert queued.inserted is not None  # a key was given
            self._unit.expect(queued.inserted, "the idempotency key is taken")
            return None
        conn = await self._unit.connection()
        claim = await sql.IDEMPOTENCY.claim(
            conn, scope, operation, key, fingerprint, response=response
        )
        return claim.replay

    async def complete(self, scope: str, operation: str, key: str | None, response: bytes) -> None:
        if key is None:
            return
        conn = await self._unit.connection()
        # The request's fingerprint is not needed to store its response.
        await sql.IDEMPOTENCY.complete(conn, Claim(scope, operation, key, ""), response)

    async def purge(self, older_than: timedelta) -> int:
        conn = await self._unit.connection()
        return await sql.IDEMPOTENCY.purge(conn, older_than)
