"""Findings 9 and 12: verified tokens are cached by a malleability-proof key, lifetimes
are capped, and a verifier whose revocation view is stale fails closed."""

import base64
import time
from typing import Any

import pytest

from pi.platform.kernel.errors import Unauthenticated, Unavailable
from pi.platform.security.tokens import (
    MAX_TOKEN_LIFETIME_SECONDS,
    RevocationList,
    StaticKeySource,
    TokenVerifier,
    cache_key,
)

ISSUER, AUDIENCE = "pi-platform", "pi-api"
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class Clock:
    """Starts a minute in the past, so that moving it forward stays behind the real clock
    (PyJWT checks `iat` against the real one)."""

    def __init__(self) -> None:
        self.now = time.time() - 60

    def __call__(self) -> float:
        return self.now


def _twin(token: str) -> str:
    """The same token with signature (r, n - s): as valid as the original."""
    signing_input, _, signature = token.rpartition(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    s = int.from_bytes(raw[32:], "big")
    twin = raw[:32] + (P256_N - s).to_bytes(32, "big")
    return f"{signing_input}.{base64.urlsafe_b64encode(twin).rstrip(b'=').decode()}"


def _verifier(signer: Any, revocations: RevocationList, **kwargs: Any) -> TokenVerifier:
    keys = StaticKeySource({signer.kid: signer.public_key})
    return TokenVerifier(keys, revocations, ISSUER, AUDIENCE, **kwargs)


async def test_a_malleated_twin_verifies_but_shares_the_cache_entry(es256_signer: Any) -> None:
    verifier = _verifier(es256_signer, RevocationList())
    token = es256_signer.sign("mer_1")
    twin = _twin(token)
    assert twin != token
    assert cache_key(twin) == cache_key(token)
    first = await verifier.verify(token)
    assert await verifier.verify(twin) == first
    assert verifier.cached_tokens == 1


async def test_a_different_payload_never_shares_an_entry(es256_signer: Any) -> None:
    verifier = _verifier(es256_signer, RevocationList())
    one, two = es256_signer.sign("mer_1"), es256_signer.sign("mer_2")
    assert cache_key(one) != cache_key(two)
    await verifier.verify(one)
    assert (await verifier.verify(two)).merchant_id == "mer_2"
    assert verifier.cached_tokens == 2


async def test_a_token_living_longer_than_15_minutes_is_refused(es256_signer: Any) -> None:
    verifier = _verifier(es256_signer, RevocationList())
    ok = es256_signer.sign("mer_1", ttl=MAX_TOKEN_LIFETIME_SECONDS)
    assert (await verifier.verify(ok)).merchant_id == "mer_1"
    for ttl in (MAX_TOKEN_LIFETIME_SECONDS + 1, 3600, 10 * 365 * 86400):
        with pytest.raises(Unauthenticated) as info:
            await verifier.verify(es256_signer.sign("mer_1", ttl=ttl))
        assert info.value.reason == "TOKEN_INVALID"
        assert "lifetime" in info.value.message


async def test_scopes_come_from_the_scope_claim(es256_signer: Any) -> None:
    verifier = _verifier(es256_signer, RevocationList())
    scoped = await verifier.verify(es256_signer.sign(scope="payments:read nonsense:x"))
    assert scoped.scopes == frozenset({"payments:read"})
    legacy = await verifier.verify(es256_signer.sign())
    assert "api_keys:write" in legacy.scopes
    with pytest.raises(Unauthenticated):
        await verifier.verify(es256_signer.sign(scope=["payments:read"]))


async def test_beyond_the_staleness_bound_tokens_issued_before_the_last_view_fail_closed(
    es256_signer: Any,
) -> None:
    clock = Clock()
    revocations = RevocationList(clock=clock)
    verifier = _verifier(es256_signer, revocations, clock=clock, max_staleness=30.0)
    old = es256_signer.sign("mer_1", iat=int(clock.now) - 60, exp=int(clock.now) + 600)
    revocations.viewed(clock.now)
    assert (await verifier.verify(old)).merchant_id == "mer_1"

    clock.now += 29  # within the bound: still served from the cache
    assert (await verifier.verify(old)).merchant_id == "mer_1"
    clock.now += 2  # 31 s without a complete view of the revocations
    with pytest.raises(Unavailable) as info:
        await verifier.verify(old)
    assert info.value.reason == "REVOCATIONS_STALE"
    # A token issued after the last view is not affected by what the view could miss.
    newer = es256_signer.sign("mer_1", iat=int(clock.now) - 1, exp=int(clock.now) + 600)
    assert (await verifier.verify(newer)).merchant_id == "mer_1"
    # A fresh view restores service.
    revocations.viewed(clock.now)
    assert (await verifier.verify(old)).merchant_id == "mer_1"


async def test_without_any_view_the_bound_counts_from_start(es256_signer: Any) -> None:
    clock = Clock()
    revocations = RevocationList(clock=clock)
    verifier = _verifier(es256_signer, revocations, clock=clock, max_staleness=10.0)
    token = es256_signer.sign("mer_1", iat=int(clock.now) - 5, exp=int(clock.now) + 600)
    assert await verifier.verify(token)
    clock.now += 11
    with pytest.raises(Unavailable):
        await verifier.verify(token)
