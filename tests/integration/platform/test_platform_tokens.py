"""Token verification: every negative case is UNAUTHENTICATED with a reason."""

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import timestamp_pb2

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.platform.cache import MemoryCache
from pi.platform.kernel.errors import Unauthenticated, Unavailable
from pi.platform.security.tokens import (
    RemoteJwks,
    RevocationList,
    RevocationPoller,
    StaticKeySource,
    TokenVerifier,
    jwk_from_public_key,
    listen_for_revocations,
    public_key_from_jwk,
    publish_revocation,
)

ISSUER, AUDIENCE = "pi-platform", "pi-api"


@pytest.fixture
def revocations() -> RevocationList:
    return RevocationList()


@pytest.fixture
def verifier(es256_signer: Any, revocations: RevocationList) -> TokenVerifier:
    keys = StaticKeySource({es256_signer.kid: es256_signer.public_key})
    return TokenVerifier(keys, revocations, ISSUER, AUDIENCE)


async def expect_rejected(verifier: TokenVerifier, token: str, reason: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(token)
    assert info.value.reason == reason
    return info.value.message


async def test_a_valid_token_gives_a_merchant_principal(
    verifier: TokenVerifier, es256_signer: Any
) -> None:
    token = es256_signer.sign("mer_42")
    principal = await verifier.verify(token)
    assert principal.kind == "merchant"
    assert principal.merchant_id == "mer_42"
    assert principal.token_id == es256_signer.jti_of(token)
    assert principal.expires_at is not None and principal.expires_at > time.time()
    assert await verifier.verify(token) == principal  # cached path


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_alg_none_is_rejected(verifier: TokenVerifier, es256_signer: Any) -> None:
    claims = es256_signer.claims("mer_1")
    token = f"{_b64({'alg': 'none', 'kid': es256_signer.kid})}.{_b64(claims)}."
    await expect_rejected(verifier, token, "TOKEN_INVALID")


async def test_hs256_signed_with_the_public_key_is_rejected(
    verifier: TokenVerifier, es256_signer: Any
) -> None:
    pem = es256_signer.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": es256_signer.kid}
    signing_input = f"{_b64(header)}.{_b64(es256_signer.claims('mer_1'))}"
    import hashlib
    import hmac

    sig = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"
    await expect_rejected(verifier, token, "TOKEN_INVALID")


async def test_expired_token(verifier: TokenVerifier, es256_signer: Any) -> None:
    now = int(time.time())
    token = es256_signer.sign(iat=now - 1000, exp=now - 60)
    await expect_rejected(verifier, token, "TOKEN_EXPIRED")


async def test_expiry_within_leeway_is_tolerated(
    verifier: TokenVerifier, es256_signer: Any
) -> None:
    now = int(time.time())
    await verifier.verify(es256_signer.sign(iat=now - 100, exp=now - 2))


async def test_a_cached_token_still_expires(es256_signer: Any, revocations: RevocationList) -> None:
    clock = [time.time()]
    keys = StaticKeySource({es256_signer.kid: es256_signer.public_key})
    verifier = TokenVerifier(keys, revocations, ISSUER, AUDIENCE, leeway=0, clock=lambda: clock[0])
    token = es256_signer.sign(ttl=60)
    await verifier.verify(token)
    clock[0] += 61
    await expect_rejected(verifier, token, "TOKEN_EXPIRED")


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        ({"aud": "someone-else"}, "aud"),
        ({"iss": "evil"}, "iss"),
        ({"jti": None}, "jti"),
        ({"sub": None}, "sub"),
        ({"iat": None}, "iat"),
        ({"exp": None}, "exp"),
        ({"sub": ""}, "sub"),
        ({"iat": int(time.time()) + 3600}, ""),
    ],
)
async def test_wrong_or_missing_claims(
    verifier: TokenVerifier, es256_signer: Any, claims: dict[str, Any], words: str
) -> None:
    message = await expect_rejected(verifier, es256_signer.sign(**claims), "TOKEN_INVALID")
    assert words in message


async def test_tampered_payload_is_rejected(verifier: TokenVerifier, es256_signer: Any) -> None:
    header, _, signature = es256_signer.sign("mer_1").split(".")
    forged = f"{header}.{_b64(es256_signer.claims('mer_admin'))}.{signature}"
    message = await expect_rejected(verifier, forged, "TOKEN_INVALID")
    assert "signature" in message


async def test_signed_by_another_key_with_a_known_kid(
    verifier: TokenVerifier, es256_signer: Any, make_es256_signer: Callable[..., Any]
) -> None:
    impostor = make_es256_signer(kid=es256_signer.kid)
    await expect_rejected(verifier, impostor.sign(), "TOKEN_INVALID")


