"""The auth unit of work in memory, for use-case tests (and a database-free service).

It keeps the promises the PostgreSQL unit keeps, as the contract tests in
`tests/integration/auth` check on both: the same lookups, order and pagination, an
API key needs its merchant, one revocation per token (the first stands), at most one
current signing key, idempotency keys claimed once, and conditional writes that make
the unit conflict (at its commit, nothing kept) when their condition does not hold.
Units run one at a time (`MemoryUnitOfWork`), so what a unit read still holds when it
commits; unlike an OPTIMISTIC PostgreSQL unit, a unit here reads its own writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from pi.auth.app.ports import Clock, IdempotentRequest, PriorRequest
from pi.auth.domain.merchants import ApiKey, Credentials, Merchant, SecretHash
from pi.auth.domain.signing_keys import NewSigningKey, SigningKeyStatus, StoredKey
from pi.auth.domain.throttle import LoginFailures
from pi.auth.domain.tokens import RevokedToken, TokenGrant
from pi.platform.kernel.units import Conflict, MemoryUnitOfWork, Mode


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _FailureRecord:
    failures: LoginFailures
    update_time: datetime


@dataclass(frozen=True)
class _SigningKeyRow:
    key: StoredKey
    master_key_version: int | None
    rotate_time: datetime | None = None


@dataclass(frozen=True)
class _StoredRequest:
    fingerprint: str
    response: bytes
    create_time: datetime


@dataclass
class AuthState:
    """Everything the auth database holds, as the memory units share it."""

    merchants: dict[str, Merchant] = field(default_factory=dict)
    api_keys: dict[str, Credentials] = field(default_factory=dict)
    failed_logins: dict[str, _FailureRecord] = field(default_factory=dict)
    issued_tokens: dict[str, TokenGrant] = field(default_factory=dict)
    revoked_tokens: dict[str, RevokedToken] = field(default_factory=dict)
    signing_keys: dict[str, _SigningKeyRow] = field(default_factory=dict)
    idempotency_keys: dict[tuple[str, str, str], _StoredRequest] = field(default_factory=dict)


@dataclass(frozen=True)
class _Count:
    value: int


class MemoryAuthUnit(MemoryUnitOfWork[AuthState]):
    def __init__(
        self, state: AuthState, lock: asyncio.Lock, mode: Mode = Mode.LOCKED, *, clock: Clock
    ) -> None:
        super().__init__(state, lock, mode)
        self.clock = clock
        self._missed: list[str] = []
        self.merchants = MemoryMerchants(self)
        self.api_keys = MemoryApiKeys(self)
        self.failed_logins = MemoryFailedLogins(self)
        self.tokens = MemoryTokens(self)
        self.signing_keys = MemorySigningKeys(self)
        self.idempotency = MemoryIdempotencyKeys(self)

    def writing(self) -> AuthState:
        """The state, to change; a READ unit cannot write."""
        if self.mode is Mode.READ:
            raise RuntimeError("a READ unit cannot write")
        return self.state

    def expect(self, held: bool, what: str) -> None:
        """The unit conflicts at its commit unless `held`."""
        if not held:
            self._missed.append(what)

    async def commit(self) -> None:
        if self._missed:
            raise Conflict(self._missed[0])
        await super().commit()


class MemoryUnits:
    """The `UnitsOfWork` on one in-memory state; `clock` stamps idempotency claims and
    failure records, as the database's clock would."""

    def __init__(self, state: AuthState | None = None, *, clock: Clock = _utcnow) -> None:
        self.state = state or AuthState()
        self._lock = asyncio.Lock()
        self._clock = clock

    def __call__(self, mode: Mode) -> MemoryAuthUnit:
        return MemoryAuthUnit(self.state, self._lock, mode, clock=self._clock)


class _Repository:
    def __init__(self, unit: MemoryAuthUnit) -> None:
        self._unit = unit


class MemoryMerchants(_Repository):
    def add(self, merchant: Merchant) -> None:
        state = self._unit.writing()
        if merchant.id in state.merchants:
            raise ValueError(f"merchant {merchant.id} exists already")
        state.merchants[merchant.id] = merchant


