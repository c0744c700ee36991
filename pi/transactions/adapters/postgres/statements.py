"""The SQL of the transaction service, built once with SQLAlchemy Core and run by psycopg
as prepared statements (`pi.platform.db.statements`).

Executing a prebuilt statement with parameters skips building it and computing its
cache key. A list of ids is one array parameter (`= ANY`), so that each statement is one
SQL text, prepared once, whatever the batch's size. bench/pgbench.py sends the same SQL
for CreateTransaction and ApplyMovements: change them together.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Integer,
    String,
    any_,
    bindparam,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql import ColumnElement

from pi.platform.db.engine import UtcDateTime
from pi.platform.db.idempotency import Idempotency
from pi.platform.db.statements import Statement
from pi.transactions.adapters.postgres.tables import (
    applied_movements,
    idempotency_keys,
    transactions,
)

IDEMPOTENCY = Idempotency(idempotency_keys)


def _any_id(column: ColumnElement[Any]) -> ColumnElement[bool]:
    # Unsized VARCHAR: a cast to VARCHAR(n)[] would silently cut a longer value and
    # could match another row.
    return column == any_(bindparam("p_ids", type_=ARRAY(String())))


# One transaction ------------------------------------------------------------------------

_GET_QUERY = select(transactions).where(
    transactions.c.id == bindparam("p_id"), transactions.c.merchant_id == bindparam("p_merchant_id")
)
INSERT_TRANSACTION = Statement(transactions.insert())
GET = Statement(_GET_QUERY)
GET_FOR_UPDATE = Statement(_GET_QUERY.with_for_update())
# A movement's deltas added to its transaction, with the status and flags it leads to.
_ADD_DELTAS_QUERY = (
    update(transactions)
    .where(
        transactions.c.id == bindparam("p_id"),
        transactions.c.merchant_id == bindparam("p_merchant_id"),
    )
    .values(
        authorized_amount=transactions.c.authorized_amount
        + bindparam("p_authorized_delta", type_=BigInteger()),
        captured_amount=transactions.c.captured_amount
        + bindparam("p_captured_delta", type_=BigInteger()),
        refunded_amount=transactions.c.refunded_amount
        + bindparam("p_refunded_delta", type_=BigInteger()),
        status=bindparam("p_status", type_=transactions.c.status.type),
        cancelled=bindparam("p_cancelled", type_=Boolean()),
        last_payment_failed=bindparam("p_last_payment_failed", type_=Boolean()),
        update_time=bindparam("p_update_time", type_=transactions.c.update_time.type),
    )
)
ADD_MOVEMENT = Statement(_ADD_DELTAS_QUERY.returning(*transactions.c))
RECORD_MOVEMENT = Statement(
    postgresql.insert(applied_movements)
    .on_conflict_do_nothing(index_elements=[applied_movements.c.id])
    .returning(applied_movements.c.id)
)
GET_MOVEMENT = Statement(
    select(applied_movements).where(applied_movements.c.id == bindparam("p_id"))
)


# A batch of movements (ApplyMovements) --------------------------------------------------

LOCK_MANY = Statement(
    select(transactions)
    .where(_any_id(transactions.c.id))
    .order_by(transactions.c.id)
    .with_for_update()
)
GET_MOVEMENTS = Statement(select(applied_movements).where(_any_id(applied_movements.c.id)))
FORGET_MOVEMENTS = Statement(applied_movements.delete().where(_any_id(applied_movements.c.id)))
# `RECORD_MOVEMENT` for a whole batch in one statement: the movements go as one array
# per column, unnested into rows.
_MOVEMENT_ARRAYS = func.unnest(
    bindparam("p_id", type_=ARRAY(String())),
    bindparam("p_transaction_id", type_=ARRAY(String())),
    bindparam("p_payment_id", type_=ARRAY(String())),
    bindparam("p_kind", type_=ARRAY(String())),
    bindparam("p_authorized_delta", type_=ARRAY(BigInteger())),
    bindparam("p_captured_delta", type_=ARRAY(BigInteger())),
    bindparam("p_refunded_delta", type_=ARRAY(BigInteger())),
    bindparam("p_occur_time", type_=ARRAY(UtcDateTime())),
)
_MOVEMENT_ROWS = _MOVEMENT_ARRAYS.table_valued(
    "id",
    "transaction_id",
    "payment_id",
    "kind",
    "authorized_delta",
    "captured_delta",
    "refunded_delta",
    "occur_time",
).render_derived(name="m")
RECORD_MOVEMENTS = Statement(
    postgresql.insert(applied_movements)
    .from_select(
        [*_MOVEMENT_ROWS.c.keys(), "apply_time"],
        select(
            *_MOVEMENT_ROWS.c,
            bindparam("p_apply_time", type_=applied_movements.c.apply_time.type).label(
                "apply_time"
            ),
        ),
    )
    .on_conflict_do_nothing(index_elements=[applied_movements.c.id])
    .returning(applied_movements.c.id)
)
# `ADD_MOVEMENT` without RETURNING: one run per step of a batch (`execute_many`).
ADD_DELTAS = Statement(_ADD_DELTAS_QUERY)


# Listing ----------------------------------------------------------------------------------


@cache
def list_statement(*, status: bool, start: bool, end: bool, after: bool) -> Statement:
    """The listing query with the filters a `ListQuery` uses (16 at most, built once each)."""
    t = transactions
    statement = select(t).where(t.c.merchant_id == bindparam("p_merchant_id"))
    if status:
        statement = statement.where(t.c.status == bindparam("p_status"))
    if start:
        statement = statement.where(t.c.create_time >= bindparam("p_start"))
    if end:
        statement = statement.where(t.c.create_time < bindparam("p_end"))
    if after:
        # A row comparison, so PostgreSQL walks the (merchant, time, id) index from it.
        statement = statement.where(
            tuple_(t.c.create_time, t.c.id)
            < tuple_(
                bindparam("p_after_create_time", type_=t.c.create_time.type),
                bindparam("p_after_id", type_=t.c.id.type),
            )
        )
    statement = statement.order_by(t.c.create_time.desc(), t.c.id.desc()).limit(
        bindparam("p_limit", type_=Integer())
    )
    return Statement(statement)
