"""Access tokens: IssueToken (API key id + secret → signed JWT) and RevokeToken.

- IssueToken answers every failure (unknown key id, wrong secret, revoked key) with the
  same UNAUTHENTICATED / INVALID_CREDENTIALS and message, and does the same hash work
  for unknown ids, so the answer does not reveal whether a key id exists.
- Failures are throttled per client address and per key with progressive delays
  (`pi.auth.domain.throttle`, PCI DSS 8.3.4): a delayed attempt is RESOURCE_EXHAUSTED,
  reason LOGIN_THROTTLED, with the wait in RetryInfo, and is not counted. A key's delay
  applies only to clients that failed recently: the right secret from anyone else works.
  Only failures for keys that exist are written to the database (a row per key at
  most); an address's failures live in the cache for the throttle window.
- The token carries the key's scopes, or the subset asked for (never more).
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

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pi.auth.app.ports import (
    AddressFailures,
    Clock,
    RevocationSink,
    SecretHasher,
    TokenSigner,
    UnitOfWork,
    UnitsOfWork,
)
from pi.auth.domain import merchants, tokens
from pi.auth.domain.throttle import LoginFailures, ThrottlePolicy
from pi.auth.domain.tokens import IssuedToken, RevokedToken
from pi.platform.kernel import scopes
from pi.platform.kernel.errors import NotFound, PermissionDenied, ResourceExhausted, Unauthenticated
from pi.platform.kernel.principal import Principal, require_merchant
from pi.platform.kernel.units import Mode, optimistically

log = logging.getLogger(__name__)

INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
LOGIN_THROTTLED = "LOGIN_THROTTLED"
_INVALID_CREDENTIALS_MESSAGE = "The API key id or secret is not valid."


@dataclass(frozen=True)
class _Refused:
    key_exists: bool
    throttled_until: datetime | None = None


@dataclass(frozen=True)
class Throttles:
    """The two throttle policies and where address failures are kept."""

    addresses: AddressFailures
    per_address: ThrottlePolicy
    per_key: ThrottlePolicy


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
        throttles: Throttles,
        clock: Clock,
    ) -> None:
        self._units = units
        self._hasher = hasher
        self._signer = signer
        self._issuer = issuer
        self._audience = audience
        self._token_ttl = token_ttl
        self._throttles = throttles
        self._clock = clock

    async def __call__(
        self, api_key_id: str, secret: str, *, client: str = "", scope_names: Sequence[str] = ()
    ) -> IssuedToken:
        """Exchange an API key id and secret for a signed access token; `client` is the
        caller's address (the throttle's subject)."""
        merchants.check_id(
            api_key_id,
            field_path="api_key_id",
            kind="API key",
            valid=merchants.is_api_key_id(api_key_id),
        )
        merchants.check_secret_input(secret)
        requested = scopes.parse(scope_names, field="scopes")
        now = self._clock()
        address = await self._address_failures(client)
        policy = self._throttles.per_address
        until = None if address is None else address.locked_until
        if address is not None and until is not None and policy.is_locked(address, now):
            raise _throttled(until - now)
        failing = address is None or policy.is_failing(address, now)

        async def exchange(unit: UnitOfWork) -> IssuedToken | _Refused:
            async with unit:
                return await self._exchange(unit, api_key_id, secret, requested, failing, now)

        outcome = await optimistically(self._units, exchange)
        if isinstance(outcome, IssuedToken):
            return outcome
        if outcome.throttled_until is not None:
            raise _throttled(outcome.throttled_until - now)
        await self._count_failure(client, address, api_key_id if outcome.key_exists else None, now)
        raise Unauthenticated(_INVALID_CREDENTIALS_MESSAGE, reason=INVALID_CREDENTIALS)

    async def _exchange(
        self,
        unit: UnitOfWork,
        api_key_id: str,
        secret: str,
        requested: frozenset[str],
        failing: bool,
        now: datetime,
    ) -> IssuedToken | _Refused:
        failures = await unit.failed_logins.get(api_key_id)
        found = await unit.api_keys.credentials(api_key_id)
        secret_ok = self._hasher.matches(secret, None if found is None else found.secret_hash)
        if failing and self._throttles.per_key.is_locked(failures, now):
            return _Refused(True, failures.locked_until)
        if found is None or not secret_ok or not found.api_key.active:
            return _Refused(found is not None)
        key = found.api_key
        scopes.require_within(
            requested, key.scopes, "A token may only carry scopes its API key holds."
        )
        if found.secret_hash.version != self._hasher.current_version:
            unit.api_keys.rehash(key.id, self._hasher.hash(secret))
        grant = tokens.grant_token(
            merchant_id=key.merchant_id,
            api_key_id=key.id,
            now=now,
            ttl=self._token_ttl,
            scopes=requested or key.scopes,
        )
        unit.tokens.add_issued(grant)
        token = self._signer.sign(
            tokens.token_claims(grant, issuer=self._issuer, audience=self._audience)
        )
        await unit.commit()
        return IssuedToken(token, grant)

    async def _address_failures(self, client: str) -> LoginFailures | None:
        """The address's failures; None if they cannot be read (the cache is down), in
        which case the client is taken to be failing: keys stay protected."""
        try:
            return await self._throttles.addresses.get(client or "unknown")
        except Exception as error:
            log.warning("address throttle unavailable (%s)", type(error).__name__)
            return None

    async def _count_failure(
        self, client: str, address: LoginFailures | None, key_id: str | None, now: datetime
    ) -> None:
        if address is not None:
            try:
                await self._throttles.addresses.save(
                    client or "unknown", self._throttles.per_address.after_failure(address, now)
                )
            except Exception as error:
                log.warning("address throttle unavailable (%s)", type(error).__name__)
        if key_id is None:
            return
        # Under the record's lock: concurrent failures for one key all count.
        async with self._units(Mode.LOCKED) as unit:
            failures = await unit.failed_logins.lock(key_id)
            after = self._throttles.per_key.after_failure(failures, now)
            unit.failed_logins.save(key_id, after, now)
            await unit.commit()


def _throttled(wait: timedelta) -> ResourceExhausted:
    seconds = max(wait.total_seconds(), 0.001)
    return ResourceExhausted(
        "Too many failed attempts: retry after the delay in RetryInfo.",
        reason=LOGIN_THROTTLED,
        metadata={"retry_after_seconds": str(max(1, math.ceil(seconds)))},
        retry_after=seconds,
    )


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
        if token_id != principal.token_id and not principal.holds(scopes.API_KEYS_WRITE):
            raise PermissionDenied(
                "Revoking another token needs the 'api_keys:write' scope; any token may "
                "revoke itself.",
                reason="SCOPE_MISSING",
                metadata={"required_scope": scopes.API_KEYS_WRITE},
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
