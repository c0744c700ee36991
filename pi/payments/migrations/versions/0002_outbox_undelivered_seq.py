"""Outbox: an index of undelivered movements by transaction and position.

The dispatcher holds back a movement while an earlier undelivered one of its transaction
waits for a retry (`_DUE_MOVEMENTS` in `pi.payments.adapters.postgres.outbox`): this index
answers that check from the few undelivered rows of the transaction, not from all its
delivered ones.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "outbox_undelivered_seq_idx",
        "outbox",
        ["transaction_id", "seq"],
        postgresql_where=sa.text("delivered_time IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("outbox_undelivered_seq_idx", table_name="outbox")
