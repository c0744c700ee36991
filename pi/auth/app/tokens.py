"""Access tokens: IssueToken (API key id + secret → signed JWT) and RevokeToken.

- IssueToken answers every failure (unknown key id, wrong secret, revoked key, locked
  key id) with the same UNAUTHENTICATED / INVALID_CREDENTIALS and message, does the same
  hash work for unknown ids, and counts failures per key-id *string*, so neither answers
  nor lockouts reveal whether a key id exists (PCI DSS 8.3.4).
- A successful IssueToken moves the secret's hash to the newest master key, so that old
  master keys can eventually be removed from PI_MASTER_KEYS.
- Every issued token is recorded by jti (never the token): RevokeToken checks ownership
  there and RevokeApiKey finds a key's live tokens there.
- Identifiers: an empty or malformed id (`key_…`, `tok_…` shape) is INVALID_ARGUMENT with
  a field violation: the shape is public, so saying so reveals nothing. A well-formed id
  the caller cannot see is NOT_FOUND, whether it belongs to another merchant or to nobody
  (for IssueToken: INVALID_CREDENTIALS).
- Revocations are committed first, then announced (`RevocationSink`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pi.auth.app.ports import (
    Clock,
    RevocationSink,
    SecretHasher,
    TokenSigner,
    UnitOfWork,
    UnitsOfWork,
)
from pi.auth.domain import merchants, tokens
from pi.auth.domain.lockout import LockoutPolicy
from pi.auth.domain.tokens import IssuedToken, RevokedToken
from pi.platform.kernel.errors import NotFound, Unauthenticated
from pi.platform.kernel.principal import Principal, require_merchant
from pi.platform.kernel.units import Mode, optimistically

INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
_INVALID_CREDENTIALS_MESSAGE = "The API key id or secret is not valid."


@dataclass(frozen=True)
class _Refused:
    locked: bool


class IssueToken:
    def __init__(
        self,
        units: UnitsOfWork,
        hasher: SecretHasher,
        signer: TokenSigner,
        *,
        issuer: str,
        audience: str,
        token_ttl: timedelta,
        lockout: LockoutPolicy,
        clock: Clock,
    ) -> None:
        self._units = units
        self._hasher = hasher
        self._signer = signer
        self._issuer = issuer
        self._audience = audience
        self._token_ttl = token_ttl
        self._lockout = lockout
        self._clock = clock

    async def __call__(self, api_key_id: str, secret: str) -> IssuedToken:
        """Exchange an API key id and secret for a signed access token."""
        merchants.check_id(
            api_key_id,
            field_path="api_key_id",
            kind="API key",
            valid=merchants.is_api_key_id(api_key_id),
        )
        merchants.check_secret_input(secret)
        now = self._clock()

        async def exchange(unit: UnitOfWork) -> IssuedToken | _Refused:
            async with unit:
                return await self._exchange(unit, api_key_id, secret, now)

        outcome = await optimistically(self._units, exchange)
        if isinstance(outcome, IssuedToken):
            return outcome
        if not outcome.locked:
            await self._count_failure(api_key_id, now)
        raise Unauthenticated(_INVALID_CREDENTIALS_MESSAGE, reason=INVALID_CREDENTIALS)

    async def _exchange(
        self, unit: UnitOfWork, api_key_id: str, secret: str, now: datetime
    ) -> IssuedToken | _Refused:
        failures = await unit.failed_logins.get(api_key_id)
        found = await unit.api_keys.credentials(api_key_id)
        secret_ok = self._hasher.matches(secret, None if found is None else found.secret_hash)
        locked = self._lockout.is_locked(failures, now)
        if found is None or not secret_ok or not found.api_key.active or locked:
            return _Refused(locked)
        key = found.api_key
        if found.secret_hash.version != self._hasher.current_version:
            unit.api_keys.rehash(key.id, self._hasher.hash(secret))
        grant = tokens.grant_token(
            merchant_id=key.merchant_id, api_key_id=key.id, now=now, ttl=self._token_ttl
        )
        unit.tokens.add_issued(grant)
        token = self._signer.sign(
            tokens.token_claims(grant, issuer=self._issuer, audience=self._audience)
        )
        await unit.commit()
        return IssuedToken(token, grant)

    async def _count_failure(self, api_key_id: str, now: datetime) -> None:
        # Under the record's lock: concurrent failures for one id all count.
        async with self._units(Mode.LOCKED) as unit:
            failures = await unit.failed_logins.lock(api_key_id)
            unit.failed_logins.save(api_key_id, self._lockout.after_failure(failures, now), now)
            await unit.commit()


class RevokeToken:
    def __init__(self, units: UnitsOfWork, revocations: RevocationSink, clock: Clock) -> None:
        self._units = units
        self._revocations = revocations
        self._clock = clock

    async def __call__(self, principal: Principal, token_id: str) -> RevokedToken:
        """Revoke one of the caller's tokens by `jti`; anyone else's is NOT_FOUND.

        Idempotent: revoking a revoked token returns its first revocation.
        """
        merchant_id = require_merchant(principal)
        merchants.check_id(
            token_id, field_path="token_id", kind="token", valid=tokens.is_token_id(token_id)
        )
        now = self._clock()
        async with self._units(Mode.LOCKED) as unit:
            grant = await unit.tokens.issued(merchant_id, token_id)
            if grant is None:
                raise NotFound("No such token.", reason="TOKEN_NOT_FOUND")
            unit.tokens.revoke([grant], now)
            revoked = await unit.tokens.revocation(token_id)
            if revoked is None:
                raise RuntimeError(f"the revocation of {token_id} was not recorded")
            await unit.commit()
        await self._revocations.revoked([revoked])
        return revoked
