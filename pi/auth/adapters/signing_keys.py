"""ES256 signing keys: generation, encryption at rest, and the in-memory key ring.

Keys live in the `signing_keys` table (their lifecycle: `pi.auth.app.signing_keys`). The
private half is stored only as AES-256-GCM ciphertext under the platform master keys (the
master-key version is kept beside it), the public half as a JWK. Exactly one key is
`current`; keys rotated out become `previous` and stay in the JWKS until every token they
may have signed has expired (`verify_until`), then `retired`, at which point their private
half is erased.

`KeyRing` is the running service's in-memory view (the app's `TokenSigner` and
`PublicKeys`): it signs, serves the JWKS and resolves `kid`s for local token verification
without I/O on the hot path, refreshing from the store periodically and (rate-limited) on
an unknown `kid`.

A new current key is published before it signs: the ring keeps signing with the newest
previous key until the current one is `activation_delay` old, by which time every
replica's ring (refreshed every `refresh_interval`) already serves it in its JWKS. So a
verifier that fetches the JWKS on an unknown `kid` always finds the key, whichever
replica it asks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pi.auth.domain.signing_keys import NewSigningKey, SigningKeyStatus, StoredKey
from pi.platform.security.tokens import jwk_from_public_key, public_key_from_jwk

_log = logging.getLogger(__name__)

ALGORITHM = "ES256"


class Cipher(Protocol):
    """Versioned authenticated encryption (the platform's `MasterKeys`)."""

    @property
    def current_version(self) -> int: ...

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes: ...

    def decrypt(self, ciphertext: bytes, aad: bytes = b"") -> bytes: ...


def thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256), used as the `kid`: derived, so never reused."""
    jwk = jwk_from_public_key(public_key, "")
    canonical = json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]},
        separators=(",", ":"),
        sort_keys=True,
    )
    digest = hashlib.sha256(canonical.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def private_key_aad(kid: str) -> bytes:
    """Binds a stored private key to its row: ciphertext copied to another kid won't open."""
    return b"pi.auth.signing_key:" + kid.encode("ascii")


class EcKeyGenerator:
    """The app's `SigningKeyGenerator`: P-256 keys sealed under `cipher`."""

    def __init__(self, cipher: Cipher) -> None:
        self._cipher = cipher

    def generate(self) -> NewSigningKey:
        return generate_signing_key(self._cipher)


def generate_signing_key(cipher: Cipher) -> NewSigningKey:
    private_key = ec.generate_private_key(ec.SECP256R1())
    public_key = private_key.public_key()
    kid = thumbprint(public_key)
    der = private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
    return NewSigningKey(
        kid=kid,
        public_jwk=jwk_from_public_key(public_key, kid),
        public_key_pem=pem,
        private_key_ciphertext=cipher.encrypt(der, private_key_aad(kid)),
        master_key_version=cipher.current_version,
    )


def decrypt_private_key(cipher: Cipher, kid: str, ciphertext: bytes) -> ec.EllipticCurvePrivateKey:
    der = cipher.decrypt(ciphertext, private_key_aad(kid))
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"signing key {kid} is not an EC key")
    return key


# -- the running service's view ---------------------------------------------------------


@dataclass(frozen=True)
class _Verifier:
    jwk: dict[str, str]
    key: ec.EllipticCurvePublicKey
    verify_until: datetime | None

    def live(self, now: datetime) -> bool:
        return self.verify_until is None or now < self.verify_until


@dataclass(frozen=True)
class _Snapshot:
    current_kid: str
    signer_kid: str
    signer: ec.EllipticCurvePrivateKey
    verifiers: dict[str, _Verifier]


KeyLoader = Callable[[], Awaitable[list[StoredKey]]]