async def test_unknown_kid_and_missing_kid(
    verifier: TokenVerifier, es256_signer: Any, make_es256_signer: Callable[..., Any]
) -> None:
    message = await expect_rejected(verifier, make_es256_signer().sign(), "TOKEN_INVALID")
    assert "unknown key" in message
    message = await expect_rejected(
        verifier, es256_signer.sign(headers={"kid": None}), "TOKEN_INVALID"
    )
    assert "kid" in message


async def test_other_curves_and_algorithms_are_rejected(
    verifier: TokenVerifier, es256_signer: Any
) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    token = jwt.encode(
        es256_signer.claims(), p384, algorithm="ES384", headers={"kid": es256_signer.kid}
    )
    await expect_rejected(verifier, token, "TOKEN_INVALID")


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 5000])
async def test_malformed_tokens(verifier: TokenVerifier, token: str) -> None:
    await expect_rejected(verifier, token, "TOKEN_INVALID")


async def test_revoked_token_is_rejected_even_when_cached(
    verifier: TokenVerifier, es256_signer: Any, revocations: RevocationList
) -> None:
    token = es256_signer.sign()
    principal = await verifier.verify(token)
    assert principal.token_id and principal.expires_at
    revocations.add(principal.token_id, principal.expires_at)
    await expect_rejected(verifier, token, "TOKEN_REVOKED")


def test_revocation_list_forgets_expired_tokens() -> None:
    clock = [1000.0]
    revoked = RevocationList(clock=lambda: clock[0])
    revoked.add("a", 1100)
    revoked.add("old", 900)  # already expired beyond leeway: never stored
    assert "a" in revoked and "old" not in revoked
    clock[0] = 1200
    assert revoked.prune() == 1
    assert len(revoked) == 0


def test_jwk_round_trip_and_only_p256_accepted(es256_signer: Any) -> None:
    jwk = jwk_from_public_key(es256_signer.public_key, "k1")
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256" and jwk["alg"] == "ES256"
    key = public_key_from_jwk(jwk)
    assert key.public_numbers() == es256_signer.public_key.public_numbers()
    with pytest.raises(ValueError):
        public_key_from_jwk({**jwk, "crv": "P-384"})
    with pytest.raises(ValueError):
        public_key_from_jwk({"kty": "oct", "k": "c2VjcmV0"})
    with pytest.raises(ValueError):
        public_key_from_jwk({**jwk, "alg": "HS256"})


# A real in-process auth server for the remote key source and the revocation poller.


class _FakeAuth(auth_pb2_grpc.AuthServiceServicer, auth_pb2_grpc.AuthInternalServiceServicer):
    def __init__(self) -> None:
        self.jwks: list[dict[str, str]] = []
        self.revoked: list[auth_pb2.RevokedToken] = []
        self.jwks_calls = 0
        self.metadata: list[dict[str, str]] = []
        self.requests: list[auth_pb2.ListRevokedTokensRequest] = []

    async def GetJwks(self, request: Any, context: Any) -> auth_pb2.GetJwksResponse:
        self.jwks_calls += 1
        return auth_pb2.GetJwksResponse(keys=[auth_pb2.JsonWebKey(**k) for k in self.jwks])

    async def ListRevokedTokens(
        self, request: Any, context: Any
    ) -> auth_pb2.ListRevokedTokensResponse:
        self.metadata.append(dict(context.invocation_metadata()))
        self.requests.append(request)
        return auth_pb2.ListRevokedTokensResponse(revoked_tokens=self.revoked)


@pytest.fixture
async def auth_server() -> AsyncIterator[tuple[_FakeAuth, grpc.aio.Channel]]:
    fake = _FakeAuth()  # type: ignore[abstract]  # implements only what the test calls
    server = grpc.aio.server()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(fake, server)
    auth_pb2_grpc.add_AuthInternalServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield fake, channel
    await channel.close()
    await server.stop(None)


async def test_remote_jwks_fetches_caches_and_limits_refetches(
    auth_server: tuple[_FakeAuth, grpc.aio.Channel],
    es256_signer: Any,
    revocations: RevocationList,
) -> None:
    fake, channel = auth_server
    fake.jwks = [jwk_from_public_key(es256_signer.public_key, es256_signer.kid)]
    clock = [0.0]
    jwks = RemoteJwks(channel, clock=lambda: clock[0])
    verifier = TokenVerifier(jwks, revocations, ISSUER, AUDIENCE)
    assert jwks.cached_key(es256_signer.kid) is None
    await verifier.verify(es256_signer.sign())
    assert fake.jwks_calls == 1
    await verifier.verify(es256_signer.sign())
    assert fake.jwks_calls == 1  # hot path: no I/O
    assert jwks.cached_key(es256_signer.kid) is not None

    for _ in range(3):  # unknown kids within 5 s: no refetch storm
        await expect_rejected(verifier, es256_signer.sign(headers={"kid": "nope"}), "TOKEN_INVALID")
    assert fake.jwks_calls == 1
    clock[0] = 5.0
    await expect_rejected(verifier, es256_signer.sign(headers={"kid": "nope"}), "TOKEN_INVALID")
    assert fake.jwks_calls == 2


