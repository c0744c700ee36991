"""The outbox on PostgreSQL: the dispatcher's queue over the movements units appended
(`outbox_append.py`), in (transaction, seq) order, with dead letters and their retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from pi.payments.adapters.movements import decode_movement
from pi.payments.adapters.postgres.outbox_append import OUTBOX_COLUMNS
from pi.payments.adapters.postgres.tables import dead_letters, outbox, written
from pi.payments.app.ports import DeadLetter, QueuedMovement
from pi.platform.db.database import Database
from pi.platform.db.idempotency import Idempotency
from pi.platform.db.statements import Statement
from pi.platform.ledger import Movement
from pi.platform.observability import metrics

__all__ = ["PostgresOutbox"]

_outbox = written(outbox)

# The dispatcher's statements.
_o = outbox
_earlier = outbox.alias("earlier")
_NOW = sa.bindparam("p_now", type_=outbox.c.next_attempt_time.type)
# Due rows, except those with an earlier undelivered row of their transaction that sorts
# after them: one postponed (with every row of its transaction) before they were
# written. Such a row is held back until that earlier one is delivered, or it would
# overtake it: alone while the earlier one is not due, or when the batch's LIMIT cuts
# between them. So a batch holds, of each transaction, its first undelivered rows in
# order. The partial index on (transaction_id, seq) of undelivered rows (migration
# 0002) keeps the check to the few undelivered rows of the transaction.
_d = dead_letters
# A transaction with dead letters delivers nothing until they are retried: its later
# movements would overtake them. The dead letters are few (usually none), by transaction.
_NO_DEAD_LETTER = ~sa.exists().where(_d.c.transaction_id == _o.c.transaction_id).correlate(_o)
_DUE_MOVEMENTS = Statement(
    sa.select(_o.c.id, _o.c.transaction_id, _o.c.seq, _o.c.payload, _o.c.attempts, _o.c.traceparent)
    .where(
        _o.c.delivered_time.is_(None),
        _o.c.next_attempt_time <= _NOW,
        _NO_DEAD_LETTER,
        ~sa.exists()
        .where(
            _earlier.c.transaction_id == _o.c.transaction_id,
            _earlier.c.seq < _o.c.seq,
            _earlier.c.delivered_time.is_(None),
            _earlier.c.next_attempt_time > _o.c.next_attempt_time,
        )
        .correlate(_o),
    )
    .order_by(_o.c.next_attempt_time, _o.c.transaction_id, _o.c.seq)
    .limit(sa.bindparam("p_limit", type_=sa.Integer()))
)
_NEXT_MOVEMENT_TIME = Statement(
    sa.select(sa.func.min(_o.c.next_attempt_time).label("due")).where(
        _o.c.delivered_time.is_(None), _NO_DEAD_LETTER
    )
)
_OF_TRANSACTION_UNDELIVERED = (
    _outbox.c.transaction_id == sa.bindparam("p_transaction_id"),
    _outbox.c.delivered_time.is_(None),
)
_dead = written(dead_letters)
_DEAD_NOW = sa.bindparam("p_now", type_=dead_letters.c.dead_time.type)
_BURY = Statement(
    sa.insert(_dead).from_select(
        [
            "id",
            "transaction_id",
            "seq",
            "kind",
            "payload",
            "create_time",
            "attempts",
            "last_error",
            "dead_time",
        ],
        sa.select(
            _o.c.id,
            _o.c.transaction_id,
            _o.c.seq,
            _o.c.kind,
            _o.c.payload,
            _o.c.create_time,
            _o.c.attempts,
            _o.c.last_error,
            _DEAD_NOW,
        ).where(
            _o.c.transaction_id == sa.bindparam("p_transaction_id"),
            _o.c.delivered_time.is_(None),
        ),
    )
)
_REMOVE_UNDELIVERED = Statement(_outbox.delete().where(*_OF_TRANSACTION_UNDELIVERED))
_TRANSACTIONS = sa.bindparam("p_transaction_ids", type_=postgresql.ARRAY(sa.String()))
_RESURRECT = Statement(
    sa.insert(_outbox).from_select(
        [*OUTBOX_COLUMNS, "last_error"],
        sa.select(
            _d.c.id,
            _d.c.transaction_id,
            _d.c.seq,
            _d.c.kind,
            _d.c.payload,
            _d.c.create_time,
            sa.literal(0, type_=outbox.c.attempts.type),
            sa.bindparam("p_now", type_=outbox.c.next_attempt_time.type),
            # A retried movement goes out on behalf of the operator's retry, not a request.
            sa.null(),
            _d.c.last_error,
        ).where(_d.c.transaction_id == sa.any_(_TRANSACTIONS)),
    )
)
_FORGET_DEAD = Statement(_dead.delete().where(_dead.c.transaction_id == sa.any_(_TRANSACTIONS)))


@cache
def _list_dead(*, after: bool) -> Statement:
    query = sa.select(_d)
    if after:
        time = sa.bindparam("p_after_time", type_=_d.c.dead_time.type)
        last_id = sa.bindparam("p_after_id", type_=_d.c.id.type)
        query = query.where(
            sa.or_(_d.c.dead_time > time, sa.and_(_d.c.dead_time == time, _d.c.id > last_id))
        )
    return Statement(
        query.order_by(_d.c.dead_time, _d.c.id).limit(sa.bindparam("p_limit", type_=sa.Integer()))
    )


_UNDELIVERED_COUNT = Statement(
    sa.select(sa.func.count().label("count")).select_from(_o).where(_o.c.delivered_time.is_(None))
)
# The ids as one array parameter: one prepared statement whatever their number.
_MARK_DELIVERED = Statement(
    _outbox.update()
    .where(
        _outbox.c.id == sa.any_(sa.bindparam("p_ids", type_=postgresql.ARRAY(sa.String()))),
        _outbox.c.delivered_time.is_(None),
    )
    .values(delivered_time=sa.bindparam("p_now", type_=outbox.c.delivered_time.type))
)
_COUNT_ATTEMPT = Statement(
    _outbox.update()
    .where(_outbox.c.id == sa.bindparam("p_id"))
    .values(
        attempts=_outbox.c.attempts + 1,
        last_error=sa.bindparam("p_error", type_=outbox.c.last_error.type),
    )
)
_PURGE_DELIVERED = Statement(
    _outbox.delete().where(
        _outbox.c.delivered_time.is_not(None),
        _outbox.c.delivered_time
        < sa.bindparam("p_delivered_before", type_=outbox.c.delivered_time.type),
    )
)
_POSTPONE = Statement(
    _outbox.update()
    .where(
        _outbox.c.transaction_id == sa.bindparam("p_transaction_id"),
        _outbox.c.delivered_time.is_(None),
    )
    .values(next_attempt_time=sa.bindparam("p_retry_at", type_=outbox.c.next_attempt_time.type))
)


def _queued(row: Any) -> QueuedMovement:
    try:
        movement: Movement | None = decode_movement(bytes(row.payload))
        problem = None
    except Exception as error:
        movement, problem = None, error
    return QueuedMovement(
        row.id, row.transaction_id, row.seq, row.attempts, movement, problem, row.traceparent
    )


class PostgresOutbox:
    """The dispatcher's side of the outbox. Each call is its own unit: reads and one-
    statement writes in autocommit (no BEGIN/COMMIT), two statements in a transaction."""

    def __init__(self, database: Database, idempotency: Idempotency) -> None:
        self._database = database
        self._idempotency = idempotency

    async def due(self, now: datetime, limit: int) -> list[QueuedMovement]:
        async with self._database.reading() as conn:
            rows = await _DUE_MOVEMENTS.all(conn, {"p_now": now, "p_limit": limit})
        return [_queued(row) for row in rows]

    async def mark_delivered(self, movement_ids: Sequence[str], now: datetime) -> None:
        if not movement_ids:
            return
        async with self._database.reading() as conn:
            await _MARK_DELIVERED.execute(conn, {"p_ids": list(movement_ids), "p_now": now})

    async def postpone(
        self, transaction_id: str, head_id: str, retry_at: datetime, error: str
    ) -> None:
        metrics.outbox_failures.labels("movements").inc()
        async with self._database.transaction() as conn:
            await _COUNT_ATTEMPT.execute(conn, {"p_id": head_id, "p_error": error[:500]})
            await _POSTPONE.execute(
                conn, {"p_transaction_id": transaction_id, "p_retry_at": retry_at}
            )

    async def dead_letter(
        self, transaction_id: str, head_id: str, error: str, now: datetime
    ) -> int:
        async with self._database.transaction() as conn:
            await _COUNT_ATTEMPT.execute(conn, {"p_id": head_id, "p_error": error[:500]})
            moved = await _BURY.execute(conn, {"p_transaction_id": transaction_id, "p_now": now})
            await _REMOVE_UNDELIVERED.execute(conn, {"p_transaction_id": transaction_id})
        return moved

    async def dead_letters(
        self, limit: int, *, after: tuple[datetime, str] | None
    ) -> list[DeadLetter]:
        after_time, after_id = after or (None, None)
        params = {"p_limit": limit, "p_after_time": after_time, "p_after_id": after_id}
        async with self._database.reading() as conn:
            rows = await _list_dead(after=after is not None).all(conn, params)
        return [
            DeadLetter(
                row.id,
                row.transaction_id,
                row.seq,
                row.kind,
                row.attempts,
                row.last_error,
                row.create_time,
                row.dead_time,
            )
            for row in rows
        ]

    async def retry_dead_letters(self, transaction_ids: Sequence[str], now: datetime) -> int:
        params = {"p_transaction_ids": list(transaction_ids), "p_now": now}
        async with self._database.transaction() as conn:
            back = await _RESURRECT.execute(conn, params)
            await _FORGET_DEAD.execute(conn, {"p_transaction_ids": list(transaction_ids)})
        return back

    async def next_due(self) -> datetime | None:
        async with self._database.reading() as conn:
            row = await _NEXT_MOVEMENT_TIME.one(conn)
        due: datetime | None = row.due
        return due

    async def undelivered_count(self) -> int:
        async with self._database.reading() as conn:
            row = await _UNDELIVERED_COUNT.one(conn)
        return int(row.count)

    async def purge(self, *, delivered_before: datetime) -> int:
        async with self._database.transaction() as conn:
            movements = await _PURGE_DELIVERED.execute(
                conn, {"p_delivered_before": delivered_before}
            )
            keys = await self._idempotency.purge(conn)
        return movements + keys
