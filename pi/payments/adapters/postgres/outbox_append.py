"""Appending to the outbox on PostgreSQL, inside a unit of work: movements written with
their ref's change, numbered by the ref's `movement_count` (unique per transaction and
seq, so delivery order per transaction is the order they were made in). The dispatcher's
queue over them is `outbox.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import cache, lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import visitors

from pi.payments.adapters.movements import encode_movement
from pi.payments.adapters.postgres.tables import outbox, transaction_refs, written
from pi.platform.db.batch import StatementQueue
from pi.platform.db.merging import MergedForm
from pi.platform.db.statements import Statement
from pi.platform.ledger import Movement
from pi.platform.observability.tracing import current_traceparent

__all__ = ["OUTBOX_COLUMNS", "append", "append_if"]

_outbox = written(outbox)

# delivered_time and last_error start NULL: left out of the INSERT.
OUTBOX_COLUMNS = (
    "id",
    "transaction_id",
    "seq",
    "kind",
    "payload",
    "create_time",
    "attempts",
    "next_attempt_time",
    "traceparent",
)
# Rows per outbox INSERT: a change makes one or two movements, closing a transaction one
# per voided payment; this keeps the bound parameters far below the driver's limits.
_OUTBOX_ROWS_PER_INSERT = 256


@lru_cache(maxsize=16)
def _insert_outbox(rows: int) -> Statement:
    """One INSERT of `rows` movements (one round trip, not one statement per row)."""
    return Statement(
        _outbox.insert().values(
            [
                {
                    name: sa.bindparam(f"p{index}_{name}", type_=outbox.c[name].type)
                    for name in OUTBOX_COLUMNS
                }
                for index in range(rows)
            ]
        )
    )


def append(
    queue: StatementQueue, movements: Sequence[Movement], *, first_seq: int, now: datetime
) -> None:
    """Queue the INSERTs of `movements`, numbered from `first_seq` (the ref's UPDATE
    returned its new count)."""
    for start in range(0, len(movements), _OUTBOX_ROWS_PER_INSERT):
        chunk = movements[start : start + _OUTBOX_ROWS_PER_INSERT]
        params: dict[str, Any] = {}
        traceparent = current_traceparent()
        for index, movement in enumerate(chunk):
            row = {
                "id": movement.id,
                "transaction_id": movement.transaction_id,
                "seq": first_seq + start + index,
                "kind": movement.kind.value,
                "payload": encode_movement(movement),
                "create_time": now,
                "attempts": 0,
                "next_attempt_time": now,
                "traceparent": traceparent,
            }
            params.update((f"p{index}_{name}", value) for name, value in row.items())
        queue.execute(_insert_outbox(len(chunk)), params)


_Condition = Callable[[Any], tuple[sa.ColumnElement[bool], ...]]


# The movements of one change, as rows: one array per column, numbered (1, 2, ...).
_MOVEMENT_ROWS = (
    sa.func.unnest(
        sa.bindparam("p_ids", type_=postgresql.ARRAY(sa.String())),
        sa.bindparam("p_kinds", type_=postgresql.ARRAY(sa.String())),
        sa.bindparam("p_payloads", type_=postgresql.ARRAY(sa.LargeBinary())),
    )
    .table_valued("id", "kind", "payload", with_ordinality="n")
    .render_derived(name="m")
)


@cache
def _append_if(condition: _Condition) -> Statement:
    """The movements of one change appended with their seqs taken from the ref row, only
    if the row meets `condition` (that of the ref's UPDATE): it goes before that UPDATE,
    which cannot hand it the count it returns, as the row's count plus each movement's
    number. One statement however many movements (one SQL text, prepared once). FOR
    UPDATE takes the ref's lock first (re-checking the condition on the newest row), so
    the UPDATE that follows sees the same row and agrees. The changes of a group commit's
    units go as one statement (`_merged_append_if`)."""
    statement = Statement(_append_query(condition))
    statement.merged = _merged_append_if(condition)
    return statement


def _append_query(condition: _Condition) -> sa.Insert:
    now = sa.bindparam("p_now", type_=outbox.c.create_time.type)
    rows = _MOVEMENT_ROWS
    return sa.insert(_outbox).from_select(
        OUTBOX_COLUMNS,
        sa.select(
            rows.c.id,
            transaction_refs.c.transaction_id,
            transaction_refs.c.movement_count + rows.c.n,
            rows.c.kind,
            rows.c.payload,
            now,
            sa.literal(0, type_=outbox.c.attempts.type),
            now,
            sa.bindparam("p_traceparent", type_=outbox.c.traceparent.type),
        )
        .select_from(transaction_refs)
        .join(rows, sa.true())
        .where(
            transaction_refs.c.transaction_id == sa.bindparam("p_transaction_id"),
            *condition(transaction_refs),
        )
        .with_for_update(of=transaction_refs),
    )


# What each movement row carries in the merged form, besides its change's condition.
_PER_MOVEMENT = (
    "p_transaction_id",
    "p_n",
    "p_ids",
    "p_kinds",
    "p_payloads",
    "p_now",
    "p_traceparent",
)


class _MergedAppend(MergedForm):
    """`append_if` for the changes of many units at once, each on a ref of its own (the
    group sends runs on one ref one by one): one row per movement, carrying its change's
    ref, its number within the change and the change's condition values, all appended by
    one INSERT .. SELECT. Each row takes its seq from its own ref, as one run would."""

    def __init__(self, sql: str, condition_names: tuple[str, ...]) -> None:
        super().__init__(
            sql, (*_PER_MOVEMENT, *condition_names), ("p_transaction_id",), insert=True, returning=0
        )
        self._condition_names = condition_names

    def arrays(self, runs: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        arrays: dict[str, list[Any]] = {name: [] for name in self.names}
        for run in runs:
            for n, (id_, kind, payload) in enumerate(
                zip(run["p_ids"], run["p_kinds"], run["p_payloads"], strict=True), 1
            ):
                arrays["p_transaction_id"].append(run["p_transaction_id"])
                arrays["p_n"].append(n)
                arrays["p_ids"].append(id_)
                arrays["p_kinds"].append(kind)
                arrays["p_payloads"].append(payload)
                arrays["p_now"].append(run["p_now"])
                arrays["p_traceparent"].append(run["p_traceparent"])
                for name in self._condition_names:
                    arrays[name].append(run[name])
        return arrays

    def outcomes(
        self, rows: Sequence[Sequence[Any]], runs: Sequence[Mapping[str, Any]]
    ) -> list[list[Sequence[Any]]]:
        # Each row returns the ref it was appended for: a run's rows are its movements.
        per_run: list[list[Sequence[Any]]] = [[] for _ in runs]
        index = {run["p_transaction_id"]: n for n, run in enumerate(runs)}
        for row in rows:
            per_run[index[row[0]]].append(())
        return per_run


def _merged_append_if(condition: _Condition) -> _MergedAppend:
    """The merged form of `_append_if(condition)`: the same INSERT .. SELECT over one
    unnested row per movement, the condition's parameters read from each row."""
    conditions = condition(transaction_refs)
    binds: dict[str, Any] = {}
    for clause in conditions:
        for bind in visitors.iterate(clause):
            if isinstance(bind, sa.BindParameter) and not bind.unique:
                binds[bind.key] = bind.type
    names = tuple(sorted(binds))
    types = {
        "p_transaction_id": sa.String(),
        "p_n": sa.BigInteger(),
        "p_ids": sa.String(),
        "p_kinds": sa.String(),
        "p_payloads": sa.LargeBinary(),
        "p_now": outbox.c.create_time.type,
        "p_traceparent": outbox.c.traceparent.type,
        **binds,
    }
    columns = (*_PER_MOVEMENT, *names)
    rows = (
        sa.func.unnest(
            *(sa.bindparam(name, type_=postgresql.ARRAY(types[name])) for name in columns)
        )
        .table_valued(*columns)
        .render_derived(name="m")
    )

    def from_row(element: Any, **kw: Any) -> Any:
        # A named parameter is read from the row; a constant (`>= 0`) is written in the
        # SQL, since the merged statement is sent with the arrays alone.
        if not isinstance(element, sa.BindParameter):
            return None
        if element.unique:
            value = element.effective_value
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"a constant the merged append cannot write: {value!r}")
            return sa.literal_column(str(value))
        return rows.c[element.key]

    query = (
        sa.insert(_outbox)
        .from_select(
            OUTBOX_COLUMNS,
            sa.select(
                rows.c.p_ids,
                transaction_refs.c.transaction_id,
                transaction_refs.c.movement_count + rows.c.p_n,
                rows.c.p_kinds,
                rows.c.p_payloads,
                rows.c.p_now,
                sa.literal_column("0"),
                rows.c.p_now,
                rows.c.p_traceparent,
            )
            .select_from(transaction_refs)
            .join(rows, sa.true())
            .where(
                transaction_refs.c.transaction_id == rows.c.p_transaction_id,
                *(visitors.replacement_traverse(clause, {}, from_row) for clause in conditions),
            )
            .with_for_update(of=transaction_refs),
        )
        .returning(_outbox.c.transaction_id)
    )
    sql = Statement(query).sql
    if set(re.findall(r"%\((\w+)\)[sb]", sql)) != set(columns):
        raise ValueError(f"the merged append binds more than its rows: {sql}")
    return _MergedAppend(sql, names)


def append_if(
    queue: StatementQueue,
    condition: _Condition,
    movements: Sequence[Movement],
    where: dict[str, Any],
    *,
    now: datetime,
) -> None:
    """Queue the conditional INSERT of `movements` (one statement), before the ref's
    UPDATE on `condition` (with its parameters `where`): it writes if the UPDATE will,
    as both lock the row."""
    if not movements:
        return
    queue.execute(
        _append_if(condition),
        {
            **where,
            "p_ids": [movement.id for movement in movements],
            "p_kinds": [movement.kind.value for movement in movements],
            "p_payloads": [encode_movement(movement) for movement in movements],
            "p_now": now,
            "p_traceparent": current_traceparent(),
        },
    )