async def test_remote_jwks_picks_up_a_rotated_key(
    auth_server: tuple[_FakeAuth, grpc.aio.Channel],
    make_es256_signer: Callable[..., Any],
    revocations: RevocationList,
) -> None:
    fake, channel = auth_server
    old, new = make_es256_signer(), make_es256_signer()
    fake.jwks = [jwk_from_public_key(old.public_key, old.kid)]
    clock = [0.0]
    verifier = TokenVerifier(
        RemoteJwks(channel, clock=lambda: clock[0]), revocations, ISSUER, AUDIENCE
    )
    await verifier.verify(old.sign())
    fake.jwks = [jwk_from_public_key(k.public_key, k.kid) for k in (new, old)]
    clock[0] = 10.0
    assert (await verifier.verify(new.sign("mer_new"))).merchant_id == "mer_new"


async def test_remote_jwks_unreachable_is_unavailable_not_invalid(es256_signer: Any) -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    try:
        verifier = TokenVerifier(
            RemoteJwks(channel, timeout=0.5), RevocationList(), ISSUER, AUDIENCE
        )
        with pytest.raises(Unavailable):
            await verifier.verify(es256_signer.sign())
    finally:
        await channel.close()


async def test_remote_jwks_recovers_soon_after_auth_comes_up(es256_signer: Any) -> None:
    # A service that starts before auth listens must not refuse good tokens for the whole
    # refetch interval: after a failed fetch, the next one may come after 0.5 s.
    fake = _FakeAuth()  # type: ignore[abstract]  # implements only what the test calls
    fake.jwks = [jwk_from_public_key(es256_signer.public_key, es256_signer.kid)]
    server = grpc.aio.server()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    clock = [0.0]
    verifier = TokenVerifier(
        RemoteJwks(channel, timeout=0.5, clock=lambda: clock[0]),
        RevocationList(),
        ISSUER,
        AUDIENCE,
    )
    try:
        with pytest.raises(Unavailable):
            await verifier.verify(es256_signer.sign())
        await server.start()
        clock[0] = 0.1  # too soon: still no second fetch
        with pytest.raises(Unavailable):
            await verifier.verify(es256_signer.sign())
        assert fake.jwks_calls == 0
        clock[0] = 0.6
        assert (await verifier.verify(es256_signer.sign())).kind == "merchant"
        assert fake.jwks_calls == 1
    finally:
        await channel.close()
        await server.stop(None)


async def test_revocation_poller_pulls_with_the_service_token(
    auth_server: tuple[_FakeAuth, grpc.aio.Channel],
    revocations: RevocationList,
) -> None:
    fake, channel = auth_server
    now = int(time.time())
    fake.revoked = [
        auth_pb2.RevokedToken(
            token_id="jti-1",
            expire_time=timestamp_pb2.Timestamp(seconds=now + 600),
            revoke_time=timestamp_pb2.Timestamp(seconds=now - 5),
        )
    ]
    poller = RevocationPoller(channel, revocations, interval=0.05, service_token="svc-secret")
    assert await poller.poll_once() == 1
    assert revocations.is_revoked("jti-1")
    assert fake.metadata[0]["authorization"] == "Bearer svc-secret"
    assert not fake.requests[0].HasField("revoked_after")
    await poller.poll_once()
    assert fake.requests[1].revoked_after.seconds == now - 5 - RevocationPoller.OVERLAP_SECONDS

    fake.revoked.append(
        auth_pb2.RevokedToken(
            token_id="jti-2",
            expire_time=timestamp_pb2.Timestamp(seconds=now + 600),
            revoke_time=timestamp_pb2.Timestamp(seconds=now),
        )
    )
    task = asyncio.create_task(poller.run())
    try:
        for _ in range(100):
            if revocations.is_revoked("jti-2"):
                break
            await asyncio.sleep(0.02)
        assert revocations.is_revoked("jti-2")
    finally:
        task.cancel()


async def test_revocation_poller_survives_auth_being_down(revocations: RevocationList) -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    poller = RevocationPoller(channel, revocations, interval=0.01, timeout=0.2)
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    await channel.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_published_revocations_reach_listeners(
    backend: str, request: pytest.FixtureRequest, revocations: RevocationList
) -> None:
    from pi.platform.cache import RedisCache

    cache: Any = (
        MemoryCache()
        if backend == "memory"
        else RedisCache(
            request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix")
        )
    )
    task = asyncio.create_task(listen_for_revocations(cache, revocations))
    try:
        exp = int(time.time()) + 600
        for _ in range(100):  # until the listener is subscribed
            await publish_revocation(cache, "jti-pub", exp)
            await asyncio.sleep(0.02)
            if revocations.is_revoked("jti-pub"):
                break
        assert revocations.is_revoked("jti-pub")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await cache.close()
