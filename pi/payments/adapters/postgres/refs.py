"""Transactions' ledger rows (`transaction_refs`) on PostgreSQL.

A ref's amounts are written as deltas from the ref a change was decided on, so even a
writer that forgot a lock could not lose an update; the CHECK constraints have the last
word. In a LOCKED unit the row was read FOR UPDATE, so the UPDATE is plain. Otherwise it
is conditional, and the unit conflicts if it missed:

- `update`: only if the row still holds what was read (held, captured, closed): a budget
  check made on it without a lock then holds under the row lock the UPDATE takes
  (PostgreSQL re-checks the condition on the row it locks). On a ref this unit `add`ed
  (first sight): only if the row is still exactly as first inserted, whoever inserted it
  (a ref pushed by RegisterTransactions meanwhile is as good as our own insert; one with
  other facts, a hold, a movement or closed is not);
- `settle`: only if the row still holds what the change releases. The settlement only
  moves its payment's own hold, so a row changed by other payments meanwhile does not
  matter; a hold that is gone means someone settled the payment first.

Movements go to the outbox with the UPDATE (see `outbox.py` for how they are numbered).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from pi.payments.adapters.postgres import outbox_append as outbox
from pi.payments.adapters.postgres.rows import ref_from_row, ref_values
from pi.payments.adapters.postgres.tables import transaction_refs, written
from pi.payments.domain import TransactionRef
from pi.platform.db.statements import Statement
from pi.platform.kernel.units import Mode
from pi.platform.ledger import Movement

if TYPE_CHECKING:
    from pi.payments.adapters.postgres.uow import PostgresPaymentsUnit

__all__ = ["PostgresRefs"]

_refs = written(transaction_refs)

_REF_ID = transaction_refs.c.transaction_id == sa.bindparam("p_transaction_id")
_GET_REF_QUERY = sa.select(transaction_refs).where(_REF_ID)
_GET_REF = Statement(_GET_REF_QUERY)
_LOCK_REF = Statement(_GET_REF_QUERY.with_for_update())
# No conflict target: a concurrent first sight of the same transaction can collide on
# the (transaction_id, currency) key before the primary key, and either collision means
# the ref exists already (naming only the primary key made such a race fail).
_INSERT_REF = Statement(postgresql.insert(_refs).on_conflict_do_nothing())
_HELD_DELTA = sa.bindparam("p_held_delta", type_=sa.BigInteger())
_UPDATE_REF_QUERY = (
    _refs.update()
    .where(_refs.c.transaction_id == sa.bindparam("p_transaction_id"))
    .values(
        held_amount=_refs.c.held_amount + _HELD_DELTA,
        captured_amount=_refs.c.captured_amount
        + sa.bindparam("p_captured_delta", type_=sa.BigInteger()),
        refunded_amount=_refs.c.refunded_amount
        + sa.bindparam("p_refunded_delta", type_=sa.BigInteger()),
        closed=sa.bindparam("p_closed", type_=sa.Boolean()),
        movement_count=_refs.c.movement_count
        + sa.bindparam("p_movement_count", type_=sa.BigInteger()),
        update_time=sa.bindparam("p_update_time", type_=transaction_refs.c.update_time.type),
    )
    .returning(_refs.c.movement_count)
)
_UPDATE_REF = Statement(_UPDATE_REF_QUERY)

_Condition = Callable[[Any], tuple[sa.ColumnElement[bool], ...]]
_NOTHING: sa.ColumnClause[Any] = sa.literal_column("0")


def _unchanged(t: Any) -> tuple[sa.ColumnElement[bool], ...]:
    """What a budget check read is still the row's state."""
    return (
        t.c.held_amount == sa.bindparam("p_old_held", type_=sa.BigInteger()),
        t.c.captured_amount == sa.bindparam("p_old_captured", type_=sa.BigInteger()),
        t.c.closed == sa.bindparam("p_old_closed", type_=sa.Boolean()),
    )


