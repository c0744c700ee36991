"""Payment service tables: transaction refs, payments, refunds, outbox, idempotency keys.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_STATUSES = "'PROCESSING', 'REQUIRES_CAPTURE', 'SUCCEEDED', 'FAILED', 'CANCELLED'"
_FAILURE_REASONS = (
    "'CARD_DECLINED', 'INSUFFICIENT_FUNDS', 'PROCESSOR_UNAVAILABLE', 'PROCESSOR_DECLINED'"
)

# The payment state machine as a database rule. Mirrors pi.payments.domain.ALLOWED_TRANSITIONS,
# and also keeps the identity and money columns of a payment from being rewritten:
#   PROCESSING       -> REQUIRES_CAPTURE | SUCCEEDED | FAILED
#   REQUIRES_CAPTURE -> SUCCEEDED | CANCELLED
#   SUCCEEDED        -> SUCCEEDED (refunds: refunded_amount grows, captured_amount fixed)
#   FAILED, CANCELLED: final
_GUARD_FUNCTION = """
CREATE FUNCTION payments_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status NOT IN ('PROCESSING', 'REQUIRES_CAPTURE', 'SUCCEEDED', 'FAILED')
           OR NEW.refunded_amount <> 0 THEN
            RAISE EXCEPTION 'payment %: cannot be created as % with refunds',
                NEW.id, NEW.status USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.id <> OLD.id OR NEW.merchant_id <> OLD.merchant_id
       OR NEW.transaction_id <> OLD.transaction_id OR NEW.amount <> OLD.amount
       OR NEW.currency <> OLD.currency OR NEW.method <> OLD.method
       OR NEW.capture_mode <> OLD.capture_mode OR NEW.create_time <> OLD.create_time THEN
        RAISE EXCEPTION 'payment %: identity and amount columns are immutable', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.refunded_amount < OLD.refunded_amount THEN
        RAISE EXCEPTION 'payment %: refunded_amount cannot decrease', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status = 'SUCCEEDED' AND NEW.captured_amount <> OLD.captured_amount THEN
        RAISE EXCEPTION 'payment %: captured_amount of a captured payment is final', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = OLD.status AND OLD.status IN ('PROCESSING', 'SUCCEEDED') THEN
        RETURN NEW;
    END IF;
    IF (OLD.status = 'PROCESSING'
            AND NEW.status IN ('REQUIRES_CAPTURE', 'SUCCEEDED', 'FAILED'))
       OR (OLD.status = 'REQUIRES_CAPTURE' AND NEW.status IN ('SUCCEEDED', 'CANCELLED')) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'payment %: status % -> % is not allowed', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END
