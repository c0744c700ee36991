"""Auth use cases: plain values and a principal in, domain records out.

`AuthService` holds the merchant-facing operations, `SigningKeyService` the signing-key
lifecycle (first key at start-up, `rotate-keys`). Neither knows about gRPC.

Decisions worth knowing:

- API secrets are stored as HMAC-SHA256 under a key derived from the master keys
  (`derive_key("auth/api-key-secret", version=v)`, with `v` pinned per row so adding a
  master key does not invalidate existing secrets; a successful IssueToken moves the
  hash to the newest master key), and compared in constant time.
- Idempotent replays of CreateMerchant / CreateApiKey return the first response
  *including the secret*: a client that lost the first response must be able to use the
  key it caused to be created. The stored response is therefore AES-256-GCM ciphertext
  under the master keys (bound to scope, operation and key), never plaintext, and is
  purged with the idempotency key after 24 h.
- IssueToken answers every failure (unknown key id, wrong secret, revoked key, locked
  key id) with the same UNAUTHENTICATED / INVALID_CREDENTIALS and message, does the same
  hash work for unknown ids, and counts failures per key-id *string* in the database,
  so neither answers nor lockouts reveal whether a key id exists (PCI DSS 8.3.4).
- Identifiers: an empty or malformed id (`key_…`, `tok_…` shape) is INVALID_ARGUMENT with a
  field violation, everywhere: the shape is public, so saying so reveals nothing. A
  well-formed id that the caller cannot see is NOT_FOUND, whether it belongs to another
  merchant or to nobody (for IssueToken: INVALID_CREDENTIALS).
- RevokeApiKey also revokes every unexpired token issued with the key (and announces
  those revocations), so a revoked key stops working at once, not after 15 minutes.
- Revocations are committed to `revoked_tokens` first, then announced: added to this
  process's `RevocationList` at once and published on `pi:revocations`; other services'
  pollers pick them up from ListRevokedTokens even if the publish is lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pi.auth import domain
from pi.auth.domain import (
    ApiKey,
    IssuedToken,
    LockoutPolicy,
    Merchant,
    MerchantRegistration,
    NewApiKey,
    RevokedToken,
    SigningKeyStatus,
)
from pi.auth.signing_keys import KeyRing, StoredKey, generate_signing_key
from pi.auth.store import AuthStore, AuthTransaction
from pi.platform.db.errors import IntegrityError
from pi.platform.db.idempotency import Claim, Idempotency
from pi.platform.kernel.errors import InvalidArgument, NotFound, Unauthenticated
from pi.platform.kernel.pages import PageToken, page_size
from pi.platform.kernel.principal import Principal, require_admin, require_merchant, require_service
from pi.platform.kernel.text import printable_text
from pi.platform.security.crypto import MasterKeys, constant_time_equal, hmac_sha256

_log = logging.getLogger(__name__)

SECRET_HASH_PURPOSE = "auth/api-key-secret"
FIRST_KEY_NAME = "Default"
INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
_INVALID_CREDENTIALS_MESSAGE = "The API key id or secret is not valid."
_ADMIN_SCOPE = "admin"
_OP_CREATE_MERCHANT = "pi.auth.v1.AuthService/CreateMerchant"
_OP_CREATE_API_KEY = "pi.auth.v1.AuthService/CreateApiKey"
_LIST_API_KEYS = "ListApiKeys"


def utcnow() -> datetime:
    return datetime.now(UTC)


class RevocationSink(Protocol):
    """Where committed revocations are announced (local verifier, pub/sub)."""

    async def revoked(self, tokens: Sequence[RevokedToken]) -> None: ...


class AuthService:
    def __init__(
        self,
        store: AuthStore,
        keys: KeyRing,
        master_keys: MasterKeys,
        idempotency: Idempotency,
        page_tokens: PageToken,
        revocations: RevocationSink,
        *,
        issuer: str,
        audience: str,
        token_ttl: timedelta,
        lockout: LockoutPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._keys = keys
        self._master_keys = master_keys
        self._idempotency = idempotency
        self._page_tokens = page_tokens
        self._revocations = revocations
        self._issuer = issuer
        self._audience = audience
        self._token_ttl = token_ttl
        self._lockout = lockout or LockoutPolicy()
        self._clock = clock
        # Compared against when the key id is unknown, so that path hashes too.
        self._dummy_hash = hmac_sha256(self._hash_key(master_keys.current_version), b"")

    # -- merchants and API keys ----------------------------------------------------------

    async def create_merchant(
        self,
        principal: Principal,
        display_name: str,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> MerchantRegistration:
        """Register a merchant with its first API key (admin only)."""
        require_admin(principal)
        name = printable_text(display_name, "display_name", domain.MAX_DISPLAY_NAME)
        now = self._clock()
        async with self._store.transaction() as tx:
            claim = await self._idempotency.claim(
                tx.conn, _ADMIN_SCOPE, _OP_CREATE_MERCHANT, idempotency_key, fingerprint
            )
            if claim.replay is not None:
                return _registration_from_json(self._open(claim, claim.replay))
            merchant = Merchant(id=domain.new_merchant_id(), display_name=name, create_time=now)
            await tx.insert_merchant(merchant)
            created = await self._insert_new_key(tx, merchant.id, FIRST_KEY_NAME, now)
            result = MerchantRegistration(merchant, created.api_key, created.secret)
            await self._idempotency.complete(
                tx.conn, claim, self._seal(claim, _registration_to_json(result))
            )
        return result

    async def create_api_key(
        self,
        principal: Principal,
        display_name: str,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> NewApiKey:
        merchant_id = require_merchant(principal)
        name = printable_text(display_name, "display_name", domain.MAX_DISPLAY_NAME, required=False)
        now = self._clock()
        async with self._store.transaction() as tx:
            claim = await self._idempotency.claim(
                tx.conn, merchant_id, _OP_CREATE_API_KEY, idempotency_key, fingerprint
            )
            if claim.replay is not None:
                return _new_key_from_json(self._open(claim, claim.replay))
            created = await self._insert_new_key(tx, merchant_id, name, now)
            await self._idempotency.complete(
                tx.conn, claim, self._seal(claim, _new_key_to_json(created))
            )
        return created

    async def list_api_keys(
        self, principal: Principal, *, page_size_value: int = 0, page_token: str = ""
    ) -> tuple[list[ApiKey], str]:
        """The caller's keys newest first, and the next page token ("" on the last page)."""
        merchant_id = require_merchant(principal)
        size = page_size(page_size_value)
        filters = {"list": _LIST_API_KEYS, "merchant": merchant_id}
        after: tuple[datetime, str] | None = None
        if page_token:
            after = _page_position(self._page_tokens.decode(page_token, filters))
        async with self._store.transaction() as tx:
            keys = await tx.list_api_keys(merchant_id, after=after, limit=size + 1)
        if len(keys) <= size:
            return keys, ""
        keys = keys[:size]
        last = keys[-1]
        position = {"t": last.create_time.isoformat(), "id": last.id}
        return keys, self._page_tokens.encode(position, filters)

    async def revoke_api_key(self, principal: Principal, key_id: str) -> ApiKey:
        """Revoke one of the caller's keys, and every unexpired token issued with it.

        Idempotent: revoking a revoked key returns it unchanged. Another merchant's key
        is NOT_FOUND, like a key that does not exist.
        """
        merchant_id = require_merchant(principal)
        domain.check_id(key_id, field_path="id", kind="API key", valid=domain.is_api_key_id(key_id))
        now = self._clock()
        revoked: list[RevokedToken] = []
        async with self._store.transaction() as tx:
            key = await tx.get_api_key(merchant_id, key_id, for_update=True)
            if key is None:
                raise NotFound("No such API key.", reason="API_KEY_NOT_FOUND")
            if key.active:
                await tx.mark_api_key_revoked(key_id, now)
                revoked = await tx.revoke_live_tokens_of_key(key_id, now)
                key = replace(key, revoke_time=now)
        await self._revocations.revoked(revoked)
        return key

    # -- tokens ---------------------------------------------------------------------------

    async def issue_token(self, api_key_id: str, secret: str) -> IssuedToken:
        """Exchange an API key id and secret for a signed access token."""
        domain.check_id(
            api_key_id,
            field_path="api_key_id",
            kind="API key",
            valid=domain.is_api_key_id(api_key_id),
        )
        if not secret:
            raise InvalidArgument.field("api_key_secret", "is required")
        if len(secret) > domain.MAX_SECRET_INPUT:
            raise InvalidArgument.field(
                "api_key_secret", f"must be at most {domain.MAX_SECRET_INPUT} characters"
            )
        now = self._clock()
        async with self._store.transaction() as tx:
            failures = await tx.get_login_failures(api_key_id)
            found = await tx.get_api_key_with_hash(api_key_id)
            secret_ok = self._secret_matches(secret, found)
            locked = self._lockout.is_locked(failures, now)
            if found is not None and secret_ok and found[0].active and not locked:
                key, _, hash_version = found
                if hash_version != self._master_keys.current_version:
                    # Move the hash to the newest master key, so that old master keys
                    # can eventually be removed from PI_MASTER_KEYS.
                    await tx.rehash_api_key(key.id, *self.hash_secret(secret))
                grant = domain.grant_token(
                    merchant_id=key.merchant_id, api_key_id=key.id, now=now, ttl=self._token_ttl
                )
                await tx.insert_issued_token(grant)
                token = self._keys.sign(
                    domain.token_claims(grant, issuer=self._issuer, audience=self._audience)
                )
                issued: IssuedToken | None = IssuedToken(token, grant)
            else:
                issued = None
                if not locked:
                    current = await tx.get_login_failures(api_key_id, for_update=True)
                    updated = self._lockout.after_failure(current, now)
                    await tx.save_login_failures(api_key_id, updated, now)
        if issued is None:
            raise Unauthenticated(_INVALID_CREDENTIALS_MESSAGE, reason=INVALID_CREDENTIALS)
        return issued

    async def revoke_token(self, principal: Principal, token_id: str) -> RevokedToken:
        """Revoke one of the caller's tokens by `jti`; anyone else's is NOT_FOUND."""
        merchant_id = require_merchant(principal)
        domain.check_id(
            token_id, field_path="token_id", kind="token", valid=domain.is_token_id(token_id)
        )
        now = self._clock()
        async with self._store.transaction() as tx:
            grant = await tx.get_issued_token(merchant_id, token_id)
            if grant is None:
                raise NotFound("No such token.", reason="TOKEN_NOT_FOUND")
            revoked = await tx.revoke_token(grant, now)
        await self._revocations.revoked([revoked])
        return revoked

    async def list_revoked_tokens(
        self, principal: Principal, revoked_after: datetime | None
    ) -> list[RevokedToken]:
        """Revocations of unexpired tokens, oldest first (service credential only)."""
        require_service(principal)
        return await self.revocations_since(revoked_after)

    async def revocations_since(self, revoked_after: datetime | None) -> list[RevokedToken]:
        async with self._store.transaction() as tx:
            return await tx.list_revoked_tokens(revoked_after=revoked_after, now=self._clock())

    def jwks(self) -> list[dict[str, str]]:
        return self._keys.jwks()

    async def purge_expired(self, idempotency_retention: timedelta | None = None) -> int:
        """Housekeeping: expired tokens, stale failure records, old idempotency keys."""
        now = self._clock()
        async with self._store.transaction() as tx:
            count = await tx.delete_expired_tokens(now)
            count += await tx.delete_login_failures_before(now - self._lockout.window, now)
            if idempotency_retention is None:
                count += await self._idempotency.purge(tx.conn)
            else:
                count += await self._idempotency.purge(tx.conn, idempotency_retention)
        return count

    # -- helpers --------------------------------------------------------------------------

    def _hash_key(self, version: int) -> bytes:
        return self._master_keys.derive_key(SECRET_HASH_PURPOSE, version=version)

    def hash_secret(self, secret: str) -> tuple[bytes, int]:
        version = self._master_keys.current_version
        return hmac_sha256(self._hash_key(version), secret.encode("utf-8")), version

    def _secret_matches(self, secret: str, found: tuple[ApiKey, bytes, int] | None) -> bool:
        """Always one HMAC and one constant-time compare, whether or not the key exists."""
        expected, version = (self._dummy_hash, self._master_keys.current_version)
        if found is not None:
            expected, version = found[1], found[2]
        try:
            key = self._hash_key(version)
        except KeyError:
            _log.error(
                "API key hashed with master key version %d, which is not configured", version
            )
            key, expected = self._hash_key(self._master_keys.current_version), self._dummy_hash
            found = None
        presented = hmac_sha256(key, secret.encode("utf-8"))
        return constant_time_equal(presented, expected) and found is not None

    async def _insert_new_key(
        self, tx: AuthTransaction, merchant_id: str, name: str, now: datetime
    ) -> NewApiKey:
        secret = domain.new_api_secret()
        secret_hash, version = self.hash_secret(secret)
        key = ApiKey(
            id=domain.new_api_key_id(), merchant_id=merchant_id, display_name=name, create_time=now
        )
        await tx.insert_api_key(key, secret_hash, version)
        return NewApiKey(key, secret)

    def _seal(self, claim: Claim, payload: dict[str, Any]) -> bytes:
        """The stored idempotent response: encrypted, because it holds a secret."""
        plaintext = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return self._master_keys.encrypt(plaintext, _claim_aad(claim))

    def _open(self, claim: Claim, sealed: bytes) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._master_keys.decrypt(sealed, _claim_aad(claim)))
        return data


