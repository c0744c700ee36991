"""API secrets stored as HMAC-SHA256 under keys derived from the master keys.

The key is `derive_key("auth/api-key-secret", version=v)`, with `v` pinned per stored
hash so adding a master key does not invalidate existing secrets; comparisons are
constant-time. A keyed hash, not a slow password hash: the secrets are 256 random bits.
"""

from __future__ import annotations

import logging

from pi.auth.domain.merchants import SecretHash
from pi.platform.security.crypto import MasterKeys, constant_time_equal, hmac_sha256

_log = logging.getLogger(__name__)

SECRET_HASH_PURPOSE = "auth/api-key-secret"


class HmacSecretHasher:
    """The service's `SecretHasher`."""

    def __init__(self, master_keys: MasterKeys) -> None:
        self._master_keys = master_keys
        # Compared against when the key id is unknown, so that path hashes too.
        self._dummy_hash = hmac_sha256(self._key(master_keys.current_version), b"")

    @property
    def current_version(self) -> int:
        return self._master_keys.current_version

    def hash(self, secret: str) -> SecretHash:
        version = self._master_keys.current_version
        return SecretHash(hmac_sha256(self._key(version), secret.encode("utf-8")), version)

    def matches(self, secret: str, stored: SecretHash | None) -> bool:
        expected, version = self._dummy_hash, self._master_keys.current_version
        if stored is not None:
            expected, version = stored.digest, stored.version
        try:
            key = self._key(version)
        except KeyError:
            _log.error(
                "API key hashed with master key version %d, which is not configured", version
            )
            key, expected = self._key(self._master_keys.current_version), self._dummy_hash
            stored = None
        presented = hmac_sha256(key, secret.encode("utf-8"))
        return constant_time_equal(presented, expected) and stored is not None

    def _key(self, version: int) -> bytes:
        return self._master_keys.derive_key(SECRET_HASH_PURPOSE, version=version)
