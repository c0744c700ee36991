"""Signing keys without a database: encryption at rest, JWKS shape, activation, kid lookup."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from pi.auth.adapters.signing_keys import (
    KeyRing,
    decrypt_private_key,
    generate_signing_key,
    thumbprint,
)
from pi.auth.domain.signing_keys import SigningKeyStatus, StoredKey
from pi.platform.security.crypto import DecryptionError, MasterKeys
from pi.platform.security.tokens import public_key_from_jwk

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def master_keys() -> MasterKeys:
    return MasterKeys({1: secrets.token_bytes(32), 2: secrets.token_bytes(32)})


def _row(master_keys: MasterKeys, status: str, created: datetime, **kw: object) -> StoredKey:
    new = generate_signing_key(master_keys)
    return StoredKey(
        kid=new.kid,
        status=status,
        public_jwk=new.public_jwk,
        private_key_ciphertext=new.private_key_ciphertext,
        create_time=created,
        verify_until=kw.get("verify_until"),  # type: ignore[arg-type]
    )


def test_generated_key_is_encrypted_under_the_current_master_key(master_keys: MasterKeys) -> None:
    new = generate_signing_key(master_keys)
    assert new.master_key_version == 2
    assert b"PRIVATE KEY" not in new.private_key_ciphertext
    private = decrypt_private_key(master_keys, new.kid, new.private_key_ciphertext)
    assert thumbprint(private.public_key()) == new.kid
    assert new.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")


def test_ciphertext_is_bound_to_its_kid(master_keys: MasterKeys) -> None:
    first, second = generate_signing_key(master_keys), generate_signing_key(master_keys)
    with pytest.raises(DecryptionError):
        decrypt_private_key(master_keys, second.kid, first.private_key_ciphertext)


def test_jwk_is_a_p256_es256_signing_key(master_keys: MasterKeys) -> None:
    jwk = generate_signing_key(master_keys).public_jwk
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == ("EC", "P-256", "sig", "ES256")
    assert "d" not in jwk
    public_key_from_jwk(jwk)


async def test_ring_signs_with_the_current_key_and_publishes_it_first(
    master_keys: MasterKeys,
) -> None:
    clock = Clock()
    current = _row(master_keys, SigningKeyStatus.CURRENT, T0 - timedelta(days=1))

    async def load() -> list[StoredKey]:
        return [current]

    ring = KeyRing(load, master_keys, clock=clock)
    await ring.refresh()
    token = ring.sign({"sub": "mer_1"})
    assert jwt.get_unverified_header(token)["kid"] == current.kid
    assert jwt.decode(token, public_key_from_jwk(current.public_jwk), algorithms=["ES256"]) == {
        "sub": "mer_1"
    }
    assert [k["kid"] for k in ring.jwks()] == [current.kid]


async def test_new_key_is_published_before_it_signs(master_keys: MasterKeys) -> None:
    clock = Clock()
    old = _row(
        master_keys,
        SigningKeyStatus.PREVIOUS,
        T0 - timedelta(days=1),
        verify_until=T0 + timedelta(minutes=20),
    )
    new = _row(master_keys, SigningKeyStatus.CURRENT, T0)

    async def load() -> list[StoredKey]:
        return [new, old]

    ring = KeyRing(
        load,
        master_keys,
        clock=clock,
        refresh_interval=timedelta(seconds=30),
        activation_delay=timedelta(seconds=35),
    )
    await ring.refresh()
    assert [k["kid"] for k in ring.jwks()] == [new.kid, old.kid]
    assert ring.signing_kid == old.kid
    clock.now = T0 + timedelta(seconds=36)
    await ring.refresh()
    assert ring.signing_kid == new.kid


async def test_previous_key_leaves_the_jwks_after_verify_until(master_keys: MasterKeys) -> None:
    clock = Clock()
    old = _row(
        master_keys,
        SigningKeyStatus.PREVIOUS,
        T0 - timedelta(days=1),
        verify_until=T0 + timedelta(minutes=20),
    )
    new = _row(master_keys, SigningKeyStatus.CURRENT, T0 - timedelta(hours=1))

    async def load() -> list[StoredKey]:
        return [new, old]

    ring = KeyRing(load, master_keys, clock=clock)
    await ring.refresh()
    assert ring.cached_key(old.kid) is not None
    clock.now = T0 + timedelta(minutes=20)
    assert [k["kid"] for k in ring.jwks()] == [new.kid]
    assert ring.cached_key(old.kid) is None


async def test_unknown_kid_reloads_at_most_once_per_interval(master_keys: MasterKeys) -> None:
    clock = Clock()
    current = _row(master_keys, SigningKeyStatus.CURRENT, T0 - timedelta(days=1))
    loads = 0

    async def load() -> list[StoredKey]:
        nonlocal loads
        loads += 1
        return [current]

    ring = KeyRing(load, master_keys, clock=clock, unknown_kid_interval=timedelta(seconds=5))
    await ring.refresh()
    for _ in range(50):
        assert await ring.public_key("forged") is None
    assert loads == 1
    clock.now += timedelta(seconds=5)
    assert await ring.public_key("forged") is None
    assert loads == 2
    assert await ring.public_key(current.kid) is not None
    assert loads == 2


async def test_ring_refuses_to_sign_before_it_has_loaded(master_keys: MasterKeys) -> None:
    async def load() -> list[StoredKey]:
        return []

    ring = KeyRing(load, master_keys, clock=Clock())
    with pytest.raises(RuntimeError):
        ring.sign({})
    with pytest.raises(RuntimeError):
        await ring.refresh()


def test_private_key_der_is_pkcs8(master_keys: MasterKeys) -> None:
    new = generate_signing_key(master_keys)
    private = decrypt_private_key(master_keys, new.kid, new.private_key_ciphertext)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