def _page_position(position: dict[str, Any]) -> tuple[datetime, str]:
    try:
        create_time = datetime.fromisoformat(position["t"])
        key_id = position["id"]
    except (KeyError, TypeError, ValueError):
        raise InvalidArgument.field("page_token", "is not a valid page token.") from None
    if create_time.tzinfo is None or not isinstance(key_id, str):
        raise InvalidArgument.field("page_token", "is not a valid page token.")
    if not domain.is_api_key_id(key_id):
        raise InvalidArgument.field("page_token", "is not a valid page token.")
    return create_time, key_id


def _claim_aad(claim: Claim) -> bytes:
    return f"pi.auth.idempotency:{claim.scope}:{claim.operation}:{claim.key}".encode()


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _key_to_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "merchant_id": key.merchant_id,
        "display_name": key.display_name,
        "create_time": _ts(key.create_time),
        "revoke_time": _ts(key.revoke_time),
    }


def _key_from_json(data: dict[str, Any]) -> ApiKey:
    create_time = _parse_ts(data["create_time"])
    assert create_time is not None
    return ApiKey(
        id=data["id"],
        merchant_id=data["merchant_id"],
        display_name=data["display_name"],
        create_time=create_time,
        revoke_time=_parse_ts(data["revoke_time"]),
    )


