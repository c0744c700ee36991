"""Initial transactions schema: transactions, applied movements, idempotency keys.

The money rules are constraints, so they hold whatever the code does:
amount > 0; 0 <= refunded <= captured <= authorized <= amount; the status is a known one
and is the one the amounts give (derive_status); a cancelled transaction has nothing
captured. A trigger also keeps the status on the state machine's edges
(pi.transactions.domain.ALLOWED_TRANSITIONS), keeps captured and refunded amounts from
going down and a cancellation from being undone, and keeps the immutable columns
immutable.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = (
    "PENDING",
    "AUTHORIZED",
    "COMPLETED",
    "PARTIALLY_REFUNDED",
    "REFUNDED",
    "CANCELLED",
    "FAILED",
)
MOVEMENT_KINDS = ("AUTHORIZATION", "CAPTURE", "VOID", "REFUND", "FAILURE", "CANCELLATION")

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

# The status changes one movement may cause (staying in a status is always allowed).
GUARD_FUNCTION = """
CREATE FUNCTION transactions_guard_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id
       OR NEW.merchant_id IS DISTINCT FROM OLD.merchant_id
       OR NEW.amount IS DISTINCT FROM OLD.amount
       OR NEW.currency IS DISTINCT FROM OLD.currency
       OR NEW.create_time IS DISTINCT FROM OLD.create_time THEN
        RAISE EXCEPTION 'transaction %: id, merchant, amount, currency and create_time '
                        'cannot change', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'transactions_immutable';
    END IF;
    IF NEW.captured_amount < OLD.captured_amount
       OR NEW.refunded_amount < OLD.refunded_amount
       OR (OLD.cancelled AND NOT NEW.cancelled) THEN
        RAISE EXCEPTION 'transaction %: captured and refunded amounts never decrease and '
                        'a cancellation is final', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'transactions_monotonic';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND (OLD.status, NEW.status) NOT IN (
        ('PENDING', 'AUTHORIZED'),
        ('PENDING', 'FAILED'),
        ('PENDING', 'CANCELLED'),
        ('FAILED', 'AUTHORIZED'),
        ('FAILED', 'CANCELLED'),
        ('AUTHORIZED', 'COMPLETED'),
        ('AUTHORIZED', 'PENDING'),
        ('AUTHORIZED', 'FAILED'),
        ('AUTHORIZED', 'CANCELLED'),
        ('COMPLETED', 'PARTIALLY_REFUNDED'),
        ('COMPLETED', 'REFUNDED'),
        ('PARTIALLY_REFUNDED', 'REFUNDED'),
        ('REFUNDED', 'PARTIALLY_REFUNDED')
    ) THEN
        RAISE EXCEPTION 'transaction % cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'transactions_status_transition';
    END IF;
    RETURN NEW;
END
$$
"""


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "transactions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(
            "metadata", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("authorized_amount", sa.BigInteger(), nullable=False),
        sa.Column("captured_amount", sa.BigInteger(), nullable=False),
        sa.Column("refunded_amount", sa.BigInteger(), nullable=False),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.Column("last_payment_failed", sa.Boolean(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name="ck_transactions_amount_positive"),
        sa.CheckConstraint(
            "0 <= refunded_amount AND refunded_amount <= captured_amount"
            " AND captured_amount <= authorized_amount AND authorized_amount <= amount",
            name="ck_transactions_amounts_ordered",
        ),
        sa.CheckConstraint(_in("status", STATUSES), name="ck_transactions_status_known"),
        sa.CheckConstraint(STATUS_DERIVED_SQL, name="ck_transactions_status_derived"),
        sa.CheckConstraint(
            "NOT cancelled OR captured_amount = 0",
            name="ck_transactions_cancelled_uncaptured",
        ),
    )
    op.create_index(
        "ix_transactions_merchant_create_time_id",
        "transactions",
        ["merchant_id", sa.text("create_time DESC"), sa.text("id DESC")],
    )
    op.create_table(
        "applied_movements",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column(
            "transaction_id",
            sa.String(40),
            sa.ForeignKey("transactions.id", name="fk_applied_movements_transaction_id"),
            nullable=False,
        ),
        sa.Column("payment_id", sa.String(40), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("authorized_delta", sa.BigInteger(), nullable=False),
        sa.Column("captured_delta", sa.BigInteger(), nullable=False),
        sa.Column("refunded_delta", sa.BigInteger(), nullable=False),
        sa.Column("occur_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("apply_time", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(_in("kind", MOVEMENT_KINDS), name="ck_applied_movements_kind_known"),
        sa.CheckConstraint(
            "captured_delta >= 0 AND refunded_delta >= 0", name="ck_applied_movements_deltas"
        ),
    )
    op.create_index(
        "ix_applied_movements_transaction_id_apply_time",
        "applied_movements",
        ["transaction_id", "apply_time"],
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(64), primary_key=True),
        sa.Column("operation", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_idempotency_keys_create_time", "idempotency_keys", ["create_time"])

    op.execute(GUARD_FUNCTION)
    op.execute(
        "CREATE TRIGGER transactions_guard_update BEFORE UPDATE ON transactions"
        " FOR EACH ROW EXECUTE FUNCTION transactions_guard_update()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS transactions_guard_update ON transactions")
    op.execute("DROP FUNCTION IF EXISTS transactions_guard_update()")
    op.drop_index("ix_idempotency_keys_create_time", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_applied_movements_transaction_id_apply_time", table_name="applied_movements")
    op.drop_table("applied_movements")
    op.drop_index("ix_transactions_merchant_create_time_id", table_name="transactions")
    op.drop_table("transactions")
