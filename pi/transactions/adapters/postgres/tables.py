"""The transactions schema as SQLAlchemy Core tables (migration 0001 creates the same).

Tables carry no schema: the connections' `search_path` finds them in the service's
schema (`transactions` by default). The money rules hold in the database whatever the
code does:

- `amount > 0` and `0 <= refunded <= captured <= authorized <= amount`;
- `status` is one of the known statuses and is exactly what `derive_status` gives for
  the row's amounts and flags; a cancelled transaction has nothing captured;
- trigger `transactions_guard_update` rejects a status change that is not in
  `ALLOWED_TRANSITIONS`, a decrease of the captured or refunded amount, undoing a
  cancellation, and any change of id, merchant, amount, currency or creation time.

`applied_movements` remembers every movement applied (primary key: the movement id), so
a movement delivered twice is applied once.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    CHAR,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

from pi.platform.db.engine import UtcDateTime
from pi.platform.db.idempotency import idempotency_table
from pi.transactions.domain import (
    ID_LENGTH,
    MERCHANT_ID_LENGTH,
    MOVEMENT_ID_LENGTH,
    MovementKind,
    TransactionStatus,
)

__all__ = [
    "STATUS_DERIVED_SQL",
    "applied_movements",
    "idempotency_keys",
    "metadata",
    "transactions",
]

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
    Column("metadata", JSONB(), nullable=False),
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