def _registration_to_json(result: MerchantRegistration) -> dict[str, Any]:
    merchant = result.merchant
    return {
        "merchant": {
            "id": merchant.id,
            "display_name": merchant.display_name,
            "create_time": _ts(merchant.create_time),
        },
        "api_key": _key_to_json(result.api_key),
        "secret": result.secret,
    }


def _registration_from_json(data: dict[str, Any]) -> MerchantRegistration:
    create_time = _parse_ts(data["merchant"]["create_time"])
    assert create_time is not None
    merchant = Merchant(
        id=data["merchant"]["id"],
        display_name=data["merchant"]["display_name"],
        create_time=create_time,
    )
    return MerchantRegistration(merchant, _key_from_json(data["api_key"]), data["secret"])


def _new_key_to_json(created: NewApiKey) -> dict[str, Any]:
    return {"api_key": _key_to_json(created.api_key), "secret": created.secret}


def _new_key_from_json(data: dict[str, Any]) -> NewApiKey:
    return NewApiKey(_key_from_json(data["api_key"]), data["secret"])


class SigningKeyService:
    """Signing-key lifecycle: the first key at start-up, rotation, retirement."""

    def __init__(
        self,
        store: AuthStore,
        master_keys: MasterKeys,
        *,
        max_token_ttl: timedelta,
        signer_lag: timedelta,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._master_keys = master_keys
        self._max_token_ttl = max_token_ttl
        self._signer_lag = signer_lag
        self._clock = clock

    async def ensure_current(self) -> str:
        """The current key's kid, creating the first key if there is none.

        Two processes starting at once may both try; the partial unique index lets one
        win and the other reads the winner's key.
        """
        async with self._store.transaction() as tx:
            kid = await tx.current_signing_kid()
        if kid is not None:
            return kid
        new = generate_signing_key(self._master_keys)
        try:
            async with self._store.transaction() as tx:
                await tx.insert_signing_key(new, status=SigningKeyStatus.CURRENT, now=self._clock())
        except IntegrityError:
            async with self._store.transaction() as tx:
                kid = await tx.current_signing_kid()
            if kid is None:
                raise
            return kid
        _log.info("created the first signing key", extra={"kid": new.kid})
        return new.kid

    async def rotate(self) -> str:
        """Make a new current key; the old one verifies until its tokens have expired."""
        now = self._clock()
        new = generate_signing_key(self._master_keys)
        async with self._store.transaction() as tx:
            old = await tx.current_signing_kid(for_update=True)
            if old is not None:
                until = domain.verify_until(
                    now, max_ttl=self._max_token_ttl, signer_lag=self._signer_lag
                )
                await tx.demote_signing_key(old, now=now, verify_until=until)
            await tx.insert_signing_key(new, status=SigningKeyStatus.CURRENT, now=now)
            retired = await tx.retire_signing_keys(now)
        _log.info(
            "rotated signing keys", extra={"kid": new.kid, "previous": old, "retired": retired}
        )
        return new.kid

    async def retire_expired(self) -> list[str]:
        async with self._store.transaction() as tx:
            return await tx.retire_signing_keys(self._clock())

    async def load(self) -> list[StoredKey]:
        """Current and previous keys, for the `KeyRing`."""
        async with self._store.transaction() as tx:
            return await tx.list_signing_keys((SigningKeyStatus.CURRENT, SigningKeyStatus.PREVIOUS))
