"""The signing-key lifecycle: statuses, how long a rotated key keeps verifying, and the
records a key is stored as (its private half only ever as ciphertext)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


class SigningKeyStatus:
    """Lifecycle of a signing key: current signs; previous only verifies; retired is gone."""

    CURRENT = "current"
    PREVIOUS = "previous"
    RETIRED = "retired"


#: The statuses of the keys a running service loads (signs with, publishes, verifies).
PUBLISHED = (SigningKeyStatus.CURRENT, SigningKeyStatus.PREVIOUS)


def verify_until(rotated_at: datetime, *, max_ttl: timedelta, signer_lag: timedelta) -> datetime:
    """How long a key that stopped being current must stay in the JWKS.

    Running servers may keep signing with the old key for `signer_lag` after the rotation
    (until the new key is published everywhere and their rings notice), and such a token
    lives `max_ttl`; one more minute covers clock skew between hosts.
    """
    return rotated_at + signer_lag + max_ttl + timedelta(minutes=1)


@dataclass(frozen=True)
class NewSigningKey:
    """A freshly generated key, its private half already encrypted for storage."""

    kid: str
    public_jwk: dict[str, str]
    public_key_pem: str
    private_key_ciphertext: bytes
    master_key_version: int


@dataclass(frozen=True)
class StoredKey:
    """A signing key as stored (private half still encrypted; None once retired)."""

    kid: str
    status: str
    public_jwk: dict[str, str]
    private_key_ciphertext: bytes | None
    create_time: datetime
    verify_until: datetime | None
