"""The payment service's tables (SQLAlchemy Core, no schema: the search_path finds them).

The money rules that must hold whatever the code does are constraints here, mirrored by
migration 0001 (plus a PostgreSQL trigger for the payment state machine):

- `transaction_refs`: held + captured <= amount, refunded <= captured, all >= 0.
- `payments`: amount > 0, 0 <= refunded <= captured <= amount, status in the known set,
  `failure_reason` set exactly when FAILED, `captured_amount > 0` exactly when SUCCEEDED,
  and (transaction_id, currency) references the ref's (transaction_id, currency) so a
  payment's currency is its transaction's.
- `payments` (migration 0003): `capturing_amount` set exactly when CAPTURING, pending
  refunds within what is captured and not refunded.
- `refunds`: amount > 0, belongs to a payment (and its currency), `failure_reason` set
  exactly when FAILED.
- `outbox`: one row per money movement, unique per (transaction_id, seq) so delivery
  order per transaction is the order the movements were made in.
"""

from __future__ import annotations

import sqlalchemy as sa

from pi.platform.db.engine import UtcDateTime
from pi.platform.db.idempotency import idempotency_table

metadata = sa.MetaData()

PAYMENT_STATUSES = (
    "PROCESSING",
    "REQUIRES_CAPTURE",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "CAPTURING",
    "CANCELLING",
)
REFUND_STATUSES = ("SUCCEEDED", "PENDING", "FAILED")
FAILURE_REASONS = (
    "CARD_DECLINED",
    "INSUFFICIENT_FUNDS",
    "PROCESSOR_UNAVAILABLE",
    "PROCESSOR_DECLINED",
)
METHODS = ("CARD", "BANK_TRANSFER", "WALLET")
CAPTURE_MODES = ("AUTOMATIC", "MANUAL")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