class MemoryApiKeys(_Repository):
    def add(self, key: ApiKey, secret_hash: SecretHash) -> None:
        state = self._unit.writing()
        if key.merchant_id not in state.merchants:
            raise ValueError(f"API key {key.id} of unknown merchant {key.merchant_id}")
        if key.id in state.api_keys:
            raise ValueError(f"API key {key.id} exists already")
        state.api_keys[key.id] = Credentials(key, secret_hash)

    async def of_merchant(self, merchant_id: str, key_id: str) -> ApiKey | None:
        found = self._unit.state.api_keys.get(key_id)
        if found is None or found.api_key.merchant_id != merchant_id:
            return None
        return found.api_key

    async def credentials(self, key_id: str) -> Credentials | None:
        return self._unit.state.api_keys.get(key_id)

    async def page(
        self, merchant_id: str, *, after: tuple[datetime, str] | None, limit: int
    ) -> list[ApiKey]:
        keys = [
            found.api_key
            for found in self._unit.state.api_keys.values()
            if found.api_key.merchant_id == merchant_id
            and (after is None or (found.api_key.create_time, found.api_key.id) < after)
        ]
        keys.sort(key=lambda key: (key.create_time, key.id), reverse=True)
        return keys[:limit]

    def rehash(self, key_id: str, secret_hash: SecretHash) -> None:
        state = self._unit.writing()
        found = state.api_keys.get(key_id)
        if found is not None:
            state.api_keys[key_id] = replace(found, secret_hash=secret_hash)

    def revoke(self, key_id: str, now: datetime) -> None:
        state = self._unit.writing()
        found = state.api_keys.get(key_id)
        if found is not None and found.api_key.active:
            state.api_keys[key_id] = replace(found, api_key=found.api_key.revoked_at(now))


class MemoryFailedLogins(_Repository):
    async def get(self, key_id: str) -> LoginFailures:
        record = self._unit.state.failed_logins.get(key_id)
        return LoginFailures() if record is None else record.failures

    async def lock(self, key_id: str) -> LoginFailures:
        if self._unit.mode is not Mode.LOCKED:
            raise RuntimeError("failed logins are counted on a LOCKED unit")
        state = self._unit.writing()
        record = state.failed_logins.setdefault(
            key_id, _FailureRecord(LoginFailures(), self._unit.clock())
        )
        return record.failures

    def save(self, key_id: str, failures: LoginFailures, now: datetime) -> None:
        state = self._unit.writing()
        if key_id in state.failed_logins:
            state.failed_logins[key_id] = _FailureRecord(_to_ms(failures), now)

    def forget_stale(self, touched_before: datetime, now: datetime) -> _Count:
        state = self._unit.writing()
        stale = [
            key_id
            for key_id, record in state.failed_logins.items()
            if record.update_time < touched_before
            and (record.failures.locked_until is None or record.failures.locked_until <= now)
        ]
        for key_id in stale:
            del state.failed_logins[key_id]
        return _Count(len(stale))


class MemoryTokens(_Repository):
    def add_issued(self, grant: TokenGrant) -> None:
        state = self._unit.writing()
        found = state.api_keys.get(grant.api_key_id)
        active = (
            found is not None
            and found.api_key.active
            and found.api_key.merchant_id == grant.merchant_id
        )
        self._unit.expect(active, "the API key was revoked")
        if active:
            if grant.token_id in state.issued_tokens:
                raise ValueError(f"token {grant.token_id} exists already")
            state.issued_tokens[grant.token_id] = grant

    async def issued(self, merchant_id: str, token_id: str) -> TokenGrant | None:
        grant = self._unit.state.issued_tokens.get(token_id)
        return grant if grant is not None and grant.merchant_id == merchant_id else None

    async def live_unrevoked(self, api_key_id: str, now: datetime) -> list[TokenGrant]:
        state = self._unit.state
        live = [
            grant
            for grant in state.issued_tokens.values()
            if grant.api_key_id == api_key_id
            and grant.expire_time > now
            and grant.token_id not in state.revoked_tokens
        ]
        return sorted(live, key=lambda grant: grant.token_id)

    def revoke(self, grants: Sequence[TokenGrant], now: datetime) -> None:
        state = self._unit.writing()
        for grant in grants:
            state.revoked_tokens.setdefault(grant.token_id, grant.revoked_at(now))

    async def revocation(self, token_id: str) -> RevokedToken | None:
        return self._unit.state.revoked_tokens.get(token_id)

    async def revoked_since(
        self, revoked_after: datetime | None, now: datetime
    ) -> list[RevokedToken]:
        found = [
            revoked
            for revoked in self._unit.state.revoked_tokens.values()
            if revoked.expire_time > now
            and (revoked_after is None or revoked.revoke_time > revoked_after)
        ]
        return sorted(found, key=lambda revoked: (revoked.revoke_time, revoked.token_id))

    def forget_expired(self, now: datetime) -> _Count:
        state = self._unit.writing()
        issued = [jti for jti, grant in state.issued_tokens.items() if grant.expire_time <= now]
        revoked = [jti for jti, token in state.revoked_tokens.items() if token.expire_time <= now]
        for jti in issued:
            del state.issued_tokens[jti]
        for jti in revoked:
            del state.revoked_tokens[jti]
        return _Count(len(issued) + len(revoked))


