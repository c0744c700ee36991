"""Access tokens: what one grants, its JWT claims, and revocations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pi.platform.kernel import scopes as scope_names
from pi.platform.kernel.ids import is_valid_id, new_id

TOKEN_PREFIX = "tok"

#: Upper bound for an access token's lifetime (short-lived by design: ≤ 15 minutes).
MAX_TOKEN_TTL = timedelta(minutes=15)


def new_token_id() -> str:
    return new_id(TOKEN_PREFIX)


def is_token_id(value: str) -> bool:
    return is_valid_id(value, TOKEN_PREFIX)


@dataclass(frozen=True)
class TokenGrant:
    """What an access token asserts: who, through which key, for how long."""

    token_id: str
    merchant_id: str
    api_key_id: str
    issue_time: datetime
    expire_time: datetime
    scopes: frozenset[str] = scope_names.FULL

    def revoked_at(self, now: datetime) -> RevokedToken:
        return RevokedToken(self.token_id, self.expire_time, now)


@dataclass(frozen=True)
class IssuedToken:
    """A signed access token and the grant it carries."""

    access_token: str
    grant: TokenGrant


@dataclass(frozen=True)
class RevokedToken:
    token_id: str
    expire_time: datetime
    revoke_time: datetime


def grant_token(
    *,
    merchant_id: str,
    api_key_id: str,
    now: datetime,
    ttl: timedelta,
    scopes: frozenset[str] = scope_names.FULL,
) -> TokenGrant:
    """A new grant; the lifetime is capped at 15 minutes whatever the configuration says."""
    if ttl <= timedelta(0):
        raise ValueError("token lifetime must be positive")
    lifetime = min(ttl, MAX_TOKEN_TTL)
    issued = now.replace(microsecond=0)
    return TokenGrant(
        token_id=new_token_id(),
        merchant_id=merchant_id,
        api_key_id=api_key_id,
        issue_time=issued,
        expire_time=issued + lifetime,
        scopes=scopes,
    )


def token_claims(grant: TokenGrant, *, issuer: str, audience: str) -> dict[str, object]:
    """The JWT claims of a grant (RFC 7519 names; `key` is the API key id; `scope` is
    space-separated, as in RFC 8693)."""
    return {
        "iss": issuer,
        "aud": audience,
        "sub": grant.merchant_id,
        "iat": int(grant.issue_time.timestamp()),
        "exp": int(grant.expire_time.timestamp()),
        "jti": grant.token_id,
        "key": grant.api_key_id,
        "scope": scope_names.to_claim(grant.scopes),
    }
