import os

import pytest

from pi.platform.security.crypto import (
    DecryptionError,
    MasterKeys,
    constant_time_equal,
    hash_secret,
    verify_secret,
)


def test_encrypt_round_trip_with_aad() -> None:
    keys = MasterKeys({1: os.urandom(32)})
    sealed = keys.encrypt(b"whsec_abc", aad=b"merchant:mer_1")
    assert b"whsec_abc" not in sealed
    assert keys.decrypt(sealed, aad=b"merchant:mer_1") == b"whsec_abc"


def test_encryption_is_randomized() -> None:
    keys = MasterKeys({1: os.urandom(32)})
    assert keys.encrypt(b"x") != keys.encrypt(b"x")


def test_wrong_aad_or_tampering_fails() -> None:
    keys = MasterKeys({1: os.urandom(32)})
    sealed = keys.encrypt(b"secret", aad=b"a")
    with pytest.raises(DecryptionError):
        keys.decrypt(sealed, aad=b"b")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(DecryptionError):
        keys.decrypt(tampered, aad=b"a")
    with pytest.raises(DecryptionError):
        keys.decrypt(b"short")


def test_rotation_highest_version_encrypts_and_old_versions_still_decrypt() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    old = MasterKeys({1: k1})
    sealed_old = old.encrypt(b"v1 data")
    rotated = MasterKeys({1: k1, 2: k2})
    assert rotated.current_version == 2
    assert rotated.decrypt(sealed_old) == b"v1 data"
    sealed_new = rotated.encrypt(b"v2 data")
    with pytest.raises(DecryptionError, match="unknown master key version 2"):
        old.decrypt(sealed_new)
    assert rotated.decrypt(sealed_new) == b"v2 data"


def test_derived_keys_are_per_purpose_and_stable() -> None:
    k1 = os.urandom(32)
    a, b = MasterKeys({1: k1}), MasterKeys({1: k1})
    assert a.derive_key("page-token") == b.derive_key("page-token")
    assert a.derive_key("page-token") != a.derive_key("card-fingerprint")
    assert len(a.derive_key("x")) == 32
    assert a.derive_key("x") != k1


def test_derive_key_can_pin_a_version() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    rotated = MasterKeys({1: k1, 2: k2})
    assert rotated.derive_key("fp", version=1) == MasterKeys({1: k1}).derive_key("fp")
    assert rotated.derive_key("fp") != rotated.derive_key("fp", version=1)
    with pytest.raises(KeyError):
        rotated.derive_key("fp", version=3)


def test_master_keys_reject_wrong_sizes_and_hide_material_in_repr() -> None:
    with pytest.raises(ValueError):
        MasterKeys({1: b"short"})
    with pytest.raises(ValueError):
        MasterKeys({})
    key = os.urandom(32)
    assert key.hex() not in repr(MasterKeys({1: key}))


def test_secret_hashing_and_constant_time_comparison() -> None:
    stored = hash_secret("sk_live_abc")
    assert stored != "sk_live_abc" and len(stored) == 64
    assert verify_secret("sk_live_abc", stored)
    assert not verify_secret("sk_live_abd", stored)
    assert constant_time_equal("a", b"a")
    assert not constant_time_equal("a", "ab")
