"""Initial auth schema: merchants, API keys, failed logins, tokens, signing keys.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "merchants",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("merchants.id"), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(), nullable=False),
        sa.Column("secret_hash_version", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoke_time", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_api_keys_merchant_id_create_time_id",
        "api_keys",
        ["merchant_id", "create_time", "id"],
    )
    op.create_table(
        "login_failures",
        sa.Column("api_key_id", sa.String(40), primary_key=True),
        sa.Column("recent_failures", sa.JSON(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_login_failures_update_time", "login_failures", ["update_time"])
    op.create_table(
        "issued_tokens",
        sa.Column("jti", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("api_key_id", sa.String(40), nullable=False),
        sa.Column("issue_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_issued_tokens_api_key_id_expire_time", "issued_tokens", ["api_key_id", "expire_time"]
    )
    op.create_index("ix_issued_tokens_expire_time", "issued_tokens", ["expire_time"])
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoke_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_revoked_tokens_revoke_time", "revoked_tokens", ["revoke_time"])
    op.create_index("ix_revoked_tokens_expire_time", "revoked_tokens", ["expire_time"])
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("public_key_pem", sa.Text(), nullable=False),
        sa.Column("private_key_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("master_key_version", sa.Integer(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rotate_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("verify_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "uq_signing_keys_current",
        "signing_keys",
        ["status"],
        unique=True,
        postgresql_where=sa.text("status = 'current'"),
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


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("signing_keys")
    op.drop_table("revoked_tokens")
    op.drop_table("issued_tokens")
    op.drop_table("login_failures")
    op.drop_table("api_keys")
    op.drop_table("merchants")
