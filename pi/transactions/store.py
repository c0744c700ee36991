"""Transaction storage: SQLAlchemy Core tables and the queries the use cases need.

Tables carry no schema: the platform engine maps them into the service's schema
(`transactions` by default). The money rules hold in the database whatever the code
does (migration 0001 creates the same constraints, plus a PostgreSQL trigger):

- `amount > 0` and `0 <= refunded <= captured <= authorized <= amount`;
- `status` is one of the known statuses and is exactly what `derive_status` gives for
  the row's amounts and flags; a cancelled transaction has nothing captured;
- on PostgreSQL, trigger `transactions_guard_update` rejects a status change that is not
  in `ALLOWED_TRANSITIONS`, a decrease of the captured or refunded amount, undoing a
  cancellation, and any change of id, merchant, amount, currency or creation time.

`applied_movements` remembers every movement applied (primary key: the movement id), so
a movement delivered twice is applied once.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from types import MappingProxyType
from typing import Any

from sqlalchemy import (
    CHAR,
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from pi.platform.db.database import Database
from pi.platform.db.engine import UtcDateTime
from pi.platform.db.errors import IntegrityError
from pi.platform.db.idempotency import Idempotency, idempotency_table
from pi.platform.db.statements import Batch, Conn, Deferred, Record, Statement, for_any_of
from pi.platform.kernel.errors import FailedPrecondition
from pi.transactions.domain import (
    REASON_LEDGER_INVARIANT_VIOLATED,
    Movement,
    MovementKind,
    Transaction,
    TransactionStatus,
)

ID_LENGTH = 40
MERCHANT_ID_LENGTH = 64
MOVEMENT_ID_LENGTH = 128

STATUSES = tuple(status.value for status in TransactionStatus)
MOVEMENT_KINDS = tuple(kind.value for kind in MovementKind)


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# `derive_status` in SQL; migration 0001 holds the same text.
STATUS_DERIVED_SQL = (
    "status = CASE"
    " WHEN cancelled THEN 'CANCELLED'"
    " WHEN captured_amount > 0 AND refunded_amount = captured_amount THEN 'REFUNDED'"
    " WHEN refunded_amount > 0 THEN 'PARTIALLY_REFUNDED'"
    " WHEN captured_amount > 0 THEN 'COMPLETED'"
    " WHEN authorized_amount > 0 THEN 'AUTHORIZED'"
    " WHEN last_payment_failed THEN 'FAILED'"
    " ELSE 'PENDING' END"
)


metadata = MetaData()

transactions = Table(
    "transactions",
    metadata,
    Column("id", String(ID_LENGTH), primary_key=True),
    Column("merchant_id", String(MERCHANT_ID_LENGTH), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", CHAR(3), nullable=False),
    Column("description", Text, nullable=False),
    Column("metadata", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    Column("status", String(32), nullable=False),
    Column("authorized_amount", BigInteger, nullable=False),
    Column("captured_amount", BigInteger, nullable=False),
    Column("refunded_amount", BigInteger, nullable=False),
    Column("cancelled", Boolean, nullable=False),
    Column("last_payment_failed", Boolean, nullable=False),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
    CheckConstraint("amount > 0", name="ck_transactions_amount_positive"),
    CheckConstraint(
        "0 <= refunded_amount AND refunded_amount <= captured_amount"
        " AND captured_amount <= authorized_amount AND authorized_amount <= amount",
        name="ck_transactions_amounts_ordered",
    ),
    CheckConstraint(_in("status", STATUSES), name="ck_transactions_status_known"),
    CheckConstraint(STATUS_DERIVED_SQL, name="ck_transactions_status_derived"),
    CheckConstraint(
        "NOT cancelled OR captured_amount = 0", name="ck_transactions_cancelled_uncaptured"
    ),
)
Index(
    "ix_transactions_merchant_create_time_id",
    transactions.c.merchant_id,
    transactions.c.create_time.desc(),
    transactions.c.id.desc(),
)

applied_movements = Table(
    "applied_movements",
    metadata,
    Column("id", String(MOVEMENT_ID_LENGTH), primary_key=True),
    Column(
        "transaction_id",
        String(ID_LENGTH),
        ForeignKey("transactions.id", name="fk_applied_movements_transaction_id"),
        nullable=False,
    ),
    Column("payment_id", String(ID_LENGTH), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("authorized_delta", BigInteger, nullable=False),
    Column("captured_delta", BigInteger, nullable=False),
    Column("refunded_delta", BigInteger, nullable=False),
    Column("occur_time", UtcDateTime(), nullable=False),
    Column("apply_time", UtcDateTime(), nullable=False),
    CheckConstraint(_in("kind", MOVEMENT_KINDS), name="ck_applied_movements_kind_known"),
    CheckConstraint(
        "captured_delta >= 0 AND refunded_delta >= 0", name="ck_applied_movements_deltas"
    ),
)
Index(
    "ix_applied_movements_transaction_id_apply_time",
    applied_movements.c.transaction_id,
    applied_movements.c.apply_time,
)

idempotency_keys = idempotency_table(metadata)


# Statements of the hot paths (create, lookup, apply a movement), built once: executing
# a prebuilt statement with parameters skips building it and computing its cache key.
# `Statement`s also skip SQLAlchemy's execution on PostgreSQL (see pi.platform.db.statements).
_GET_QUERY = select(transactions).where(
    transactions.c.id == bindparam("p_id"), transactions.c.merchant_id == bindparam("p_merchant_id")
)
_INSERT_TRANSACTION = Statement(transactions.insert())
_GET = Statement(_GET_QUERY)
_GET_FOR_UPDATE = Statement(_GET_QUERY.with_for_update())
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
_ADD_MOVEMENT = Statement(_ADD_DELTAS_QUERY.returning(*transactions.c))
_RECORD_MOVEMENT = Statement(
    postgresql.insert(applied_movements)
    .on_conflict_do_nothing(index_elements=[applied_movements.c.id])
    .returning(applied_movements.c.id)
)
_GET_MOVEMENT = Statement(
    select(applied_movements).where(applied_movements.c.id == bindparam("p_id"))
)

# Statements of ApplyMovements (a batch of movements in one unit of work). A list of ids
# is one array parameter (`= ANY`, `for_any_of`), so that each statement is one SQL text,
# prepared once, whatever the batch's size.
_LOCK_MANY = for_any_of(
    transactions.c.id,
    lambda criterion: (
        select(transactions).where(criterion).order_by(transactions.c.id).with_for_update()
    ),
)
_GET_MOVEMENTS = for_any_of(
    applied_movements.c.id, lambda criterion: select(applied_movements).where(criterion)
)
_FORGET_MOVEMENTS = for_any_of(
    applied_movements.c.id, lambda criterion: applied_movements.delete().where(criterion)
)
# `_RECORD_MOVEMENT` for a whole batch in one statement. The movements go as one array
# per column, unnested into rows: one SQL text whatever the number of movements.
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
_RECORD_MOVEMENTS = Statement(
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
# `_ADD_MOVEMENT` without RETURNING: one run per step of a batch (`execute_many`).
_ADD_DELTAS = Statement(_ADD_DELTAS_QUERY)


@cache
def _list_statement(*, status: bool, start: bool, end: bool, after: bool) -> Statement:
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


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in the newest-first listing: strictly after the row (create_time, id)."""

    create_time: datetime
    id: str


