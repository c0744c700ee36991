"""Outbox: the W3C traceparent of the request that wrote a movement, when it was traced.

The dispatcher delivers the movement on behalf of that request, so the delivery joins
its trace. NULL for untraced requests (most of them).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("traceparent", sa.String(55), nullable=True))


def downgrade() -> None:
    op.drop_column("outbox", "traceparent")
