"""Auth storage: SQLAlchemy Core tables and the queries the use cases need.

Tables carry no schema: the connections' `search_path` finds them in the service's
schema (`auth` by default), and migrations map them there. Nothing sensitive is stored
in clear: API secrets only as a keyed hash, signing keys' private halves only as
AES-256-GCM ciphertext, tokens only by their `jti`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
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
    bindparam,
    delete,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql

from pi.auth.domain import (
    ApiKey,
    LoginFailures,
    Merchant,
    RevokedToken,
    SigningKeyStatus,
    TokenGrant,
)
from pi.auth.signing_keys import NewSigningKey, StoredKey
from pi.platform.db.database import Database
from pi.platform.db.engine import UtcDateTime
from pi.platform.db.idempotency import idempotency_table
from pi.platform.db.statements import Conn, Statement, for_any_of

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


# Everything merchants may see of a key: never the hash.
_API_KEY_COLUMNS = (
    api_keys.c.id,
    api_keys.c.merchant_id,
    api_keys.c.display_name,
    api_keys.c.create_time,
    api_keys.c.revoke_time,
)


# Every query, built once as a prepared `Statement` (see pi.platform.db.statements).
_KEY_ID = api_keys.c.id == bindparam("p_key_id")
# FOR SHARE: see `get_api_key_with_hash`.
_GET_API_KEY_WITH_HASH = Statement(select(api_keys).where(_KEY_ID).with_for_update(read=True))
_MERCHANTS_API_KEY = select(*_API_KEY_COLUMNS).where(
    _KEY_ID, api_keys.c.merchant_id == bindparam("p_merchant_id")
)
# By whether to lock the row.
_GET_API_KEY = {
    False: Statement(_MERCHANTS_API_KEY),
    True: Statement(_MERCHANTS_API_KEY.with_for_update()),
}
_LOGIN_FAILURES = select(login_failures.c.recent_failures, login_failures.c.locked_until).where(
    login_failures.c.api_key_id == bindparam("p_key_id")
)
# By whether to lock the row.
_GET_LOGIN_FAILURES = {
    False: Statement(_LOGIN_FAILURES),
    True: Statement(_LOGIN_FAILURES.with_for_update()),
}
_GET_ISSUED_TOKEN = Statement(
    select(issued_tokens).where(
        issued_tokens.c.jti == bindparam("p_jti"),
        issued_tokens.c.merchant_id == bindparam("p_merchant_id"),
    )
)

_INSERT_MERCHANT = Statement(insert(merchants))
_INSERT_API_KEY = Statement(insert(api_keys))
_LIST_API_KEYS_QUERY = (
    select(*_API_KEY_COLUMNS)
    .where(api_keys.c.merchant_id == bindparam("p_merchant_id"))
    .order_by(api_keys.c.create_time.desc(), api_keys.c.id.desc())
    .limit(bindparam("p_limit", type_=Integer()))
)
# By whether the page starts after a (create_time, id).
_LIST_API_KEYS = {
    False: Statement(_LIST_API_KEYS_QUERY),
    True: Statement(
        _LIST_API_KEYS_QUERY.where(
            tuple_(api_keys.c.create_time, api_keys.c.id)
            < tuple_(
                bindparam("p_after_time", type_=api_keys.c.create_time.type),
                bindparam("p_after_id", type_=api_keys.c.id.type),
            )
        )
    ),
}
_REHASH_API_KEY = Statement(
    update(api_keys)
    .where(_KEY_ID)
    .values(
        secret_hash=bindparam("p_secret_hash", type_=api_keys.c.secret_hash.type),
        secret_hash_version=bindparam("p_version", type_=api_keys.c.secret_hash_version.type),
    )
)
_REVOKE_API_KEY = Statement(
    update(api_keys)
    .where(_KEY_ID, api_keys.c.revoke_time.is_(None))
    .values(revoke_time=bindparam("p_now", type_=api_keys.c.revoke_time.type))
)
_ENSURE_LOGIN_FAILURES = Statement(
    postgresql.insert(login_failures).on_conflict_do_nothing(index_elements=["api_key_id"])
)
_SAVE_LOGIN_FAILURES = Statement(
    update(login_failures)
    .where(login_failures.c.api_key_id == bindparam("p_key_id"))
    .values(
        recent_failures=bindparam("p_recent", type_=login_failures.c.recent_failures.type),
        locked_until=bindparam("p_locked_until", type_=login_failures.c.locked_until.type),
        update_time=bindparam("p_now", type_=login_failures.c.update_time.type),
    )
)
_DELETE_LOGIN_FAILURES = Statement(
    delete(login_failures).where(
        login_failures.c.update_time < bindparam("p_cutoff", type_=UtcDateTime()),
        login_failures.c.locked_until.is_(None)
        | (login_failures.c.locked_until <= bindparam("p_now", type_=UtcDateTime())),
    )
)
_INSERT_ISSUED_TOKEN = Statement(insert(issued_tokens))
_INSERT_REVOKED_TOKEN = Statement(
    postgresql.insert(revoked_tokens).on_conflict_do_nothing(index_elements=["jti"])
)
_GET_REVOKED_TOKEN = Statement(
    select(revoked_tokens).where(revoked_tokens.c.jti == bindparam("p_jti"))
)
_LIVE_TOKENS_OF_KEY = Statement(
    select(issued_tokens.c.jti, issued_tokens.c.merchant_id, issued_tokens.c.expire_time)
    .where(
        issued_tokens.c.api_key_id == bindparam("p_key_id"),
        issued_tokens.c.expire_time > bindparam("p_now", type_=UtcDateTime()),
    )
    .order_by(issued_tokens.c.jti)
)
_REVOKED_AMONG = for_any_of(
    revoked_tokens.c.jti, lambda among: select(revoked_tokens.c.jti).where(among)
)
_REVOKED_QUERY = (
    select(revoked_tokens.c.jti, revoked_tokens.c.expire_time, revoked_tokens.c.revoke_time)
    .where(revoked_tokens.c.expire_time > bindparam("p_now", type_=UtcDateTime()))
    .order_by(revoked_tokens.c.revoke_time, revoked_tokens.c.jti)
)
# By whether only those revoked after a time are wanted.
_LIST_REVOKED_TOKENS = {
    False: Statement(_REVOKED_QUERY),
    True: Statement(
        _REVOKED_QUERY.where(
            revoked_tokens.c.revoke_time > bindparam("p_after", type_=UtcDateTime())
        )
    ),
}
_DELETE_EXPIRED_ISSUED = Statement(
    delete(issued_tokens).where(
        issued_tokens.c.expire_time <= bindparam("p_now", type_=UtcDateTime())
    )
)
_DELETE_EXPIRED_REVOKED = Statement(
    delete(revoked_tokens).where(
        revoked_tokens.c.expire_time <= bindparam("p_now", type_=UtcDateTime())
    )
)
_INSERT_SIGNING_KEY = Statement(insert(signing_keys))
_CURRENT_SIGNING_KID_QUERY = select(signing_keys.c.kid).where(
    signing_keys.c.status == SigningKeyStatus.CURRENT
)
# By whether to lock the row.
_CURRENT_SIGNING_KID = {
    False: Statement(_CURRENT_SIGNING_KID_QUERY),
    True: Statement(_CURRENT_SIGNING_KID_QUERY.with_for_update()),
}
_DEMOTE_SIGNING_KEY = Statement(
    update(signing_keys)
    .where(signing_keys.c.kid == bindparam("p_kid"))
    .values(
        status=SigningKeyStatus.PREVIOUS,
        rotate_time=bindparam("p_now", type_=signing_keys.c.rotate_time.type),
        verify_until=bindparam("p_verify_until", type_=signing_keys.c.verify_until.type),
    )
)
_RETIRABLE_SIGNING_KEYS = Statement(
    select(signing_keys.c.kid).where(
        signing_keys.c.status == SigningKeyStatus.PREVIOUS,
        signing_keys.c.verify_until <= bindparam("p_now", type_=UtcDateTime()),
    )
)
_RETIRE_SIGNING_KEYS = for_any_of(
    signing_keys.c.kid,
    lambda among: (
        update(signing_keys)
        .where(among)
        .values(
            status=SigningKeyStatus.RETIRED,
            private_key_ciphertext=None,
            master_key_version=None,
        )
    ),
)
_SIGNING_KEYS_BY_STATUS = for_any_of(
    signing_keys.c.status,
    lambda among: (
        select(signing_keys)
        .where(among)
        .order_by(
            (signing_keys.c.status == SigningKeyStatus.CURRENT).desc(),
            signing_keys.c.create_time.desc(),
        )
    ),
)


def _to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def _api_key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        merchant_id=row.merchant_id,
        display_name=row.display_name,
        create_time=row.create_time,
        revoke_time=row.revoke_time,
    )


class AuthStore:
    """Entry point: `async with store.transaction() as tx:` runs queries atomically."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AuthTransaction]:
        async with self.database.transaction() as conn:
            yield AuthTransaction(conn)