@dataclass(frozen=True, slots=True)
class ListQuery:
    """One page of a merchant's transactions, newest first."""

    merchant_id: str
    limit: int
    status: TransactionStatus | None = None
    create_time_start: datetime | None = None
    create_time_end: datetime | None = None
    after: Cursor | None = None


class TransactionStore:
    """Queries on the service's database. Methods taking `conn` run in the caller's unit
    of work, one of `begin`, `read` or `discarded`."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self.idempotency = Idempotency(idempotency_keys)

    def begin(self, batch: Batch | None = None) -> AbstractAsyncContextManager[Conn]:
        """A unit of work: committed when the block ends, rolled back if it raises; with
        `batch`, begun by running it (one round trip on PostgreSQL, see `Database`)."""
        return self._database.transaction(batch)

    def read(self) -> AbstractAsyncContextManager[Conn]:
        """A connection for reads only, in autocommit mode (no BEGIN/ROLLBACK).

        Every statement commits on its own: never write on it (use `begin` or
        `discarded`).
        """
        return self._database.reading()

    def discarded(self) -> AbstractAsyncContextManager[Conn]:
        """A transaction that is always rolled back: writes made to check something."""
        return self._database.discarded()

    async def insert(self, conn: Conn, transaction: Transaction) -> None:
        await _INSERT_TRANSACTION.execute(conn, _to_row(transaction))

    def queue_insert(self, batch: Batch, transaction: Transaction) -> Deferred[int]:
        """`insert`, queued in `batch`."""
        return batch.execute(_INSERT_TRANSACTION, _to_row(transaction))

    async def get(
        self,
        conn: Conn,
        merchant_id: str,
        transaction_id: str,
        *,
        for_update: bool = False,
    ) -> Transaction | None:
        """The merchant's transaction, or None; `for_update` locks the row (PostgreSQL)."""
        query = _GET_FOR_UPDATE if for_update else _GET
        row = await query.first(conn, {"p_id": transaction_id, "p_merchant_id": merchant_id})
        return None if row is None else _from_record(row)

    async def list(self, conn: Conn, query: ListQuery) -> list[Transaction]:
        statement = _list_statement(
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
        return [_from_record(row) for row in await statement.all(conn, params)]

    async def record_movement(self, conn: Conn, movement: Movement, apply_time: datetime) -> bool:
        """Remember `movement` as applied; False if its id was applied before."""
        return await _RECORD_MOVEMENT.first(conn, _movement_row(movement, apply_time)) is not None

    async def get_movement(self, conn: Conn, movement_id: str) -> Record | None:
        """The applied movement with this id (a row of `applied_movements`), or None."""
        return await _GET_MOVEMENT.first(conn, {"p_id": movement_id})

    async def add_movement(self, conn: Conn, movement: Movement, after: Transaction) -> Transaction:
        """Add the movement's deltas to the (locked) row; status and flags from `after`.

        The amounts are updated relative to the stored ones (`x = x + delta`), so the
        CHECK constraints judge what is really stored. A violated constraint or trigger
        raises FailedPrecondition(LEDGER_INVARIANT_VIOLATED); the caller's unit of work
        then rolls back.
        """
        params = {
            "p_id": movement.transaction_id,
            "p_merchant_id": movement.merchant_id,
            "p_authorized_delta": movement.authorized_delta,
            "p_captured_delta": movement.captured_delta,
            "p_refunded_delta": movement.refunded_delta,
            "p_status": after.status.value,
            "p_cancelled": after.cancelled,
            "p_last_payment_failed": after.last_payment_failed,
            "p_update_time": after.update_time,
        }
        try:
            row = await _ADD_MOVEMENT.one(conn, params)
        except IntegrityError as exc:
            raise FailedPrecondition(
                f"The movement would break an invariant of transaction {after.id}.",
                reason=REASON_LEDGER_INVARIANT_VIOLATED,
                metadata={"transaction_id": after.id},
            ) from exc
        return _from_record(row)

    # Batches of movements (ApplyMovements): a few statements for the whole batch.

    async def lock_many(
        self, conn: Conn, transaction_ids: Collection[str]
    ) -> dict[str, Transaction]:
        """The transactions with these ids (any merchant's), locked, by id.

        One statement, locking in id order: two batches that touch the same transactions
        queue behind each other instead of deadlocking.
        """
        rows = await _LOCK_MANY.all(conn, {"p_ids": list(transaction_ids)})
        return {row.id: _from_record(row) for row in rows}

    async def record_movements(
        self, conn: Conn, movements: Sequence[Movement], apply_time: datetime
    ) -> set[str]:
        """Remember the movements as applied (one statement); the ids that were new.

        The ids must be distinct. An id missing from the answer was applied before.
        """
        if not movements:
            return set()
        rows = await _RECORD_MOVEMENTS.all(conn, _movement_columns(movements, apply_time))
        return {row.id for row in rows}

    async def get_movements(self, conn: Conn, movement_ids: Collection[str]) -> dict[str, Record]:
        """The applied movements with these ids (one statement), by id."""
        if not movement_ids:
            return {}
        rows = await _GET_MOVEMENTS.all(conn, {"p_ids": list(movement_ids)})
        return {row.id: row for row in rows}

    async def forget_movements(self, conn: Conn, movement_ids: Collection[str]) -> None:
        """Undo `record_movements` for movements that turned out not to apply."""
        if movement_ids:
            await _FORGET_MOVEMENTS.execute(conn, {"p_ids": list(movement_ids)})

    async def write_steps(
        self, conn: Conn, steps: Sequence[tuple[Transaction, Transaction]]
    ) -> None:
        """Move each locked row from `before` to `after` of its steps, in the given order.

        One UPDATE per step, all sent in one round trip on PostgreSQL. Each adds the
        differences of the amounts to what is stored, like `add_movement`, so the CHECK
        constraints and the PostgreSQL trigger judge every step. A violation raises
        IntegrityError: the caller's unit of work then rolls back.
        """
        await _ADD_DELTAS.execute_many(
            conn,
            [
                {
                    "p_id": after.id,
                    "p_merchant_id": after.merchant_id,
                    "p_authorized_delta": after.authorized_amount - before.authorized_amount,
                    "p_captured_delta": after.captured_amount - before.captured_amount,
                    "p_refunded_delta": after.refunded_amount - before.refunded_amount,
                    "p_status": after.status.value,
                    "p_cancelled": after.cancelled,
                    "p_last_payment_failed": after.last_payment_failed,
                    "p_update_time": after.update_time,
                }
                for before, after in steps
            ],
        )


def _to_row(transaction: Transaction) -> dict[str, Any]:
    return {
        "id": transaction.id,
        "merchant_id": transaction.merchant_id,
        "amount": transaction.amount,
        "currency": transaction.currency,
        "description": transaction.description,
        "metadata": dict(transaction.metadata),
        "status": transaction.status.value,
        "authorized_amount": transaction.authorized_amount,
        "captured_amount": transaction.captured_amount,
        "refunded_amount": transaction.refunded_amount,
        "cancelled": transaction.cancelled,
        "last_payment_failed": transaction.last_payment_failed,
        "create_time": transaction.create_time,
        "update_time": transaction.update_time,
    }


def _movement_row(movement: Movement, apply_time: datetime) -> dict[str, Any]:
    return {
        "id": movement.id,
        "transaction_id": movement.transaction_id,
        "payment_id": movement.payment_id,
        "kind": movement.kind.value,
        "authorized_delta": movement.authorized_delta,
        "captured_delta": movement.captured_delta,
        "refunded_delta": movement.refunded_delta,
        "occur_time": movement.occur_time,
        "apply_time": apply_time,
    }


def _movement_columns(movements: Sequence[Movement], apply_time: datetime) -> dict[str, Any]:
    """The parameters of `_RECORD_MOVEMENTS`: a list per column, one apply time."""
    return {
        "p_id": [m.id for m in movements],
        "p_transaction_id": [m.transaction_id for m in movements],
        "p_payment_id": [m.payment_id for m in movements],
        "p_kind": [m.kind.value for m in movements],
        "p_authorized_delta": [m.authorized_delta for m in movements],
        "p_captured_delta": [m.captured_delta for m in movements],
        "p_refunded_delta": [m.refunded_delta for m in movements],
        "p_occur_time": [m.occur_time for m in movements],
        "p_apply_time": apply_time,
    }


def _from_record(row: Record) -> Transaction:
    """A row of `transactions` (from a `Statement`: a named tuple or a SQLAlchemy `Row`)."""
    return Transaction(
        id=row.id,
        merchant_id=row.merchant_id,
        amount=row.amount,
        currency=row.currency,
        description=row.description,
        metadata=MappingProxyType(dict(row.metadata)),
        status=TransactionStatus(row.status),
        authorized_amount=row.authorized_amount,
        captured_amount=row.captured_amount,
        refunded_amount=row.refunded_amount,
        last_payment_failed=bool(row.last_payment_failed),
        create_time=row.create_time,
        update_time=row.update_time,
    )