transaction_refs = sa.Table(
    "transaction_refs",
    metadata,
    sa.Column("transaction_id", sa.String(64), primary_key=True),
    sa.Column("merchant_id", sa.String(64), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("closed", sa.Boolean, nullable=False, default=False),
    sa.Column("held_amount", sa.BigInteger, nullable=False, default=0),
    sa.Column("captured_amount", sa.BigInteger, nullable=False, default=0),
    sa.Column("refunded_amount", sa.BigInteger, nullable=False, default=0),
    sa.Column("movement_count", sa.BigInteger, nullable=False, default=0),
    sa.Column("create_time", UtcDateTime(), nullable=False),
    sa.Column("update_time", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("transaction_id", "currency", name="transaction_refs_id_currency_key"),
    sa.CheckConstraint("amount > 0", name="transaction_refs_amount_positive"),
    sa.CheckConstraint(
        "held_amount >= 0 AND captured_amount >= 0 AND refunded_amount >= 0",
        name="transaction_refs_amounts_non_negative",
    ),
    sa.CheckConstraint(
        "held_amount + captured_amount <= amount", name="transaction_refs_within_amount"
    ),
    sa.CheckConstraint(
        "refunded_amount <= captured_amount", name="transaction_refs_refunded_le_captured"
    ),
    sa.CheckConstraint("movement_count >= 0", name="transaction_refs_movement_count"),
)

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("merchant_id", sa.String(64), nullable=False),
    sa.Column("transaction_id", sa.String(64), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("capture_mode", sa.String(16), nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("failure_reason", sa.String(32), nullable=True),
    sa.Column("captured_amount", sa.BigInteger, nullable=False, default=0),
    sa.Column("refunded_amount", sa.BigInteger, nullable=False, default=0),
    sa.Column("card_brand", sa.String(16), nullable=True),
    sa.Column("card_last4", sa.String(4), nullable=True),
    sa.Column("card_fingerprint", sa.String(64), nullable=True),
    sa.Column("card_exp_month", sa.SmallInteger, nullable=True),
    sa.Column("card_exp_year", sa.SmallInteger, nullable=True),
    sa.Column("bank_account_holder_name", sa.String(200), nullable=True),
    sa.Column("bank_account_last4", sa.String(4), nullable=True),
    sa.Column("wallet_type", sa.String(16), nullable=True),
    sa.Column("processor_reference", sa.String(128), nullable=True),
    sa.Column("create_time", UtcDateTime(), nullable=False),
    sa.Column("update_time", UtcDateTime(), nullable=False),
    sa.Column("capturing_amount", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("refunding_amount", sa.BigInteger, nullable=False, server_default="0"),
    sa.ForeignKeyConstraint(
        ["transaction_id", "currency"],
        ["transaction_refs.transaction_id", "transaction_refs.currency"],
        name="payments_transaction_currency_fkey",
    ),
    sa.CheckConstraint("amount > 0", name="payments_amount_positive"),
    sa.CheckConstraint(
        "refunded_amount >= 0 AND refunded_amount <= captured_amount AND captured_amount <= amount",
        name="payments_amounts_ordered",
    ),
    sa.CheckConstraint(_in("status", PAYMENT_STATUSES), name="payments_status_known"),
    sa.CheckConstraint(_in("method", METHODS), name="payments_method_known"),
    sa.CheckConstraint(_in("capture_mode", CAPTURE_MODES), name="payments_capture_mode_known"),
    sa.CheckConstraint(
        "(status = 'FAILED' AND failure_reason IS NOT NULL AND "
        + _in("failure_reason", FAILURE_REASONS)
        + ") OR (status <> 'FAILED' AND failure_reason IS NULL)",
        name="payments_failure_reason_iff_failed",
    ),
    sa.CheckConstraint(
        "(status = 'SUCCEEDED' AND captured_amount > 0) "
        "OR (status <> 'SUCCEEDED' AND captured_amount = 0)",
        name="payments_captured_iff_succeeded",
    ),
    sa.Index(
        "payments_merchant_create_time_idx",
        "merchant_id",
        sa.text("create_time DESC"),
        sa.text("id DESC"),
    ),
    sa.CheckConstraint(
        "(status = 'CAPTURING' AND capturing_amount > 0 AND capturing_amount <= amount) "
        "OR (status <> 'CAPTURING' AND capturing_amount = 0)",
        name="payments_capturing_iff_capturing",
    ),
    sa.CheckConstraint(
        "refunding_amount >= 0 AND refunded_amount + refunding_amount <= captured_amount",
        name="payments_refunding_within_captured",
    ),
    sa.Index("payments_transaction_idx", "transaction_id"),
    # The reconciler's scan of what waits for the processor (migration 0003).
    sa.Index(
        "payments_waiting_idx",
        "update_time",
        postgresql_where=sa.text("status IN ('PROCESSING', 'CAPTURING', 'CANCELLING')"),
    ),
)

refunds = sa.Table(
    "refunds",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("payment_id", sa.String(64), sa.ForeignKey("payments.id"), nullable=False),
    sa.Column("merchant_id", sa.String(64), nullable=False),
    sa.Column("transaction_id", sa.String(64), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False, default=""),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("create_time", UtcDateTime(), nullable=False),
    sa.Column("failure_reason", sa.String(32), nullable=True),
    sa.Column("processor_reference", sa.String(128), nullable=True),
    sa.CheckConstraint("amount > 0", name="refunds_amount_positive"),
    sa.CheckConstraint(_in("status", REFUND_STATUSES), name="refunds_status_known"),
    sa.CheckConstraint(
        "(status = 'FAILED' AND failure_reason IS NOT NULL AND "
        + _in("failure_reason", FAILURE_REASONS)
        + ") OR (status <> 'FAILED' AND failure_reason IS NULL)",
        name="refunds_failure_reason_iff_failed",
    ),
    sa.ForeignKeyConstraint(
        ["transaction_id", "currency"],
        ["transaction_refs.transaction_id", "transaction_refs.currency"],
        name="refunds_transaction_currency_fkey",
    ),
    sa.Index("refunds_payment_idx", "payment_id"),
    sa.Index("refunds_pending_idx", "create_time", postgresql_where=sa.text("status = 'PENDING'")),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("transaction_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("create_time", UtcDateTime(), nullable=False),
    sa.Column("delivered_time", UtcDateTime(), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_time", UtcDateTime(), nullable=False),
    sa.Column("last_error", sa.String(500), nullable=True),
    # The traced request that wrote the row, so its delivery joins the trace (0003).
    sa.Column("traceparent", sa.String(55), nullable=True),
    sa.UniqueConstraint("transaction_id", "seq", name="outbox_transaction_seq_key"),
    sa.Index(
        "outbox_undelivered_idx",
        "next_attempt_time",
        postgresql_where=sa.text("delivered_time IS NULL"),
    ),
    # For the dispatcher's check for an earlier undelivered row (migration 0002).
    sa.Index(
        "outbox_undelivered_seq_idx",
        "transaction_id",
        "seq",
        postgresql_where=sa.text("delivered_time IS NULL"),
    ),
)

# Movements the transaction service kept refusing, moved out of the outbox with every
# later undelivered movement of their transaction (migration 0003), until retried.
dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("transaction_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("create_time", UtcDateTime(), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.Column("dead_time", UtcDateTime(), nullable=False),
    sa.Index("dead_letters_transaction_idx", "transaction_id", "seq"),
)

idempotency_keys = idempotency_table(metadata)


def written(table: sa.Table) -> sa.Table:
    """`table` as INSERTs and UPDATEs that run as `Statement`s write it: the same name,
    column types and primary key (which the group commit's set-based statements go by)
    without the client-side defaults `Statement` refuses. The repositories pass every
    value themselves, so the defaults would never apply anyway."""
    return sa.Table(
        table.name,
        sa.MetaData(),
        *(
            sa.Column(column.name, column.type, primary_key=column.primary_key)
            for column in table.c
        ),
    )
