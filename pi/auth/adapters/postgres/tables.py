"""The auth tables (SQLAlchemy Core), as the migrations create them.

Tables carry no schema: they live in the service's schema (`auth` by default), which the
connections' `search_path` (and, for migrations, the engine's `schema_translate_map`)
point at. Nothing sensitive is stored in clear:
API secrets only as a keyed hash, signing keys' private halves only as AES-256-GCM
ciphertext, tokens only by their `jti`.
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    JSON,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from pi.platform.db.engine import UtcDateTime
from pi.platform.db.idempotency import idempotency_table

_ID = 40  # "key_" + 26 chars, with room for longer prefixes


metadata = MetaData()

merchants = Table(
    "merchants",
    metadata,
    Column("id", String(_ID), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("create_time", UtcDateTime(), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(_ID), primary_key=True),
    Column("merchant_id", String(_ID), ForeignKey("merchants.id"), nullable=False),
    Column("display_name", String(200), nullable=False),
    # HMAC-SHA256 of the secret under a key derived from master key `secret_hash_version`
    # (pinned per row, so adding a master key does not invalidate existing secrets).
    Column("secret_hash", LargeBinary(), nullable=False),
    Column("secret_hash_version", Integer(), nullable=False),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("revoke_time", UtcDateTime(), nullable=True),
    # What its tokens may do (pi.platform.kernel.scopes); keys older than scopes hold all.
    Column("scopes", ARRAY(String(32)), nullable=False),
    # Listing is per merchant, newest first.
    Index("ix_api_keys_merchant_id_create_time_id", "merchant_id", "create_time", "id"),
)

# One row per key-id *string* that had a failed secret, whether or not the key exists, so
# that the answer (and the lockout) cannot tell existing ids from made-up ones.
login_failures = Table(
    "login_failures",
    metadata,
    Column("api_key_id", String(_ID), primary_key=True),
    # Epoch milliseconds of the latest failures, oldest first (at most the threshold).
    Column("recent_failures", JSON(), nullable=False),
    Column("locked_until", UtcDateTime(), nullable=True),
    Column("update_time", UtcDateTime(), nullable=False),
    Index("ix_login_failures_update_time", "update_time"),
)

# Every token issued, by jti only (never the token itself): RevokeToken checks ownership
# here and RevokeApiKey finds the key's live tokens here.
issued_tokens = Table(
    "issued_tokens",
    metadata,
    Column("jti", String(_ID), primary_key=True),
    Column("merchant_id", String(_ID), nullable=False),
    Column("api_key_id", String(_ID), nullable=False),
    Column("issue_time", UtcDateTime(), nullable=False),
    Column("expire_time", UtcDateTime(), nullable=False),
    Index("ix_issued_tokens_api_key_id_expire_time", "api_key_id", "expire_time"),
    Index("ix_issued_tokens_expire_time", "expire_time"),
)

revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    Column("jti", String(_ID), primary_key=True),
    Column("merchant_id", String(_ID), nullable=False),
    Column("expire_time", UtcDateTime(), nullable=False),
    Column("revoke_time", UtcDateTime(), nullable=False),
    Index("ix_revoked_tokens_revoke_time", "revoke_time"),
    Index("ix_revoked_tokens_expire_time", "expire_time"),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("public_jwk", JSON(), nullable=False),
    Column("public_key_pem", Text(), nullable=False),
    # AES-256-GCM ciphertext of the PKCS#8 private key; NULL once the key is retired.
    Column("private_key_ciphertext", LargeBinary(), nullable=True),
    Column("master_key_version", Integer(), nullable=True),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("rotate_time", UtcDateTime(), nullable=True),
    Column("verify_until", UtcDateTime(), nullable=True),
    # At most one current key, enforced by the database so racing starts cannot make two.
    Index(
        "uq_signing_keys_current",
        "status",
        unique=True,
        postgresql_where=text("status = 'current'"),
    ),
)

idempotency_keys = idempotency_table(metadata)