class KeyRing:
    """In-memory signing and verification keys, refreshed from the store.

    A platform `KeySource`: `cached_key(kid)` never does I/O; `public_key(kid)` reloads
    once on an unknown kid, at most every `unknown_kid_interval`, so forged kids cannot
    hammer the database.
    """

    def __init__(
        self,
        load: KeyLoader,
        cipher: Cipher,
        *,
        clock: Callable[[], datetime],
        refresh_interval: timedelta = timedelta(seconds=30),
        activation_delay: timedelta | None = None,
        unknown_kid_interval: timedelta = timedelta(seconds=5),
    ) -> None:
        self._load = load
        self._cipher = cipher
        self._clock = clock
        self.refresh_interval = refresh_interval
        self.activation_delay = (
            refresh_interval + timedelta(seconds=5)
            if activation_delay is None
            else activation_delay
        )
        self._unknown_kid_interval = unknown_kid_interval
        self._snapshot: _Snapshot | None = None
        self._last_refresh: datetime | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            await self._refresh_locked()

    async def _refresh_locked(self) -> None:
        rows = await self._load()
        now = self._clock()
        current = next((r for r in rows if r.status == SigningKeyStatus.CURRENT), None)
        if current is None:
            raise RuntimeError("there is no current signing key")
        signer_row = current
        if now - current.create_time < self.activation_delay:
            # Still being published: keep signing with the key it replaced, if any.
            previous = [
                r
                for r in rows
                if r.status == SigningKeyStatus.PREVIOUS
                and r.private_key_ciphertext is not None
                and (r.verify_until is None or now < r.verify_until)
            ]
            if previous:
                signer_row = max(previous, key=lambda r: r.create_time)
        if signer_row.private_key_ciphertext is None:
            raise RuntimeError(f"signing key {signer_row.kid} has no private key")
        signer = decrypt_private_key(
            self._cipher, signer_row.kid, signer_row.private_key_ciphertext
        )
        verifiers = {
            r.kid: _Verifier(r.public_jwk, public_key_from_jwk(r.public_jwk), r.verify_until)
            for r in rows
        }
        self._snapshot = _Snapshot(current.kid, signer_row.kid, signer, verifiers)
        self._last_refresh = now

    def _require(self) -> _Snapshot:
        if self._snapshot is None:
            raise RuntimeError("KeyRing.refresh() has not run yet")
        return self._snapshot

    @property
    def signing_kid(self) -> str:
        return self._require().signer_kid

    def sign(self, claims: Mapping[str, Any]) -> str:
        snapshot = self._require()
        return jwt.encode(
            dict(claims),
            snapshot.signer,
            algorithm=ALGORITHM,
            headers={"kid": snapshot.signer_kid, "typ": "JWT"},
        )

    def jwks(self) -> list[dict[str, str]]:
        """The current key first, then previous keys that may still verify a live token."""
        snapshot = self._require()
        now = self._clock()
        keys = [snapshot.verifiers[snapshot.current_kid].jwk]
        keys.extend(
            verifier.jwk
            for kid, verifier in snapshot.verifiers.items()
            if kid != snapshot.current_kid and verifier.live(now)
        )
        return keys

    def cached_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        snapshot = self._snapshot
        if snapshot is None:
            return None
        verifier = snapshot.verifiers.get(kid)
        if verifier is None or not verifier.live(self._clock()):
            return None
        return verifier.key

    async def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        key = self.cached_key(kid)
        if key is not None:
            return key
        async with self._lock:
            now = self._clock()
            due = (
                self._last_refresh is None or now - self._last_refresh >= self._unknown_kid_interval
            )
            if due:
                try:
                    await self._refresh_locked()
                except Exception:  # verification fails closed; the refresher retries
                    _log.exception("reloading signing keys failed")
        return self.cached_key(kid)

    async def run_refresher(self) -> None:
        """Background task: pick up `rotate-keys` runs and activate published keys."""
        while True:
            await asyncio.sleep(self.refresh_interval.total_seconds())
            try:
                await self.refresh()
            except Exception:
                _log.exception("reloading signing keys failed")
