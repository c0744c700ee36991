"""Rows ↔ auth records: what a statement returns as a domain value, and the parameters
a record is written with."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pi.auth.domain.merchants import ApiKey, Credentials, Merchant, SecretHash
from pi.auth.domain.signing_keys import NewSigningKey, StoredKey
from pi.auth.domain.throttle import LoginFailures
from pi.auth.domain.tokens import RevokedToken, TokenGrant
from pi.platform.db.statements import Record
from pi.platform.kernel import scopes


def merchant_values(merchant: Merchant) -> dict[str, Any]:
    return {
        "id": merchant.id,
        "display_name": merchant.display_name,
        "create_time": merchant.create_time,
    }


def api_key(row: Record) -> ApiKey:
    return ApiKey(
        id=row.id,
        merchant_id=row.merchant_id,
        display_name=row.display_name,
        create_time=row.create_time,
        revoke_time=row.revoke_time,
        scopes=frozenset(row.scopes),
    )


def credentials(row: Record) -> Credentials:
    return Credentials(
        api_key(row), SecretHash(bytes(row.secret_hash), int(row.secret_hash_version))
    )


def api_key_values(key: ApiKey, secret_hash: SecretHash) -> dict[str, Any]:
    return {
        "id": key.id,
        "merchant_id": key.merchant_id,
        "display_name": key.display_name,
        "secret_hash": secret_hash.digest,
        "secret_hash_version": secret_hash.version,
        "create_time": key.create_time,
        "revoke_time": key.revoke_time,
        "scopes": scopes.ordered(key.scopes),
    }


def login_failures(row: Record | None) -> LoginFailures:
    if row is None:
        return LoginFailures()
    return LoginFailures(
        recent=tuple(_from_ms(ms) for ms in row.recent_failures),
        locked_until=row.locked_until,
    )


def recent_failures(failures: LoginFailures) -> list[int]:
    """How `recent` is stored: epoch milliseconds, oldest first."""
    return [_to_ms(t) for t in failures.recent]


def grant(row: Record) -> TokenGrant:
    return TokenGrant(
        token_id=row.jti,
        merchant_id=row.merchant_id,
        api_key_id=row.api_key_id,
        issue_time=row.issue_time,
        expire_time=row.expire_time,
    )


def revoked_token(row: Record) -> RevokedToken:
    return RevokedToken(row.jti, row.expire_time, row.revoke_time)


def stored_key(row: Record) -> StoredKey:
    return StoredKey(
        kid=row.kid,
        status=row.status,
        public_jwk=dict(row.public_jwk),
        private_key_ciphertext=(
            None if row.private_key_ciphertext is None else bytes(row.private_key_ciphertext)
        ),
        create_time=row.create_time,
        verify_until=row.verify_until,
    )


def signing_key_values(key: NewSigningKey, *, status: str, now: datetime) -> dict[str, Any]:
    return {
        "kid": key.kid,
        "status": status,
        "public_jwk": key.public_jwk,
        "public_key_pem": key.public_key_pem,
        "private_key_ciphertext": key.private_key_ciphertext,
        "master_key_version": key.master_key_version,
        "create_time": now,
        "rotate_time": None,
        "verify_until": None,
    }


def _to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=UTC)