def _fresh(t: Any) -> tuple[sa.ColumnElement[bool], ...]:
    """The row is still as first inserted: the facts decided on, nothing held, captured
    or refunded, no movement, open."""
    return (
        t.c.merchant_id == sa.bindparam("p_merchant_id", type_=sa.String()),
        t.c.amount == sa.bindparam("p_amount", type_=sa.BigInteger()),
        t.c.currency == sa.bindparam("p_currency", type_=sa.String()),
        t.c.held_amount == _NOTHING,
        t.c.captured_amount == _NOTHING,
        t.c.refunded_amount == _NOTHING,
        t.c.movement_count == _NOTHING,
        t.c.closed == sa.false(),
    )


def _holding(t: Any) -> tuple[sa.ColumnElement[bool], ...]:
    """The row still holds what the change releases."""
    return (t.c.held_amount + _HELD_DELTA >= 0,)


_UPDATE_REF_IF: dict[_Condition, Statement] = {
    condition: Statement(_UPDATE_REF_QUERY.where(*condition(_refs)))
    for condition in (_unchanged, _fresh, _holding)
}
# RegisterTransactions: many refs in one statement, holding nothing yet, as one array
# per column unnested into rows (one SQL text, prepared once, whatever their number). No
# conflict target, like `_INSERT_REF`: a ref that exists already is left as it is.
_REF_COLUMNS = ("transaction_id", "merchant_id", "amount", "currency")
_REF_ROWS = (
    sa.func.unnest(
        sa.bindparam("p_transaction_id", type_=postgresql.ARRAY(sa.String())),
        sa.bindparam("p_merchant_id", type_=postgresql.ARRAY(sa.String())),
        sa.bindparam("p_amount", type_=postgresql.ARRAY(sa.BigInteger())),
        sa.bindparam("p_currency", type_=postgresql.ARRAY(sa.String())),
    )
    .table_valued(*_REF_COLUMNS)
    .render_derived(name="r")
)
_REF_NOW = sa.bindparam("p_now", type_=transaction_refs.c.create_time.type)
_INSERT_REFS = Statement(
    postgresql.insert(_refs)
    .from_select(
        [
            *_REF_COLUMNS,
            "closed",
            "held_amount",
            "captured_amount",
            "refunded_amount",
            "movement_count",
            "create_time",
            "update_time",
        ],
        sa.select(
            *_REF_ROWS.c,
            sa.false(),
            *(sa.literal_column("0") for _ in range(4)),
            _REF_NOW,
            _REF_NOW,
        ),
    )
    .on_conflict_do_nothing()
    .returning(_refs.c.transaction_id)
)
# The array is of unsized VARCHAR: a cast to VARCHAR(n)[] would silently cut a longer
# value and could match another row.
_GET_REFS = Statement(
    sa.select(transaction_refs).where(
        transaction_refs.c.transaction_id
        == sa.any_(sa.bindparam("p_ids", type_=postgresql.ARRAY(sa.String())))
    )
)


def _update_params(
    old: TransactionRef, new: TransactionRef, movements: int, now: datetime
) -> dict[str, Any]:
    return {
        "p_transaction_id": old.transaction_id,
        "p_held_delta": new.held_amount - old.held_amount,
        "p_captured_delta": new.captured_amount - old.captured_amount,
        "p_refunded_delta": new.refunded_amount - old.refunded_amount,
        "p_closed": new.closed,
        "p_movement_count": movements,
        "p_update_time": now,
    }


def _condition_params(
    condition: _Condition, old: TransactionRef, new: TransactionRef
) -> dict[str, Any]:
    if condition is _holding:
        return {"p_held_delta": new.held_amount - old.held_amount}
    if condition is _unchanged:
        return {
            "p_old_held": old.held_amount,
            "p_old_captured": old.captured_amount,
            "p_old_closed": old.closed,
        }
    if condition is _fresh:
        return {
            "p_merchant_id": old.merchant_id,
            "p_amount": old.amount,
            "p_currency": old.currency,
        }
    raise ValueError(condition)


