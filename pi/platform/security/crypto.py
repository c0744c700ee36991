"""Symmetric cryptography from the master keys (`PI_MASTER_KEYS`).

- `MasterKeys.encrypt/decrypt`: AES-256-GCM for column values that must be read back.
  The ciphertext carries the key version, so keys rotate by adding a higher version:
  the highest version encrypts, every version still decrypts.
- `MasterKeys.derive_key(purpose)`: an independent 32-byte key per purpose (HKDF-SHA256)
  for HMACs such as page tokens and card fingerprints.
- `hash_secret` / `verify_secret` / `constant_time_equal` for high-entropy credentials
  (API secrets, bearer tokens): a SHA-256 digest is enough because the secrets are
  random, and every comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Mapping
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_FORMAT = 1
_HEADER = struct.Struct(">BI")  # format byte, key version
_NONCE_BYTES = 12
_HKDF_SALT = b"pi-platform/hkdf/v1"


class DecryptionError(Exception):
    """A ciphertext is corrupt, was tampered with, or uses an unknown key version."""


class MasterKeys:
    """The versioned master keys; build once in the composition root from its settings."""

    def __init__(self, keys: Mapping[int, bytes]) -> None:
        if not keys:
            raise ValueError("at least one master key is required")
        for version, key in keys.items():
            if len(key) != 32:
                raise ValueError(f"master key version {version} must be 32 bytes")
        self._keys = MappingProxyType(dict(keys))
        self._current_version = max(self._keys)
        self._aead = {version: AESGCM(key) for version, key in self._keys.items()}
        self._derived: dict[tuple[str, int], bytes] = {}

    @property
    def current_version(self) -> int:
        return self._current_version

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._keys))

    def __repr__(self) -> str:
        return f"MasterKeys(versions={self.versions})"

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt with the current key. Bind `aad` to the value's context (e.g. row id)."""
        version = self._current_version
        nonce = os.urandom(_NONCE_BYTES)
        header = _HEADER.pack(_FORMAT, version)
        sealed = self._aead[version].encrypt(nonce, plaintext, header + aad)
        return header + nonce + sealed

    def decrypt(self, ciphertext: bytes, aad: bytes = b"") -> bytes:
        """Decrypt a value from `encrypt` with the same `aad`; raise `DecryptionError`."""
        if len(ciphertext) < _HEADER.size + _NONCE_BYTES + 16:
            raise DecryptionError("ciphertext is too short")
        fmt, version = _HEADER.unpack_from(ciphertext)
        if fmt != _FORMAT:
            raise DecryptionError(f"unknown ciphertext format {fmt}")
        aead = self._aead.get(version)
        if aead is None:
            raise DecryptionError(f"unknown master key version {version}")
        header = ciphertext[: _HEADER.size]
        nonce = ciphertext[_HEADER.size : _HEADER.size + _NONCE_BYTES]
        try:
            return aead.decrypt(nonce, ciphertext[_HEADER.size + _NONCE_BYTES :], header + aad)
        except InvalidTag:
            raise DecryptionError("ciphertext failed authentication") from None

    def derive_key(self, purpose: str, *, version: int | None = None) -> bytes:
        """A 32-byte key for one purpose (e.g. "page-token"), derived with HKDF-SHA256.

        `version` defaults to the current master key. A purpose whose outputs are
        compared across rotations (a stored fingerprint) should pin `version`.
        """
        version = self._current_version if version is None else version
        cached = self._derived.get((purpose, version))
        if cached is not None:
            return cached
        master = self._keys.get(version)
        if master is None:
            raise KeyError(f"unknown master key version {version}")
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=_HKDF_SALT,
            info=purpose.encode("utf-8"),
        ).derive(master)
        self._derived[(purpose, version)] = derived
        return derived


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def hash_secret(secret: str | bytes) -> str:
    """Hex SHA-256 of a random credential, for storage; compare with `verify_secret`."""
    return hashlib.sha256(_as_bytes(secret)).hexdigest()


def verify_secret(secret: str | bytes, stored_hash: str) -> bool:
    return constant_time_equal(hash_secret(secret), stored_hash)


def constant_time_equal(a: str | bytes, b: str | bytes) -> bool:
    """Compare two credentials without leaking where they differ."""
    return hmac.compare_digest(_as_bytes(a), _as_bytes(b))


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value