class MemorySigningKeys(_Repository):
    async def current_kid(self) -> str | None:
        return next(
            (
                kid
                for kid, row in self._unit.state.signing_keys.items()
                if row.key.status == SigningKeyStatus.CURRENT
            ),
            None,
        )

    def add_current(self, key: NewSigningKey, now: datetime) -> None:
        state = self._unit.writing()
        free = all(
            row.key.status != SigningKeyStatus.CURRENT for row in state.signing_keys.values()
        )
        self._unit.expect(free, "another signing key became current")
        if free:
            if key.kid in state.signing_keys:
                raise ValueError(f"signing key {key.kid} exists already")
            stored = StoredKey(
                kid=key.kid,
                status=SigningKeyStatus.CURRENT,
                public_jwk=dict(key.public_jwk),
                private_key_ciphertext=key.private_key_ciphertext,
                create_time=now,
                verify_until=None,
            )
            state.signing_keys[key.kid] = _SigningKeyRow(stored, key.master_key_version)

    def demote(self, kid: str, *, now: datetime, verify_until: datetime) -> None:
        state = self._unit.writing()
        row = state.signing_keys.get(kid)
        if row is not None:
            key = replace(row.key, status=SigningKeyStatus.PREVIOUS, verify_until=verify_until)
            state.signing_keys[kid] = replace(row, key=key, rotate_time=now)

    async def expired_previous(self, now: datetime) -> list[str]:
        return [
            kid
            for kid, row in self._unit.state.signing_keys.items()
            if row.key.status == SigningKeyStatus.PREVIOUS
            and row.key.verify_until is not None
            and row.key.verify_until <= now
        ]

    def retire(self, kids: Sequence[str]) -> None:
        state = self._unit.writing()
        for kid in kids:
            row = state.signing_keys.get(kid)
            if row is not None:
                key = replace(row.key, status=SigningKeyStatus.RETIRED, private_key_ciphertext=None)
                state.signing_keys[kid] = replace(row, key=key, master_key_version=None)

    async def published(self) -> list[StoredKey]:
        keys = [
            row.key
            for row in self._unit.state.signing_keys.values()
            if row.key.status in (SigningKeyStatus.CURRENT, SigningKeyStatus.PREVIOUS)
        ]
        keys.sort(key=lambda key: key.create_time, reverse=True)
        keys.sort(key=lambda key: key.status != SigningKeyStatus.CURRENT)
        return keys


class MemoryIdempotencyKeys(_Repository):
    async def claim(self, request: IdempotentRequest, response: bytes) -> PriorRequest | None:
        if request.key is None:
            return None
        state = self._unit.writing()
        key = (request.scope, request.operation, request.key)
        stored = state.idempotency_keys.get(key)
        if stored is not None:
            return PriorRequest(stored.fingerprint, stored.response)
        state.idempotency_keys[key] = _StoredRequest(
            request.fingerprint, response, self._unit.clock()
        )
        return None

    def forget_before(self, cutoff: datetime) -> _Count:
        state = self._unit.writing()
        old = [key for key, stored in state.idempotency_keys.items() if stored.create_time < cutoff]
        for key in old:
            del state.idempotency_keys[key]
        return _Count(len(old))


def _to_ms(failures: LoginFailures) -> LoginFailures:
    # Stored as epoch milliseconds in PostgreSQL: the same precision here.
    recent = tuple(t.replace(microsecond=t.microsecond // 1000 * 1000) for t in failures.recent)
    return replace(failures, recent=recent)
