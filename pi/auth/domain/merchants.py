"""Merchants and their API keys: identifiers, secrets, records and input rules."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import datetime

from pi.platform.kernel.errors import InvalidArgument
from pi.platform.kernel.ids import is_valid_id, new_id
from pi.platform.kernel.scopes import FULL

MERCHANT_PREFIX = "mer"
API_KEY_PREFIX = "key"
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
#: The name of the key CreateMerchant makes with the merchant.
FIRST_KEY_NAME = "Default"


def new_merchant_id() -> str:
    return new_id(MERCHANT_PREFIX)


def new_api_key_id() -> str:
    return new_id(API_KEY_PREFIX)


def new_api_secret() -> str:
    """A fresh API secret, `sk_` followed by 43 url-safe characters. Shown once."""
    return SECRET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def is_api_key_id(value: str) -> bool:
    return is_valid_id(value, API_KEY_PREFIX)


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
    """An API key as merchants see it; the secret's hash never leaves the store.

    `scopes` is what its tokens may do (`pi.platform.kernel.scopes`).
    """

    id: str
    merchant_id: str
    display_name: str
    create_time: datetime
    revoke_time: datetime | None = None
    scopes: frozenset[str] = FULL

    @property
    def active(self) -> bool:
        return self.revoke_time is None

    def revoked_at(self, now: datetime) -> ApiKey:
        return replace(self, revoke_time=now)


@dataclass(frozen=True)
class SecretHash:
    """How an API secret is stored: a keyed hash and the master-key version of its key
    (pinned per key, so adding a master key does not invalidate existing secrets)."""

    digest: bytes
    version: int


@dataclass(frozen=True)
class Credentials:
    """An API key with the hash of its secret: what IssueToken checks a secret against."""

    api_key: ApiKey
    secret_hash: SecretHash


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


# -- input rules -------------------------------------------------------------------------


def check_id(value: str, *, field_path: str, kind: str, valid: bool) -> None:
    """Empty or malformed identifiers are INVALID_ARGUMENT; well-formed unknown ones are
    reported by the caller as NOT_FOUND (or INVALID_CREDENTIALS for IssueToken)."""
    if not value:
        raise InvalidArgument.field(field_path, "is required")
    if not valid:
        raise InvalidArgument.field(field_path, f"is not a valid {kind} identifier")


def check_secret_input(secret: str) -> None:
    """A presented API secret must be there and not absurdly long (checked before any
    hashing)."""
    if not secret:
        raise InvalidArgument.field("api_key_secret", "is required")
    if len(secret) > MAX_SECRET_INPUT:
        raise InvalidArgument.field(
            "api_key_secret", f"must be at most {MAX_SECRET_INPUT} characters"
        )
