"""API keys carry scopes; every key that existed before holds all of them.

Keys created before scopes could do everything, so they keep doing everything (the demo
merchant's and every integration keep working); new keys always name their scopes, so
the column has no default once existing rows are filled.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The scopes of pi.platform.kernel.scopes as of this revision, written out: a migration
# must not change when the code's list grows.
_ALL_SCOPES = (
    "transactions:read",
    "transactions:write",
    "payments:read",
    "payments:write",
    "refunds:write",
    "api_keys:read",
    "api_keys:write",
)


def upgrade() -> None:
    every = "ARRAY[" + ", ".join(f"'{scope}'" for scope in _ALL_SCOPES) + "]::varchar(32)[]"
    op.add_column(
        "api_keys",
        sa.Column(
            "scopes",
            postgresql.ARRAY(sa.String(32)),
            nullable=False,
            server_default=sa.text(every),
        ),
    )
    op.alter_column("api_keys", "scopes", server_default=None)


def downgrade() -> None:
    op.drop_column("api_keys", "scopes")
