"""Auth domain rules: identifier and secret formats, the lockout rule, token claims.

Standard library only (plus the platform's standard-library error and id modules), so
every rule here is testable without a database, gRPC or a clock.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pi.platform.kernel.errors import InvalidArgument
from pi.platform.kernel.ids import is_valid_id, new_id

MERCHANT_PREFIX = "mer"
API_KEY_PREFIX = "key"
TOKEN_PREFIX = "tok"
SECRET_PREFIX = "sk_"

#: 32 random bytes → 43 url-safe base64 characters: 256 bits, far beyond guessing, which
#: is why a keyed hash (and not a slow password hash) is the right way to store them.
_SECRET_BYTES = 32
SECRET_LENGTH = len(SECRET_PREFIX) + 43
#: Longest secret IssueToken looks at; anything longer is rejected before any hashing.
MAX_SECRET_INPUT = 256

#: Display names are checked with the platform's `printable_text` rule (no control or
#: invisible formatting characters, not blank, no surrounding whitespace), up to this.
MAX_DISPLAY_NAME = 200
#: Upper bound for an access token's lifetime (DESIGN.md: short-lived, ≤ 15 minutes).
MAX_TOKEN_TTL = timedelta(minutes=15)


def new_merchant_id() -> str:
    return new_id(MERCHANT_PREFIX)


def new_api_key_id() -> str:
    return new_id(API_KEY_PREFIX)


def new_token_id() -> str:
    return new_id(TOKEN_PREFIX)


def new_api_secret() -> str:
    """A fresh API secret, `sk_` followed by 43 url-safe characters. Shown once."""
    return SECRET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def is_api_key_id(value: str) -> bool:
    return is_valid_id(value, API_KEY_PREFIX)


def is_token_id(value: str) -> bool:
    return is_valid_id(value, TOKEN_PREFIX)


def is_merchant_id(value: str) -> bool:
    return is_valid_id(value, MERCHANT_PREFIX)


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Merchant:
    id: str
    display_name: str
    create_time: datetime


@dataclass(frozen=True)
class ApiKey:
    """An API key as merchants see it; the secret's hash never leaves the store."""

    id: str
    merchant_id: str
    display_name: str
    create_time: datetime
    revoke_time: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoke_time is None


@dataclass(frozen=True)
class NewApiKey:
    """A key just created, with its secret: the only time the secret exists in clear."""

    api_key: ApiKey
    secret: str


@dataclass(frozen=True)
class MerchantRegistration:
    """What CreateMerchant returns: the merchant, its first key and that key's secret."""

    merchant: Merchant
    api_key: ApiKey
    secret: str


@dataclass(frozen=True)
class RevokedToken:
    token_id: str
    expire_time: datetime
    revoke_time: datetime


@dataclass(frozen=True)
class IssuedToken:
    """A signed access token and the grant it carries."""

    access_token: str
    grant: TokenGrant


# -- input rules -------------------------------------------------------------------------


def check_id(value: str, *, field_path: str, kind: str, valid: bool) -> None:
    """Empty or malformed identifiers are INVALID_ARGUMENT; well-formed unknown ones are
    reported by the caller as NOT_FOUND (or INVALID_CREDENTIALS for IssueToken)."""
    if not value:
        raise InvalidArgument.field(field_path, "is required")
    if not valid:
        raise InvalidArgument.field(field_path, f"is not a valid {kind} identifier")


# -- lockout (PCI DSS 8.3.4) ---------------------------------------------------------------


@dataclass(frozen=True)
class LoginFailures:
    """Failed secrets recorded for one key-id string (whether or not that key exists).

    `recent` holds the times of the latest failures, oldest first, at most as many as the
    policy's threshold, which makes the window an exact sliding window in bounded space.
    """

    recent: tuple[datetime, ...] = ()
    locked_until: datetime | None = None


@dataclass(frozen=True)
class LockoutPolicy:
    """`max_failures` failed secrets within `window` lock the key id for `duration`.

    While locked every attempt fails, even with the right secret, and does not extend the
    lock. A success does not clear earlier failures: they age out of the window, so an
    attacker cannot reset the count by timing guesses between a client's good calls.
    """

    max_failures: int = 10
    window: timedelta = field(default=timedelta(minutes=30))
    duration: timedelta = field(default=timedelta(minutes=30))

    def is_locked(self, state: LoginFailures, now: datetime) -> bool:
        return state.locked_until is not None and now < state.locked_until

    def after_failure(self, state: LoginFailures, now: datetime) -> LoginFailures:
        """The state after one more failed attempt at `now` (only while not locked)."""
        if self.is_locked(state, now):
            return state
        horizon = now - self.window
        recent = (*(t for t in state.recent if t > horizon), now)[-self.max_failures :]
        if len(recent) >= self.max_failures:
            return LoginFailures(recent=(), locked_until=now + self.duration)
        return LoginFailures(recent=recent, locked_until=None)

    def is_stale(self, state: LoginFailures, now: datetime) -> bool:
        """Whether the record no longer affects any answer and can be deleted."""
        if self.is_locked(state, now):
            return False
        return all(t <= now - self.window for t in state.recent)


# -- access tokens ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenGrant:
    """What an access token asserts: who, through which key, for how long."""

    token_id: str
    merchant_id: str
    api_key_id: str
    issue_time: datetime
    expire_time: datetime


def grant_token(*, merchant_id: str, api_key_id: str, now: datetime, ttl: timedelta) -> TokenGrant:
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
    )


def token_claims(grant: TokenGrant, *, issuer: str, audience: str) -> dict[str, object]:
    """The JWT claims of a grant (RFC 7519 names; `key` is the API key id)."""
    return {
        "iss": issuer,
        "aud": audience,
        "sub": grant.merchant_id,
        "iat": int(grant.issue_time.timestamp()),
        "exp": int(grant.expire_time.timestamp()),
        "jti": grant.token_id,
        "key": grant.api_key_id,
    }


# -- signing-key lifecycle ---------------------------------------------------------------


class SigningKeyStatus:
    """Lifecycle of a signing key: current signs; previous only verifies; retired is gone."""

    CURRENT = "current"
    PREVIOUS = "previous"
    RETIRED = "retired"


def verify_until(rotated_at: datetime, *, max_ttl: timedelta, signer_lag: timedelta) -> datetime:
    """How long a key that stopped being current must stay in the JWKS.

    Running servers may keep signing with the old key for `signer_lag` after the rotation
    (until the new key is published everywhere and their rings notice), and such a token
    lives `max_ttl`; one more minute covers clock skew between hosts.
    """
    return rotated_at + signer_lag + max_ttl + timedelta(minutes=1)