class PostgresRefs:
    def __init__(self, unit: PostgresPaymentsUnit) -> None:
        self._unit = unit
        # Refs this unit inserted (OPTIMISTIC): a change on one is conditional on the row
        # still being fresh.
        self._added: dict[str, TransactionRef] = {}

    async def get(
        self, transaction_id: str, *, seen: TransactionRef | None = None
    ) -> TransactionRef | None:
        unit = self._unit
        if seen is not None and not unit.locking:
            return seen
        statement = _LOCK_REF if unit.locking else _GET_REF
        row = await unit.read(statement, {"p_transaction_id": transaction_id})
        return None if row is None else ref_from_row(row)

    async def add(self, facts: TransactionRef, *, now: datetime) -> TransactionRef:
        # An inserted row is this unit's alone until it commits (a concurrent insert of
        # the same transaction waits, then does nothing), so it needs no lock.
        self._unit.execute(_INSERT_REF, ref_values(facts, now))
        if not self._unit.locking:
            self._added[facts.transaction_id] = facts
            return facts
        ref = await self.get(facts.transaction_id)
        if ref is None:  # pragma: no cover - inserted above, or there already
            raise LookupError(f"no ref for {facts.transaction_id}")
        return ref

    async def add_all(self, refs: Sequence[TransactionRef], *, now: datetime) -> set[str]:
        if self._unit.mode is not Mode.LOCKED:
            raise RuntimeError("refs are registered in a LOCKED unit")
        if not refs:
            return set()
        params = {
            "p_transaction_id": [ref.transaction_id for ref in refs],
            "p_merchant_id": [ref.merchant_id for ref in refs],
            "p_amount": [ref.amount for ref in refs],
            "p_currency": [ref.currency for ref in refs],
            "p_now": now,
        }
        return {row.transaction_id for row in await self._unit.read_all(_INSERT_REFS, params)}

    async def get_all(self, transaction_ids: Sequence[str]) -> dict[str, TransactionRef]:
        if not transaction_ids:
            return {}
        rows = await self._unit.read_all(_GET_REFS, {"p_ids": list(transaction_ids)})
        return {row.transaction_id: ref_from_row(row) for row in rows}

    async def update(
        self,
        old: TransactionRef,
        new: TransactionRef,
        movements: Sequence[Movement] = (),
        *,
        now: datetime,
    ) -> None:
        fresh = self._added.get(old.transaction_id) == old
        await self._write(_fresh if fresh else _unchanged, old, new, movements, now)

    async def settle(
        self,
        old: TransactionRef,
        new: TransactionRef,
        movements: Sequence[Movement],
        *,
        now: datetime,
    ) -> None:
        await self._write(_holding, old, new, movements, now)

    async def _write(
        self,
        condition: _Condition,
        old: TransactionRef,
        new: TransactionRef,
        movements: Sequence[Movement],
        now: datetime,
    ) -> None:
        unit = self._unit
        params = _update_params(old, new, len(movements), now)
        if unit.locking:
            written_row = await unit.read(_UPDATE_REF, params)
            if written_row is None:  # pragma: no cover - the row is locked
                raise LookupError(f"no ref for {old.transaction_id}")
            first = written_row.movement_count - len(movements) + 1
            outbox.append(unit, movements, first_seq=first, now=now)
            return
        # Queued before the UPDATE, which cannot hand them the count it returns: each
        # takes its seq from the row on the same condition (see `outbox.append_if`).
        condition_params = _condition_params(condition, old, new)
        where = {"p_transaction_id": old.transaction_id, **condition_params}
        outbox.append_if(unit, condition, movements, where, now=now)
        written = unit.hit(_UPDATE_REF_IF[condition], {**params, **condition_params})
        unit.expect(written, f"the ref of {old.transaction_id} changed")