$$
"""

_GUARD_TRIGGER = """
CREATE TRIGGER payments_guard BEFORE INSERT OR UPDATE ON payments
FOR EACH ROW EXECUTE FUNCTION payments_guard()
"""


def upgrade() -> None:
    op.create_table(
        "transaction_refs",
        sa.Column("transaction_id", sa.String(64), primary_key=True),
        sa.Column("merchant_id", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("closed", sa.Boolean, nullable=False),
        sa.Column("held_amount", sa.BigInteger, nullable=False),
        sa.Column("captured_amount", sa.BigInteger, nullable=False),
        sa.Column("refunded_amount", sa.BigInteger, nullable=False),
        sa.Column("movement_count", sa.BigInteger, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
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
            "refunded_amount <= captured_amount",
            name="transaction_refs_refunded_le_captured",
        ),
        sa.CheckConstraint("movement_count >= 0", name="transaction_refs_movement_count"),
    )

    op.create_table(
        "payments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("merchant_id", sa.String(64), nullable=False),
        sa.Column("transaction_id", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("capture_mode", sa.String(16), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("failure_reason", sa.String(32), nullable=True),
        sa.Column("captured_amount", sa.BigInteger, nullable=False),
        sa.Column("refunded_amount", sa.BigInteger, nullable=False),
        sa.Column("card_brand", sa.String(16), nullable=True),
        sa.Column("card_last4", sa.String(4), nullable=True),
        sa.Column("card_fingerprint", sa.String(64), nullable=True),
        sa.Column("card_exp_month", sa.SmallInteger, nullable=True),
        sa.Column("card_exp_year", sa.SmallInteger, nullable=True),
        sa.Column("bank_account_holder_name", sa.String(200), nullable=True),
        sa.Column("bank_account_last4", sa.String(4), nullable=True),
        sa.Column("wallet_type", sa.String(16), nullable=True),
        sa.Column("processor_reference", sa.String(128), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["transaction_id", "currency"],
            ["transaction_refs.transaction_id", "transaction_refs.currency"],
            name="payments_transaction_currency_fkey",
        ),
        sa.CheckConstraint("amount > 0", name="payments_amount_positive"),
        sa.CheckConstraint(
            "refunded_amount >= 0 AND refunded_amount <= captured_amount "
            "AND captured_amount <= amount",
            name="payments_amounts_ordered",
        ),
        sa.CheckConstraint(f"status IN ({_STATUSES})", name="payments_status_known"),
        sa.CheckConstraint(
            "method IN ('CARD', 'BANK_TRANSFER', 'WALLET')", name="payments_method_known"
        ),
        sa.CheckConstraint(
            "capture_mode IN ('AUTOMATIC', 'MANUAL')", name="payments_capture_mode_known"
        ),
        sa.CheckConstraint(
            "(status = 'FAILED' AND failure_reason IS NOT NULL AND "
            f"failure_reason IN ({_FAILURE_REASONS})) "
            "OR (status <> 'FAILED' AND failure_reason IS NULL)",
            name="payments_failure_reason_iff_failed",
        ),
        sa.CheckConstraint(
            "(status = 'SUCCEEDED' AND captured_amount > 0) "
            "OR (status <> 'SUCCEEDED' AND captured_amount = 0)",
            name="payments_captured_iff_succeeded",
        ),
    )
    op.create_index(
        "payments_merchant_create_time_idx",
        "payments",
        ["merchant_id", sa.text("create_time DESC"), sa.text("id DESC")],
    )
    op.create_index("payments_transaction_idx", "payments", ["transaction_id"])
    op.create_index(
        "payments_processing_idx",
        "payments",
        ["update_time"],
        postgresql_where=sa.text("status = 'PROCESSING'"),
    )

    op.create_table(
        "refunds",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "payment_id",
            sa.String(64),
            sa.ForeignKey("payments.id", name="refunds_payment_id_fkey"),
            nullable=False,
        ),
        sa.Column("merchant_id", sa.String(64), nullable=False),
        sa.Column("transaction_id", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name="refunds_amount_positive"),
        sa.CheckConstraint("status IN ('SUCCEEDED')", name="refunds_status_known"),
        sa.ForeignKeyConstraint(
            ["transaction_id", "currency"],
            ["transaction_refs.transaction_id", "transaction_refs.currency"],
            name="refunds_transaction_currency_fkey",
        ),
    )
    op.create_index("refunds_payment_idx", "refunds", ["payment_id"])

    op.create_table(
        "outbox",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("transaction_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.UniqueConstraint("transaction_id", "seq", name="outbox_transaction_seq_key"),
    )
    op.create_index(
        "outbox_undelivered_idx",
        "outbox",
        ["next_attempt_time"],
        postgresql_where=sa.text("delivered_time IS NULL"),
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(64), primary_key=True),
        sa.Column("operation", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_idempotency_keys_create_time", "idempotency_keys", ["create_time"])

    op.execute(_GUARD_FUNCTION)
    op.execute(_GUARD_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS payments_guard ON payments")
    op.execute("DROP FUNCTION IF EXISTS payments_guard()")
    op.drop_table("idempotency_keys")
    op.drop_table("outbox")
    op.drop_table("refunds")
    op.drop_table("payments")
    op.drop_table("transaction_refs")
