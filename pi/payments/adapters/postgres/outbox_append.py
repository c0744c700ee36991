"""Appending to the outbox on PostgreSQL, inside a unit of work: movements written with
their ref's change, numbered by the ref's `movement_count` (unique per transaction and
seq, so delivery order per transaction is the order they were made in). The dispatcher's
queue over them is `outbox.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache, lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from pi.payments.adapters.movements import encode_movement
from pi.payments.adapters.postgres.tables import outbox, transaction_refs, written
from pi.platform.db.batch import StatementQueue
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
    the UPDATE that follows sees the same row and agrees."""
    now = sa.bindparam("p_now", type_=outbox.c.create_time.type)
    rows = _MOVEMENT_ROWS
    return Statement(
        sa.insert(_outbox).from_select(
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
    )


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
