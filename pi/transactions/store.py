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

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
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
    MetaData,
    Row,
    String,
    Table,
    Text,
    bindparam,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pi.platform.db import UtcDateTime, autocommit
from pi.platform.errors import FailedPrecondition
from pi.platform.idempotency import Idempotency, idempotency_table
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
_INSERT_TRANSACTION = transactions.insert()
_GET = select(transactions).where(
    transactions.c.id == bindparam("p_id"), transactions.c.merchant_id == bindparam("p_merchant_id")
)
_GET_FOR_UPDATE = _GET.with_for_update()
_ADD_MOVEMENT = (
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
    .returning(*transactions.c)
)
_RECORD_MOVEMENT = {
    name: dialect.insert(applied_movements)
    .on_conflict_do_nothing(index_elements=[applied_movements.c.id])
    .returning(applied_movements.c.id)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


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
    """Queries on the service's engine. Methods taking `conn` run in the caller's unit of work."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reads = autocommit(engine)
        self.idempotency = Idempotency(idempotency_keys)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A unit of work: committed when the block ends, rolled back if it raises."""
        async with self._engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads only, in autocommit mode (no BEGIN/ROLLBACK).

        Every statement commits on its own: never write on it (use `begin` or
        `discarded`).
        """
        async with self._reads.connect() as conn:
            yield conn

    @asynccontextmanager
    async def discarded(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that is always rolled back: writes made to check something."""
        async with self._engine.connect() as conn:
            yield conn

    async def insert(self, conn: AsyncConnection, transaction: Transaction) -> None:
        await conn.execute(_INSERT_TRANSACTION, _to_row(transaction))

    async def get(
        self,
        conn: AsyncConnection,
        merchant_id: str,
        transaction_id: str,
        *,
        for_update: bool = False,
    ) -> Transaction | None:
        """The merchant's transaction, or None; `for_update` locks the row (PostgreSQL)."""
        query = _GET_FOR_UPDATE if for_update else _GET
        row = (
            await conn.execute(query, {"p_id": transaction_id, "p_merchant_id": merchant_id})
        ).first()
        return None if row is None else _from_row(row)

    async def list(self, conn: AsyncConnection, query: ListQuery) -> list[Transaction]:
        t = transactions
        statement = select(t).where(t.c.merchant_id == query.merchant_id)
        if query.status is not None:
            statement = statement.where(t.c.status == query.status.value)
        if query.create_time_start is not None:
            statement = statement.where(t.c.create_time >= query.create_time_start)
        if query.create_time_end is not None:
            statement = statement.where(t.c.create_time < query.create_time_end)
        if query.after is not None:
            # A row comparison, so PostgreSQL walks the (merchant, time, id) index from it.
            statement = statement.where(
                tuple_(t.c.create_time, t.c.id)
                < tuple_(
                    literal(query.after.create_time, t.c.create_time.type),
                    literal(query.after.id, t.c.id.type),
                )
            )
        statement = statement.order_by(t.c.create_time.desc(), t.c.id.desc()).limit(query.limit)
        rows = (await conn.execute(statement)).all()
        return [_from_row(row) for row in rows]

    async def record_movement(
        self, conn: AsyncConnection, movement: Movement, apply_time: datetime
    ) -> bool:
        """Remember `movement` as applied; False if its id was applied before."""
        statement = _RECORD_MOVEMENT[conn.dialect.name]
        values = {
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
        return (await conn.execute(statement, values)).first() is not None

    async def get_movement(self, conn: AsyncConnection, movement_id: str) -> Row[Any] | None:
        query = select(applied_movements).where(applied_movements.c.id == movement_id)
        return (await conn.execute(query)).first()

    async def add_movement(
        self, conn: AsyncConnection, movement: Movement, after: Transaction
    ) -> Transaction:
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
            row = (await conn.execute(_ADD_MOVEMENT, params)).one()
        except IntegrityError as exc:
            raise FailedPrecondition(
                f"The movement would break an invariant of transaction {after.id}.",
                reason=REASON_LEDGER_INVARIANT_VIOLATED,
                metadata={"transaction_id": after.id},
            ) from exc
        return _from_row(row)


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


def _from_row(row: Row[Any]) -> Transaction:
    values = row._mapping
    return Transaction(
        id=values["id"],
        merchant_id=values["merchant_id"],
        amount=values["amount"],
        currency=values["currency"],
        description=values["description"],
        metadata=MappingProxyType(dict(values["metadata"])),
        status=TransactionStatus(values["status"]),
        authorized_amount=values["authorized_amount"],
        captured_amount=values["captured_amount"],
        refunded_amount=values["refunded_amount"],
        last_payment_failed=bool(values["last_payment_failed"]),
        create_time=values["create_time"],
        update_time=values["update_time"],
    )
