"""The auth unit of work on PostgreSQL: the repositories of `pi.auth.app.ports` on
`PostgresUnitOfWork`, whose modes decide how their reads lock (`unit.locking`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pi.auth.adapters.postgres import rows
from pi.auth.adapters.postgres import statements as sql
from pi.auth.adapters.postgres.tables import idempotency_keys
from pi.auth.app.ports import IdempotentRequest, Pending, PriorRequest
from pi.auth.domain.merchants import ApiKey, Credentials, Merchant, SecretHash
from pi.auth.domain.signing_keys import NewSigningKey, SigningKeyStatus, StoredKey
from pi.auth.domain.throttle import LoginFailures
from pi.auth.domain.tokens import RevokedToken, TokenGrant
from pi.platform.db.batch import Deferred
from pi.platform.db.database import Database
from pi.platform.db.idempotency import Idempotency
from pi.platform.db.unit_of_work import PostgresUnitOfWork
from pi.platform.kernel.units import Mode

_IDEMPOTENCY = Idempotency(idempotency_keys)


class PostgresAuthUnit(PostgresUnitOfWork):
    """One auth unit of work on `database` (see `pi.platform.db.unit_of_work`)."""

    def __init__(self, database: Database, mode: Mode = Mode.LOCKED) -> None:
        super().__init__(database, mode)
        self.merchants = PostgresMerchants(self)
        self.api_keys = PostgresApiKeys(self)
        self.failed_logins = PostgresFailedLogins(self)
        self.tokens = PostgresTokens(self)
        self.signing_keys = PostgresSigningKeys(self)
        self.idempotency = PostgresIdempotencyKeys(self)


class PostgresUnits:
    """The `UnitsOfWork` of a running service: a new unit per business step."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def __call__(self, mode: Mode) -> PostgresAuthUnit:
        return PostgresAuthUnit(self._database, mode)


class _Repository:
    def __init__(self, unit: PostgresUnitOfWork) -> None:
        self._unit = unit


class PostgresMerchants(_Repository):
    def add(self, merchant: Merchant) -> None:
        self._unit.execute(sql.INSERT_MERCHANT, rows.merchant_values(merchant))


class PostgresApiKeys(_Repository):
    def add(self, key: ApiKey, secret_hash: SecretHash) -> None:
        self._unit.execute(sql.INSERT_API_KEY, rows.api_key_values(key, secret_hash))

    async def of_merchant(self, merchant_id: str, key_id: str) -> ApiKey | None:
        row = await self._unit.read(
            sql.MERCHANTS_KEY[self._unit.locking],
            {"p_key_id": key_id, "p_merchant_id": merchant_id},
        )
        return None if row is None else rows.api_key(row)

    async def credentials(self, key_id: str) -> Credentials | None:
        row = await self._unit.read(sql.CREDENTIALS[self._unit.locking], {"p_key_id": key_id})
        return None if row is None else rows.credentials(row)

    async def page(
        self, merchant_id: str, *, after: tuple[datetime, str] | None, limit: int
    ) -> list[ApiKey]:
        params: dict[str, object] = {"p_merchant_id": merchant_id, "p_limit": limit}
        if after is not None:
            params["p_after_create_time"], params["p_after_id"] = after
        found = await self._unit.read_all(sql.KEYS_PAGE[after is not None], params)
        return [rows.api_key(row) for row in found]

    def rehash(self, key_id: str, secret_hash: SecretHash) -> None:
        self._unit.execute(
            sql.REHASH_API_KEY,
            {
                "p_key_id": key_id,
                "p_secret_hash": secret_hash.digest,
                "p_secret_hash_version": secret_hash.version,
            },
        )

    def revoke(self, key_id: str, now: datetime) -> None:
        self._unit.execute(sql.REVOKE_API_KEY, {"p_key_id": key_id, "p_now": now})


class PostgresFailedLogins(_Repository):
    async def get(self, key_id: str) -> LoginFailures:
        row = await self._unit.read(sql.LOGIN_FAILURES[False], {"p_key_id": key_id})
        return rows.login_failures(row)

    async def lock(self, key_id: str) -> LoginFailures:
        if not self._unit.locking:
            raise RuntimeError("failed logins are counted on a LOCKED unit")
        self._unit.execute(
            sql.CREATE_LOGIN_FAILURES,
            {
                "api_key_id": key_id,
                "recent_failures": [],
                "locked_until": None,
                "update_time": datetime.now(UTC),
            },
        )
        row = await self._unit.read(sql.LOGIN_FAILURES[True], {"p_key_id": key_id})
        return rows.login_failures(row)

    def save(self, key_id: str, failures: LoginFailures, now: datetime) -> None:
        self._unit.execute(
            sql.SAVE_LOGIN_FAILURES,
            {
                "p_key_id": key_id,
                "p_recent": rows.recent_failures(failures),
                "p_locked_until": failures.locked_until,
                "p_now": now,
            },
        )

    def forget_stale(self, touched_before: datetime, now: datetime) -> Pending[int]:
        return self._unit.execute(
            sql.FORGET_STALE_LOGIN_FAILURES, {"p_cutoff": touched_before, "p_now": now}
        )


