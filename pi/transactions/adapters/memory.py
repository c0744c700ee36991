"""The transaction service's unit of work in memory, for use-case tests.

It behaves like the PostgreSQL one for everything the use cases rely on, and
tests/integration/transactions/test_transactions_units_contract.py runs the same
assertions on both: a transaction id and a movement id are unique, idempotency keys
replay, refuse reuse and report a key in progress alike, listings are ordered and paged
alike, the modes refuse what they refuse on PostgreSQL, and the invariants the database
keeps (its CHECK constraints and its guard trigger, see
`pi.transactions.adapters.postgres.tables`) are kept here too, refused with the same
errors. Units run one at a time (`MemoryUnitOfWork`), so none ever conflicts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from pi.platform.kernel.idempotency import RETENTION, replayed
from pi.platform.kernel.units import MemoryUnitOfWork, Mode
from pi.transactions.app.ports import Clock, ListQuery, StorageRefused
from pi.transactions.domain import (
    ALLOWED_TRANSITIONS,
    AppliedMovement,
    Movement,
    Transaction,
    UnreadableMovement,
    candidates,
    derive_status,
    invariant_violated,
    plan_batch,
    readable,
)

__all__ = ["MemoryTransactionsUnit", "MemoryUnits", "TransactionsState"]

_K = TypeVar("_K")
_V = TypeVar("_V")


class _Rows(dict[_K, _V], Generic[_K, _V]):
    """A table of immutable values: a unit's snapshot of it copies the table only."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _Rows[_K, _V]:
        return _Rows(self)


@dataclass(frozen=True, slots=True)
class _StoredKey:
    fingerprint: str
    response: bytes | None
    create_time: datetime


@dataclass
class TransactionsState:
    """Everything the in-memory store holds, shared by the units made on it."""

    transactions: _Rows[str, Transaction] = field(default_factory=_Rows)
    movements: _Rows[str, AppliedMovement] = field(default_factory=_Rows)
    keys: _Rows[tuple[str, str, str], _StoredKey] = field(default_factory=_Rows)


class _Refused(Exception):
    """A write the database's constraints would refuse."""


def _check_row(row: Transaction) -> None:
    """The CHECK constraints of `transactions`."""
    if row.amount <= 0:
        raise _Refused("ck_transactions_amount_positive")
    if not (0 <= row.refunded_amount <= row.captured_amount <= row.authorized_amount <= row.amount):
        raise _Refused("ck_transactions_amounts_ordered")
    derived = derive_status(
        cancelled=row.cancelled,
        authorized=row.authorized_amount,
        captured=row.captured_amount,
        refunded=row.refunded_amount,
        last_payment_failed=row.last_payment_failed,
    )
    if row.status is not derived:
        raise _Refused("ck_transactions_status_derived")
    if row.cancelled and row.captured_amount != 0:
        raise _Refused("ck_transactions_cancelled_uncaptured")


def _check_update(old: Transaction, new: Transaction) -> None:
    """The guard trigger on `transactions`, then the CHECK constraints."""
    immutable = ("id", "merchant_id", "amount", "currency", "create_time")
    if any(getattr(old, name) != getattr(new, name) for name in immutable):
        raise _Refused("transactions_immutable")
    if (
        new.captured_amount < old.captured_amount
        or new.refunded_amount < old.refunded_amount
        or (old.cancelled and not new.cancelled)
    ):
        raise _Refused("transactions_monotonic")
    if new.status is not old.status and new.status not in ALLOWED_TRANSITIONS[old.status]:
        raise _Refused("transactions_status_transition")
    _check_row(new)


class _Transactions:
    def __init__(self, unit: MemoryTransactionsUnit) -> None:
        self._unit = unit

    @property
    def _rows(self) -> _Rows[str, Transaction]:
        # Looked up on each use: a unit that rolled back put other tables in the state.
        return self._unit.state.transactions

    async def get(self, merchant_id: str, transaction_id: str) -> Transaction | None:
        row = self._rows.get(transaction_id)
        return row if row is not None and row.merchant_id == merchant_id else None

    async def list(self, query: ListQuery) -> list[Transaction]:
        rows = [
            row
            for row in self._rows.values()
            if row.merchant_id == query.merchant_id
            and (query.status is None or row.status is query.status)
            and (query.create_time_start is None or row.create_time >= query.create_time_start)
            and (query.create_time_end is None or row.create_time < query.create_time_end)
            and (
                query.after is None
                or (row.create_time, row.id) < (query.after.create_time, query.after.id)
            )
        ]
        rows.sort(key=lambda row: (row.create_time, row.id), reverse=True)
        return rows[: query.limit]

    def add(self, transaction: Transaction) -> None:
        self._unit.writing()
        if transaction.id in self._rows:
            raise StorageRefused(f"transaction {transaction.id} exists")
        try:
            _check_row(transaction)
        except _Refused as exc:
            raise StorageRefused(f"transaction {transaction.id} refused: {exc}") from exc
        self._rows[transaction.id] = transaction

    async def advance(self, before: Transaction, after: Transaction) -> Transaction:
        self._unit.locked()
        try:
            return self.write(before, after)
        except _Refused as exc:
            raise invariant_violated(after.id) from exc

    def write(self, before: Transaction, after: Transaction) -> Transaction:
        """The row after adding the differences from `before` to `after` to what is
        stored; `_Refused` if the database would refuse it."""
        stored = self._rows.get(after.id)
        if stored is None or stored.merchant_id != after.merchant_id:
            raise LookupError(f"no row {after.id} of {after.merchant_id} to update")
        new = dataclasses.replace(
            stored,
            authorized_amount=stored.authorized_amount
            + after.authorized_amount
            - before.authorized_amount,
            captured_amount=stored.captured_amount + after.captured_amount - before.captured_amount,
            refunded_amount=stored.refunded_amount + after.refunded_amount - before.refunded_amount,
            status=after.status,
            last_payment_failed=after.last_payment_failed,
            update_time=after.update_time,
        )
        _check_update(stored, new)
        self._rows[new.id] = new
        return new