class AuthTransaction:
    """The auth queries, all on one connection inside one database transaction."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    # -- merchants and API keys ----------------------------------------------------------

    async def insert_merchant(self, merchant: Merchant) -> None:
        await _INSERT_MERCHANT.execute(
            self.conn,
            {
                "id": merchant.id,
                "display_name": merchant.display_name,
                "create_time": merchant.create_time,
            },
        )

    async def insert_api_key(self, key: ApiKey, secret_hash: bytes, hash_version: int) -> None:
        await _INSERT_API_KEY.execute(
            self.conn,
            {
                "id": key.id,
                "merchant_id": key.merchant_id,
                "display_name": key.display_name,
                "secret_hash": secret_hash,
                "secret_hash_version": hash_version,
                "create_time": key.create_time,
                "revoke_time": key.revoke_time,
            },
        )

    async def get_api_key_with_hash(self, key_id: str) -> tuple[ApiKey, bytes, int] | None:
        """The key, its secret hash and the master-key version that hash was made with.

        Locks the row FOR SHARE: a RevokeApiKey running at the same time (FOR UPDATE)
        either waits for this token to be recorded, and then revokes it too, or commits
        first, and then this read sees the key revoked.
        """
        row = await _GET_API_KEY_WITH_HASH.first(self.conn, {"p_key_id": key_id})
        if row is None:
            return None
        return _api_key(row), bytes(row.secret_hash), int(row.secret_hash_version)

    async def get_api_key(
        self, merchant_id: str, key_id: str, *, for_update: bool = False
    ) -> ApiKey | None:
        row = await _GET_API_KEY[for_update].first(
            self.conn, {"p_key_id": key_id, "p_merchant_id": merchant_id}
        )
        return None if row is None else _api_key(row)

    async def list_api_keys(
        self, merchant_id: str, *, after: tuple[datetime, str] | None, limit: int
    ) -> list[ApiKey]:
        """The merchant's keys, newest first; `after` is the (create_time, id) of the last
        key of the previous page (ids alone are only millisecond-ordered)."""
        params: dict[str, Any] = {"p_merchant_id": merchant_id, "p_limit": limit}
        if after is not None:
            params["p_after_time"], params["p_after_id"] = after
        rows = await _LIST_API_KEYS[after is not None].all(self.conn, params)
        return [_api_key(row) for row in rows]

    async def rehash_api_key(self, key_id: str, secret_hash: bytes, hash_version: int) -> None:
        await _REHASH_API_KEY.execute(
            self.conn,
            {"p_key_id": key_id, "p_secret_hash": secret_hash, "p_version": hash_version},
        )

    async def mark_api_key_revoked(self, key_id: str, now: datetime) -> None:
        await _REVOKE_API_KEY.execute(self.conn, {"p_key_id": key_id, "p_now": now})

    # -- failed secrets -------------------------------------------------------------------

    async def get_login_failures(self, key_id: str, *, for_update: bool = False) -> LoginFailures:
        if for_update:
            # Make sure a row exists so that FOR UPDATE has something to lock: concurrent
            # failures for one id then serialize instead of losing counts.
            await _ENSURE_LOGIN_FAILURES.execute(
                self.conn,
                {
                    "api_key_id": key_id,
                    "recent_failures": [],
                    "locked_until": None,
                    "update_time": datetime.now(UTC),
                },
            )
        row = await _GET_LOGIN_FAILURES[for_update].first(self.conn, {"p_key_id": key_id})
        if row is None:
            return LoginFailures()
        return LoginFailures(
            recent=tuple(_from_ms(ms) for ms in row.recent_failures),
            locked_until=row.locked_until,
        )

    async def save_login_failures(self, key_id: str, state: LoginFailures, now: datetime) -> None:
        await _SAVE_LOGIN_FAILURES.execute(
            self.conn,
            {
                "p_key_id": key_id,
                "p_recent": [_to_ms(t) for t in state.recent],
                "p_locked_until": state.locked_until,
                "p_now": now,
            },
        )

    async def delete_login_failures_before(self, cutoff: datetime, now: datetime) -> int:
        """Forget records last touched before `cutoff` that hold no running lock."""
        return await _DELETE_LOGIN_FAILURES.execute(self.conn, {"p_cutoff": cutoff, "p_now": now})

    # -- tokens ---------------------------------------------------------------------------

    async def insert_issued_token(self, grant: TokenGrant) -> None:
        await _INSERT_ISSUED_TOKEN.execute(
            self.conn,
            {
                "jti": grant.token_id,
                "merchant_id": grant.merchant_id,
                "api_key_id": grant.api_key_id,
                "issue_time": grant.issue_time,
                "expire_time": grant.expire_time,
            },
        )

    async def get_issued_token(self, merchant_id: str, jti: str) -> TokenGrant | None:
        row = await _GET_ISSUED_TOKEN.first(self.conn, {"p_jti": jti, "p_merchant_id": merchant_id})
        if row is None:
            return None
        return TokenGrant(
            token_id=row.jti,
            merchant_id=row.merchant_id,
            api_key_id=row.api_key_id,
            issue_time=row.issue_time,
            expire_time=row.expire_time,
        )

    async def revoke_token(self, grant: TokenGrant, now: datetime) -> RevokedToken:
        """Record the revocation (idempotent: a second call returns the first record)."""
        await _INSERT_REVOKED_TOKEN.execute(
            self.conn,
            {
                "jti": grant.token_id,
                "merchant_id": grant.merchant_id,
                "expire_time": grant.expire_time,
                "revoke_time": now,
            },
        )
        row = await _GET_REVOKED_TOKEN.one(self.conn, {"p_jti": grant.token_id})
        return RevokedToken(row.jti, row.expire_time, row.revoke_time)

    async def revoke_live_tokens_of_key(self, key_id: str, now: datetime) -> list[RevokedToken]:
        """Revoke every unexpired token issued with `key_id`; returns the new revocations."""
        live = await _LIVE_TOKENS_OF_KEY.all(self.conn, {"p_key_id": key_id, "p_now": now})
        if not live:
            return []
        already = {
            row.jti
            for row in await _REVOKED_AMONG.all(self.conn, {"p_ids": [row.jti for row in live]})
        }
        fresh = [row for row in live if row.jti not in already]
        await _INSERT_REVOKED_TOKEN.execute_many(
            self.conn,
            [
                {
                    "jti": row.jti,
                    "merchant_id": row.merchant_id,
                    "expire_time": row.expire_time,
                    "revoke_time": now,
                }
                for row in fresh
            ],
        )
        return [RevokedToken(row.jti, row.expire_time, now) for row in fresh]

    async def list_revoked_tokens(
        self, *, revoked_after: datetime | None, now: datetime
    ) -> list[RevokedToken]:
        params: dict[str, Any] = {"p_now": now}
        if revoked_after is not None:
            params["p_after"] = revoked_after
        rows = await _LIST_REVOKED_TOKENS[revoked_after is not None].all(self.conn, params)
        return [RevokedToken(row.jti, row.expire_time, row.revoke_time) for row in rows]

    async def delete_expired_tokens(self, now: datetime) -> int:
        """Issued and revoked tokens past their expiry no longer matter to anyone."""
        issued = await _DELETE_EXPIRED_ISSUED.execute(self.conn, {"p_now": now})
        revoked = await _DELETE_EXPIRED_REVOKED.execute(self.conn, {"p_now": now})
        return issued + revoked

    # -- signing keys ---------------------------------------------------------------------

    async def insert_signing_key(self, key: NewSigningKey, *, status: str, now: datetime) -> None:
        await _INSERT_SIGNING_KEY.execute(
            self.conn,
            {
                "kid": key.kid,
                "status": status,
                "public_jwk": key.public_jwk,
                "public_key_pem": key.public_key_pem,
                "private_key_ciphertext": key.private_key_ciphertext,
                "master_key_version": key.master_key_version,
                "create_time": now,
                "rotate_time": None,
                "verify_until": None,
            },
        )

    async def current_signing_kid(self, *, for_update: bool = False) -> str | None:
        row = await _CURRENT_SIGNING_KID[for_update].first(self.conn)
        return None if row is None else str(row.kid)

    async def demote_signing_key(self, kid: str, *, now: datetime, verify_until: datetime) -> None:
        await _DEMOTE_SIGNING_KEY.execute(
            self.conn, {"p_kid": kid, "p_now": now, "p_verify_until": verify_until}
        )

    async def retire_signing_keys(self, now: datetime) -> list[str]:
        """Previous keys no live token can need: drop from the JWKS, erase private half."""
        kids = [
            str(row.kid) for row in await _RETIRABLE_SIGNING_KEYS.all(self.conn, {"p_now": now})
        ]
        if kids:
            await _RETIRE_SIGNING_KEYS.execute(self.conn, {"p_ids": kids})
        return kids

    async def list_signing_keys(self, statuses: Sequence[str]) -> list[StoredKey]:
        """Keys with the given statuses, current first then newest first."""
        rows = await _SIGNING_KEYS_BY_STATUS.all(self.conn, {"p_ids": list(statuses)})
        return [
            StoredKey(
                kid=row.kid,
                status=row.status,
                public_jwk=dict(row.public_jwk),
                private_key_ciphertext=(
                    None
                    if row.private_key_ciphertext is None
                    else bytes(row.private_key_ciphertext)
                ),
                create_time=row.create_time,
                verify_until=row.verify_until,
            )
            for row in rows
        ]