class PostgresTokens(_Repository):
    def add_issued(self, grant: TokenGrant) -> None:
        written = self._unit.hit(
            sql.ADD_ISSUED_TOKEN,
            {
                "p_jti": grant.token_id,
                "p_key_id": grant.api_key_id,
                "p_merchant_id": grant.merchant_id,
                "p_issue_time": grant.issue_time,
                "p_expire_time": grant.expire_time,
            },
        )
        self._unit.expect(written, "the API key was revoked")

    async def issued(self, merchant_id: str, token_id: str) -> TokenGrant | None:
        row = await self._unit.read(
            sql.ISSUED_TOKEN, {"p_jti": token_id, "p_merchant_id": merchant_id}
        )
        return None if row is None else rows.grant(row)

    async def live_unrevoked(self, api_key_id: str, now: datetime) -> list[TokenGrant]:
        found = await self._unit.read_all(
            sql.LIVE_UNREVOKED_TOKENS, {"p_key_id": api_key_id, "p_now": now}
        )
        return [rows.grant(row) for row in found]

    def revoke(self, grants: Sequence[TokenGrant], now: datetime) -> None:
        if not grants:
            return
        self._unit.execute(
            sql.REVOKE_TOKENS,
            {
                "p_jtis": [grant.token_id for grant in grants],
                "p_merchant_ids": [grant.merchant_id for grant in grants],
                "p_expire_times": [grant.expire_time for grant in grants],
                "p_now": now,
            },
        )

    async def revocation(self, token_id: str) -> RevokedToken | None:
        row = await self._unit.read(sql.REVOCATION, {"p_jti": token_id})
        return None if row is None else rows.revoked_token(row)

    async def revoked_since(
        self, revoked_after: datetime | None, now: datetime
    ) -> list[RevokedToken]:
        found = await self._unit.read_all(
            sql.REVOKED_SINCE[revoked_after is not None], {"p_now": now, "p_after": revoked_after}
        )
        return [rows.revoked_token(row) for row in found]

    def forget_expired(self, now: datetime) -> Pending[int]:
        return _Sum(
            self._unit.execute(sql.FORGET_EXPIRED_ISSUED, {"p_now": now}),
            self._unit.execute(sql.FORGET_EXPIRED_REVOKED, {"p_now": now}),
        )


class PostgresSigningKeys(_Repository):
    async def current_kid(self) -> str | None:
        row = await self._unit.read(sql.CURRENT_KID[self._unit.locking])
        return None if row is None else str(row.kid)

    def add_current(self, key: NewSigningKey, now: datetime) -> None:
        written = self._unit.hit(
            sql.ADD_CURRENT_KEY,
            rows.signing_key_values(key, status=SigningKeyStatus.CURRENT, now=now),
        )
        self._unit.expect(written, "another signing key became current")

    def demote(self, kid: str, *, now: datetime, verify_until: datetime) -> None:
        self._unit.execute(
            sql.DEMOTE_KEY, {"p_kid": kid, "p_now": now, "p_verify_until": verify_until}
        )

    async def expired_previous(self, now: datetime) -> list[str]:
        found = await self._unit.read_all(
            sql.EXPIRED_PREVIOUS_KEYS[self._unit.locking], {"p_now": now}
        )
        return [str(row.kid) for row in found]

    def retire(self, kids: Sequence[str]) -> None:
        self._unit.execute(sql.RETIRE_KEYS, {"p_kids": list(kids)})

    async def published(self) -> list[StoredKey]:
        return [rows.stored_key(row) for row in await self._unit.read_all(sql.PUBLISHED_KEYS)]


class PostgresIdempotencyKeys(_Repository):
    async def claim(self, request: IdempotentRequest, response: bytes) -> PriorRequest | None:
        if request.key is None:
            return None
        key = {"p_scope": request.scope, "p_operation": request.operation, "p_key": request.key}
        if self._unit.locking:
            # Claimed first: a concurrent claim of the key waits here for its unit to
            # end, and the read then sees what that unit committed.
            claimed = self._claim(request, response)
            row = await self._unit.read(sql.STORED_REQUEST, key)
            if claimed.value:
                return None
            if row is None:  # purged meanwhile
                return PriorRequest(None, None)
        else:
            row = await self._unit.read(sql.STORED_REQUEST, key)
            if row is None:
                claimed = self._claim(request, response)
                self._unit.expect(claimed, "the idempotency key was claimed meanwhile")
                return None
        return PriorRequest(row.request_hash, None if row.response is None else bytes(row.response))

    def forget_before(self, cutoff: datetime) -> Pending[int]:
        return self._unit.execute(sql.FORGET_IDEMPOTENCY_KEYS, {"p_cutoff": cutoff})

    def _claim(self, request: IdempotentRequest, response: bytes) -> Deferred[bool]:
        """The key claimed holding `response`: whether it was free (after the flush)."""
        queued = _IDEMPOTENCY.queue_claim(
            self._unit,
            request.scope,
            request.operation,
            request.key,
            request.fingerprint,
            response=response,
        )
        if queued.inserted is None:
            raise ValueError("a request without an idempotency key claims nothing")
        return queued.inserted


class _Sum:
    """Counts of several queued writes, added up once the unit has committed."""

    def __init__(self, *counts: Pending[int]) -> None:
        self._counts = counts

    @property
    def value(self) -> int:
        return sum(count.value for count in self._counts)