class _Movements:
    def __init__(self, unit: MemoryTransactionsUnit, transactions: _Transactions) -> None:
        self._unit = unit
        self._transactions = transactions

    @property
    def _rows(self) -> _Rows[str, AppliedMovement]:
        return self._unit.state.movements

    async def record(self, movement: Movement, apply_time: datetime) -> bool:
        self._unit.locked()
        return self._record(movement, apply_time)

    def _record(self, movement: Movement, apply_time: datetime) -> bool:
        if movement.id in self._rows:
            return False
        if movement.transaction_id not in self._unit.state.transactions:
            raise StorageRefused(f"movement {movement.id}: fk_applied_movements_transaction_id")
        if movement.captured_delta < 0 or movement.refunded_delta < 0:
            raise StorageRefused(f"movement {movement.id}: ck_applied_movements_deltas")
        self._rows[movement.id] = AppliedMovement.of(movement, apply_time)
        return True

    async def get(self, movement_id: str) -> AppliedMovement | None:
        return self._rows.get(movement_id)

    async def apply_batch(
        self,
        movements: Sequence[Movement | UnreadableMovement],
        invalid: Sequence[Exception | None],
        now: datetime,
    ) -> list[Exception | None]:
        self._unit.locked()
        rows = self._unit.state.transactions
        current = {
            movement.transaction_id: rows[movement.transaction_id]
            for movement in readable(movements, invalid)
            if movement.transaction_id in rows
        }
        recordable = candidates(movements, invalid, current)
        recorded = {m.id for m in recordable if self._record(m, now)}
        known = {m.id: self._rows[m.id] for m in recordable if m.id not in recorded}
        plan = plan_batch(movements, invalid, current, recorded, known, now)
        for movement in recordable:
            if movement.id in recorded and movement.id not in plan.applied:
                del self._rows[movement.id]
        for chain in plan.chains.values():
            for before, after in itertools.pairwise(chain):
                try:
                    self._transactions.write(before, after)
                except _Refused as exc:
                    raise StorageRefused("a batch of movements was refused") from exc
        return plan.errors


class _IdempotencyKeys:
    def __init__(self, unit: MemoryTransactionsUnit, clock: Clock) -> None:
        self._unit = unit
        self._clock = clock

    @property
    def _rows(self) -> _Rows[tuple[str, str, str], _StoredKey]:
        return self._unit.state.keys

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
        self._unit.writing()
        if self._unit.mode is Mode.OPTIMISTIC and response is None:
            raise ValueError("an optimistic claim holds its response")
        stored = self._rows.get((scope, operation, key))
        if stored is None:
            self._rows[scope, operation, key] = _StoredKey(fingerprint, response, self._clock())
            return None
        return replayed(stored.fingerprint, stored.response, fingerprint, key)

    async def complete(self, scope: str, operation: str, key: str | None, response: bytes) -> None:
        if key is None:
            return
        self._unit.locked()
        stored = self._rows.get((scope, operation, key))
        if stored is not None:
            self._rows[scope, operation, key] = dataclasses.replace(stored, response=response)

    async def purge(self, older_than: timedelta) -> int:
        if older_than < RETENTION:
            raise ValueError("idempotency keys are kept at least 24 hours")
        self._unit.locked()
        cutoff = self._clock() - older_than
        old = [name for name, stored in self._rows.items() if stored.create_time < cutoff]
        for name in old:
            del self._rows[name]
        return len(old)


class MemoryTransactionsUnit(MemoryUnitOfWork[TransactionsState]):
    """`pi.transactions.app.ports.UnitOfWork` in memory."""

    def __init__(
        self,
        state: TransactionsState,
        lock: asyncio.Lock,
        mode: Mode = Mode.LOCKED,
        *,
        clock: Clock,
    ) -> None:
        super().__init__(state, lock, mode)
        self.transactions = _Transactions(self)
        self.movements = _Movements(self, self.transactions)
        self.idempotency = _IdempotencyKeys(self, clock)

    def writing(self) -> None:
        """As on PostgreSQL: a READ unit cannot write."""
        if self.mode is Mode.READ:
            raise RuntimeError("a READ unit cannot write")

    def locked(self) -> None:
        """As on PostgreSQL: writes whose result is needed at once take a LOCKED unit."""
        if self.mode is not Mode.LOCKED:
            raise RuntimeError(f"a {self.mode.value} unit runs no statement in a transaction")


class MemoryUnits:
    """`pi.transactions.app.ports.UnitsOfWork` in memory: every unit on one `state`."""

    def __init__(
        self, state: TransactionsState | None = None, *, clock: Clock | None = None
    ) -> None:
        self.state = state if state is not None else TransactionsState()
        self._lock = asyncio.Lock()
        self._clock: Clock = clock if clock is not None else _utc_now

    def __call__(self, mode: Mode = Mode.LOCKED) -> MemoryTransactionsUnit:
        return MemoryTransactionsUnit(self.state, self._lock, mode, clock=self._clock)


def _utc_now() -> datetime:
    return datetime.now(UTC)
