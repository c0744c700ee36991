"""Processor intents and dead letters.

Capture, cancel and refund are recorded before the processor is called (CAPTURING,
CANCELLING, a PENDING refund) and settled after, so payments gain the amount a capture
asks for and the amount pending refunds hold, refunds a PENDING and a FAILED status (with
the processor's reason), and the reconciler indexes over everything waiting for the
processor. Movements the transaction service keeps refusing move to `dead_letters`.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_STATUSES = (
    "'PROCESSING', 'REQUIRES_CAPTURE', 'SUCCEEDED', 'FAILED', 'CANCELLED', "
    "'CAPTURING', 'CANCELLING'"
)
_FAILURE_REASONS = (
    "'CARD_DECLINED', 'INSUFFICIENT_FUNDS', 'PROCESSOR_UNAVAILABLE', 'PROCESSOR_DECLINED'"
)

# The payment state machine as a database rule. Mirrors pi.payments.domain.ALLOWED_TRANSITIONS,
# and also keeps the identity and money columns of a payment from being rewritten:
#   PROCESSING       -> REQUIRES_CAPTURE | SUCCEEDED | FAILED
#   REQUIRES_CAPTURE -> CAPTURING | CANCELLING
#   CAPTURING        -> SUCCEEDED | REQUIRES_CAPTURE (declined)
#   CANCELLING       -> CANCELLED | REQUIRES_CAPTURE (declined)
#   SUCCEEDED        -> SUCCEEDED (refunds: refunded_amount grows, captured_amount fixed)
#   FAILED, CANCELLED: final
_GUARD_FUNCTION = """
CREATE OR REPLACE FUNCTION payments_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status NOT IN ('PROCESSING', 'REQUIRES_CAPTURE', 'SUCCEEDED', 'FAILED')
           OR NEW.refunded_amount <> 0 OR NEW.refunding_amount <> 0 THEN
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
       OR (OLD.status = 'REQUIRES_CAPTURE' AND NEW.status IN ('CAPTURING', 'CANCELLING'))
       OR (OLD.status = 'CAPTURING' AND NEW.status IN ('SUCCEEDED', 'REQUIRES_CAPTURE'))
       OR (OLD.status = 'CANCELLING' AND NEW.status IN ('CANCELLED', 'REQUIRES_CAPTURE')) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'payment %: status % -> % is not allowed', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END
$$
"""

_OLD_GUARD_EDGES = (
    "OR (OLD.status = 'REQUIRES_CAPTURE' AND NEW.status IN ('SUCCEEDED', 'CANCELLED'))"
)


def upgrade() -> None:
    op.add_column(
        "payments",
        sa.Column("capturing_amount", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.add_column(
        "payments",
        sa.Column("refunding_amount", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.drop_constraint("payments_status_known", "payments", type_="check")
    op.create_check_constraint("payments_status_known", "payments", f"status IN ({_STATUSES})")
    op.create_check_constraint(
        "payments_capturing_iff_capturing",
        "payments",
        "(status = 'CAPTURING' AND capturing_amount > 0 AND capturing_amount <= amount) "
        "OR (status <> 'CAPTURING' AND capturing_amount = 0)",
    )
    op.create_check_constraint(
        "payments_refunding_within_captured",
        "payments",
        "refunding_amount >= 0 AND refunded_amount + refunding_amount <= captured_amount",
    )
    op.execute(_GUARD_FUNCTION)
    op.drop_index("payments_processing_idx", table_name="payments")
    op.create_index(
        "payments_waiting_idx",
        "payments",
        ["update_time"],
        postgresql_where=sa.text("status IN ('PROCESSING', 'CAPTURING', 'CANCELLING')"),
    )

    op.add_column("refunds", sa.Column("failure_reason", sa.String(32), nullable=True))
    op.add_column("refunds", sa.Column("processor_reference", sa.String(128), nullable=True))
    op.drop_constraint("refunds_status_known", "refunds", type_="check")
    op.create_check_constraint(
        "refunds_status_known", "refunds", "status IN ('SUCCEEDED', 'PENDING', 'FAILED')"
    )
    op.create_check_constraint(
        "refunds_failure_reason_iff_failed",
        "refunds",
        "(status = 'FAILED' AND failure_reason IS NOT NULL AND "
        f"failure_reason IN ({_FAILURE_REASONS})) "
        "OR (status <> 'FAILED' AND failure_reason IS NULL)",
    )
    op.create_index(
        "refunds_pending_idx",
        "refunds",
        ["create_time"],
        postgresql_where=sa.text("status = 'PENDING'"),
    )

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("transaction_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("dead_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("dead_letters_transaction_idx", "dead_letters", ["transaction_id", "seq"])


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_index("refunds_pending_idx", table_name="refunds")
    op.drop_constraint("refunds_failure_reason_iff_failed", "refunds", type_="check")
    op.drop_constraint("refunds_status_known", "refunds", type_="check")
    op.create_check_constraint("refunds_status_known", "refunds", "status IN ('SUCCEEDED')")
    op.drop_column("refunds", "processor_reference")
    op.drop_column("refunds", "failure_reason")
    op.drop_index("payments_waiting_idx", table_name="payments")
    op.create_index(
        "payments_processing_idx",
        "payments",
        ["update_time"],
        postgresql_where=sa.text("status = 'PROCESSING'"),
    )
    op.execute(
        _GUARD_FUNCTION.replace(
            "OR (OLD.status = 'REQUIRES_CAPTURE' AND NEW.status IN ('CAPTURING', 'CANCELLING'))",
            _OLD_GUARD_EDGES,
        ).replace(" OR NEW.refunding_amount <> 0", "")
    )
    op.drop_constraint("payments_refunding_within_captured", "payments", type_="check")
    op.drop_constraint("payments_capturing_iff_capturing", "payments", type_="check")
    op.drop_constraint("payments_status_known", "payments", type_="check")
    op.create_check_constraint(
        "payments_status_known",
        "payments",
        "status IN ('PROCESSING', 'REQUIRES_CAPTURE', 'SUCCEEDED', 'FAILED', 'CANCELLED')",
    )
    op.drop_column("payments", "refunding_amount")
    op.drop_column("payments", "capturing_amount")
