"""The auth service through its generated stubs, on an in-process grpc.aio server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy.ext.asyncio import AsyncEngine

from generated.pi.auth.v1 import auth_pb2
from pi.auth.bootstrap import KEY_ACTIVATION, KEY_REFRESH
from pi.platform.cache import RedisCache
from pi.platform.security.tokens import REVOCATION_CHANNEL

# -- helpers -------------------------------------------------------------------------------

if TYPE_CHECKING:  # the fixtures' types, defined in this directory's conftest
    from conftest import AuthRpc, Clock


def _status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    status: status_pb2.Status | None = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status details on {error.code()}"
    return status


def _reason(error: grpc.aio.AioRpcError) -> str:
    for detail in _status(error).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "pi.platform"
            return info.reason
    raise AssertionError("no ErrorInfo")


def _violations(error: grpc.aio.AioRpcError) -> list[str]:
    for detail in _status(error).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return [v.field for v in bad.field_violations]
    return []


async def _fails(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


def _jwks_dict(response: auth_pb2.GetJwksResponse) -> dict[str, Any]:
    return {
        "keys": [
            {f: getattr(k, f) for f in ("kty", "crv", "x", "y", "kid", "use", "alg")}
            for k in response.keys
        ]
    }


def _verify_with_pyjwt(token: str, jwks: dict[str, Any], rpc: AuthRpc) -> dict[str, Any]:
    """What an outside party does: PyJWT, the published JWKS, algorithms pinned."""
    keyset = jwt.PyJWKSet.from_dict(jwks)
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keyset.keys if k.key_id == kid)
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["ES256"],
        audience=rpc.app.settings.jwt_audience,
        issuer=rpc.app.settings.jwt_issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
        leeway=5,
    )
    return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- the happy path ------------------------------------------------------------------------


async def test_merchant_key_token_lifecycle_end_to_end(auth_rpc: AuthRpc) -> None:
    created = await auth_rpc.create_merchant("Acme Coffee")
    assert created.merchant.id.startswith("mer_")
    assert created.merchant.display_name == "Acme Coffee"
    assert created.api_key.id.startswith("key_")
    assert created.api_key.merchant_id == created.merchant.id
    assert created.api_key.state == auth_pb2.API_KEY_STATE_ACTIVE
    assert created.api_key_secret.startswith("sk_") and len(created.api_key_secret) == 46

    issued = await auth_rpc.issue(created.api_key.id, created.api_key_secret)
    assert issued.token_type == "Bearer"
    assert 0 < issued.expires_in <= 900
    assert issued.token_id.startswith("tok_")

    jwks = _jwks_dict(await auth_rpc.auth.GetJwks(auth_pb2.GetJwksRequest()))
    assert all(
        (k["kty"], k["crv"], k["use"], k["alg"]) == ("EC", "P-256", "sig", "ES256")
        for k in jwks["keys"]
    )
    header = jwt.get_unverified_header(issued.access_token)
    assert header["alg"] == "ES256"
    assert header["kid"] == jwks["keys"][0]["kid"]
    claims = _verify_with_pyjwt(issued.access_token, jwks, auth_rpc)
    assert claims["sub"] == created.merchant.id
    assert claims["jti"] == issued.token_id
    assert claims["key"] == created.api_key.id
    assert claims["exp"] - claims["iat"] <= 900
    assert claims["exp"] == issued.expire_time.seconds

    token = auth_rpc.bearer(issued.access_token)
    second = await auth_rpc.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name="CI"), metadata=token
    )
    assert second.api_key_secret.startswith("sk_")
    assert second.api_key_secret != created.api_key_secret

    listed = await auth_rpc.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=token)
    assert [k.id for k in listed.api_keys] == [second.api_key.id, created.api_key.id]
    assert listed.next_page_token == ""
    assert [f.name for f, _ in listed.api_keys[0].ListFields()] == [
        "id",
        "merchant_id",
        "display_name",
        "state",
        "create_time",
        "scopes",
    ]

    second_token = (await auth_rpc.issue(second.api_key.id, second.api_key_secret)).access_token
    revoked = await auth_rpc.auth.RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(id=second.api_key.id), metadata=token
    )
    assert revoked.api_key.state == auth_pb2.API_KEY_STATE_REVOKED
    assert revoked.api_key.HasField("revoke_time")

    error = await _fails(
        auth_rpc.issue(second.api_key.id, second.api_key_secret), grpc.StatusCode.UNAUTHENTICATED
    )
    assert _reason(error) == "INVALID_CREDENTIALS"
    # Tokens issued with the revoked key stop working at once, too.
    error = await _fails(
        auth_rpc.auth.ListApiKeys(
            auth_pb2.ListApiKeysRequest(), metadata=auth_rpc.bearer(second_token)
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert _reason(error) == "TOKEN_REVOKED"
    # The first key and its token are untouched.
    listed = await auth_rpc.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=token)
    assert [k.state for k in listed.api_keys] == [
        auth_pb2.API_KEY_STATE_REVOKED,
        auth_pb2.API_KEY_STATE_ACTIVE,
    ]
    # Revoking again is harmless and returns the same key.
    again = await auth_rpc.auth.RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(id=second.api_key.id), metadata=token
    )
    assert again.api_key.revoke_time == revoked.api_key.revoke_time


async def test_secret_responses_are_marked_no_store(auth_rpc: AuthRpc) -> None:
    call = auth_rpc.auth.CreateMerchant(
        auth_pb2.CreateMerchantRequest(display_name="Acme"), metadata=auth_rpc.admin
    )
    created = await call
    assert ("cache-control", "no-store") in list(await call.initial_metadata())
    issue_call = auth_rpc.auth.IssueToken(
        auth_pb2.IssueTokenRequest(
            api_key_id=created.api_key.id, api_key_secret=created.api_key_secret
        )
    )
    await issue_call
    assert ("cache-control", "no-store") in list(await issue_call.initial_metadata())


# -- tokens that must be refused -------------------------------------------------------------


def _forge(kind: str, rpc: AuthRpc, merchant_id: str) -> str:
    """A token that must be rejected, built the way an attacker (or a bug) would."""
    settings = rpc.app.settings
    now = int(rpc.app.clock().timestamp())
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": merchant_id,
        "iat": now,
        "exp": now + 600,
        "jti": "tok_01JFORGEDFORGEDFORGEDFORGE",
        "key": "key_01JFORGEDFORGEDFORGEDFORGE",
    }
    kid = rpc.app.keys.signing_kid
    if kind == "alg_none":
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
        return f"{header}.{_b64(json.dumps(claims).encode())}."
    if kind == "hs256_with_public_key":
        jwk = rpc.app.keys.jwks()[0]
        from pi.platform.security.tokens import public_key_from_jwk

        pem = public_key_from_jwk(jwk).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        body = _b64(json.dumps(claims).encode())
        mac = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{_b64(mac)}"
    if kind == "expired":
        claims.update(iat=now - 2000, exp=now - 1000)
        return rpc.app.keys.sign(claims)
    if kind == "wrong_aud":
        claims["aud"] = "someone-else"
        return rpc.app.keys.sign(claims)
    if kind == "wrong_iss":
        claims["iss"] = "https://evil.example"
        return rpc.app.keys.sign(claims)
    if kind == "tampered_payload":
        header, _, signature = rpc.app.keys.sign(claims).split(".")
        claims["sub"] = "mer_01JSOMEONEELSESOMEONEELSE0"
        return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    if kind == "unknown_kid":
        stranger = ec.generate_private_key(ec.SECP256R1())
        return jwt.encode(claims, stranger, algorithm="ES256", headers={"kid": "not-a-known-kid"})
    if kind == "known_kid_foreign_key":
        stranger = ec.generate_private_key(ec.SECP256R1())
        return jwt.encode(claims, stranger, algorithm="ES256", headers={"kid": kid})
    if kind == "no_kid":
        return jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    if kind == "garbage":
        return "not.a.jwt"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("alg_none", "TOKEN_INVALID"),
        ("hs256_with_public_key", "TOKEN_INVALID"),
        ("expired", "TOKEN_EXPIRED"),
        ("wrong_aud", "TOKEN_INVALID"),
        ("wrong_iss", "TOKEN_INVALID"),
        ("tampered_payload", "TOKEN_INVALID"),
        ("unknown_kid", "TOKEN_INVALID"),
        ("known_kid_foreign_key", "TOKEN_INVALID"),
        ("no_kid", "TOKEN_INVALID"),
        ("garbage", "TOKEN_INVALID"),
    ],
)
async def test_bad_tokens_are_unauthenticated(auth_rpc: AuthRpc, kind: str, reason: str) -> None:
    created, token = await auth_rpc.merchant_with_token()
    # The genuine token works, so each rejection below is about the forgery alone.
    await auth_rpc.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=auth_rpc.bearer(token))
    forged = _forge(kind, auth_rpc, created.merchant.id)
    error = await _fails(
        auth_rpc.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=auth_rpc.bearer(forged)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert _reason(error) == reason


async def test_revoked_token_is_refused_at_once_and_listed_for_other_services(
    auth_rpc: AuthRpc, redis_url: str, redis_prefix: str
) -> None:
    _, token = await auth_rpc.merchant_with_token()
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    listener = RedisCache(redis_url, prefix=redis_prefix)
    try:
        async with listener.subscribe(REVOCATION_CHANNEL) as messages:
            response = await auth_rpc.auth.RevokeToken(
                auth_pb2.RevokeTokenRequest(token_id=jti), metadata=auth_rpc.bearer(token)
            )
            message = await asyncio.wait_for(anext(aiter(messages)), timeout=5)
    finally:
        await listener.close()
    assert response.token_id == jti
    assert json.loads(message)["jti"] == jti

    error = await _fails(
        auth_rpc.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=auth_rpc.bearer(token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert _reason(error) == "TOKEN_REVOKED"

    listed = await auth_rpc.internal.ListRevokedTokens(
        auth_pb2.ListRevokedTokensRequest(), metadata=auth_rpc.service
    )
    assert [r.token_id for r in listed.revoked_tokens] == [jti]
    assert listed.revoked_tokens[0].revoke_time == response.revoke_time
    later = auth_pb2.ListRevokedTokensRequest()
    later.revoked_after.CopyFrom(response.revoke_time)
    assert not (
        await auth_rpc.internal.ListRevokedTokens(later, metadata=auth_rpc.service)
    ).revoked_tokens


async def test_revocation_reaches_a_second_replica_through_its_store_poller(
    auth_rpc: AuthRpc,
) -> None:
    from pi.auth.entrypoints.workers import StoreRevocationPoller
    from pi.platform.security.tokens import RevocationList

    _, token = await auth_rpc.merchant_with_token()
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    replica_list = RevocationList()
    poller = StoreRevocationPoller(
        auth_rpc.app.use_cases.list_revoked_tokens.since, replica_list, interval=0.1
    )
    await poller.poll_once()
    assert jti not in replica_list
    await auth_rpc.auth.RevokeToken(
        auth_pb2.RevokeTokenRequest(token_id=jti), metadata=auth_rpc.bearer(token)
    )
    await poller.poll_once()
    assert jti in replica_list


async def test_merchants_cannot_touch_each_others_keys_or_tokens(auth_rpc: AuthRpc) -> None:
    alice, alice_token = await auth_rpc.merchant_with_token("Alice")
    _, bob_token = await auth_rpc.merchant_with_token("Bob")
    alice_jti = jwt.decode(alice_token, options={"verify_signature": False})["jti"]

    error = await _fails(
        auth_rpc.auth.RevokeApiKey(
            auth_pb2.RevokeApiKeyRequest(id=alice.api_key.id), metadata=auth_rpc.bearer(bob_token)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert _reason(error) == "API_KEY_NOT_FOUND"
    error = await _fails(
        auth_rpc.auth.RevokeToken(
            auth_pb2.RevokeTokenRequest(token_id=alice_jti), metadata=auth_rpc.bearer(bob_token)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert _reason(error) == "TOKEN_NOT_FOUND"
    # Same answer as an id that never existed.
    error = await _fails(
        auth_rpc.auth.RevokeApiKey(
            auth_pb2.RevokeApiKeyRequest(id="key_01JAAAAAAAAAAAAAAAAAAAAAAA"),
            metadata=auth_rpc.bearer(bob_token),
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    bob_keys = await auth_rpc.auth.ListApiKeys(
        auth_pb2.ListApiKeysRequest(), metadata=auth_rpc.bearer(bob_token)
    )
    assert alice.api_key.id not in [k.id for k in bob_keys.api_keys]
    # Alice is unaffected.
    await auth_rpc.auth.ListApiKeys(
        auth_pb2.ListApiKeysRequest(), metadata=auth_rpc.bearer(alice_token)
    )


@pytest.mark.parametrize(
    ("rpc", "request_", "field"),
    [
        ("RevokeApiKey", auth_pb2.RevokeApiKeyRequest(id=""), "id"),
        ("RevokeApiKey", auth_pb2.RevokeApiKeyRequest(id="sk_oops"), "id"),
        ("RevokeToken", auth_pb2.RevokeTokenRequest(token_id=""), "token_id"),
        ("RevokeToken", auth_pb2.RevokeTokenRequest(token_id="key_01J"), "token_id"),
        ("ListApiKeys", auth_pb2.ListApiKeysRequest(page_size=-1), "page_size"),
        ("ListApiKeys", auth_pb2.ListApiKeysRequest(page_token="forged"), "page_token"),
    ],
)
async def test_malformed_ids_and_list_parameters_are_invalid_arguments(
    auth_rpc: AuthRpc, rpc: str, request_: Any, field: str
) -> None:
    _, token = await auth_rpc.merchant_with_token()
    error = await _fails(
        getattr(auth_rpc.auth, rpc)(request_, metadata=auth_rpc.bearer(token)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert _violations(error) == [field]


# -- who may call what ----------------------------------------------------------------------


async def test_merchant_token_cannot_create_merchants(auth_rpc: AuthRpc) -> None:
    _, token = await auth_rpc.merchant_with_token()
    error = await _fails(
        auth_rpc.auth.CreateMerchant(
            auth_pb2.CreateMerchantRequest(display_name="Mallory"),
            metadata=auth_rpc.bearer(token),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert _reason(error) == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    ("credential", "rpc", "request_", "code"),
    [
        (
            None,
            "CreateMerchant",
            auth_pb2.CreateMerchantRequest(display_name="X"),
            "UNAUTHENTICATED",
        ),
        (
            "service",
            "CreateMerchant",
            auth_pb2.CreateMerchantRequest(display_name="X"),
            "PERMISSION_DENIED",
        ),
        (
            "wrong",
            "CreateMerchant",
            auth_pb2.CreateMerchantRequest(display_name="X"),
            "UNAUTHENTICATED",
        ),
        ("admin", "ListApiKeys", auth_pb2.ListApiKeysRequest(), "PERMISSION_DENIED"),
        (None, "ListApiKeys", auth_pb2.ListApiKeysRequest(), "UNAUTHENTICATED"),
        ("merchant", "ListRevokedTokens", auth_pb2.ListRevokedTokensRequest(), "PERMISSION_DENIED"),
        ("admin", "ListRevokedTokens", auth_pb2.ListRevokedTokensRequest(), "PERMISSION_DENIED"),
        (None, "ListRevokedTokens", auth_pb2.ListRevokedTokensRequest(), "UNAUTHENTICATED"),
    ],
)
async def test_each_rpc_requires_its_credential(
    auth_rpc: AuthRpc, credential: str | None, rpc: str, request_: Any, code: str
) -> None:
    _, token = await auth_rpc.merchant_with_token()
    metadata = {
        None: None,
        "admin": auth_rpc.admin,
        "service": auth_rpc.service,
        "merchant": auth_rpc.bearer(token),
        "wrong": auth_rpc.bearer("adm_guess"),
    }[credential]
    stub = auth_rpc.internal if rpc == "ListRevokedTokens" else auth_rpc.auth
    await _fails(getattr(stub, rpc)(request_, metadata=metadata), grpc.StatusCode[code])


async def test_public_methods_need_no_token_and_ignore_a_stale_one(auth_rpc: AuthRpc) -> None:
    created = await auth_rpc.create_merchant()
    assert (await auth_rpc.auth.GetJwks(auth_pb2.GetJwksRequest())).keys
    stale = auth_rpc.bearer(_forge("expired", auth_rpc, created.merchant.id))
    assert (await auth_rpc.auth.GetJwks(auth_pb2.GetJwksRequest(), metadata=stale)).keys
    await auth_rpc.auth.IssueToken(
        auth_pb2.IssueTokenRequest(
            api_key_id=created.api_key.id, api_key_secret=created.api_key_secret
        ),
        metadata=stale,
    )


# -- input validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "   ", "x" * 201, "Acme\nCorp", "Acme\x00", "\x1b[31mAcme", "Acme\u200b", " Acme"],
    ids=["empty", "blank", "oversized", "newline", "nul", "escape", "zero-width", "padded"],
)
async def test_bad_display_names_are_field_violations(auth_rpc: AuthRpc, name: str) -> None:
    error = await _fails(
        auth_rpc.auth.CreateMerchant(
            auth_pb2.CreateMerchantRequest(display_name=name), metadata=auth_rpc.admin
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert _violations(error) == ["display_name"]
    assert _reason(error) == "INVALID_ARGUMENT"
    if name.strip():
        assert name.strip() not in (error.details() or "")

    if name:  # an API key's name is optional, but when given the same rules apply
        _, token = await auth_rpc.merchant_with_token()
        error = await _fails(
            auth_rpc.auth.CreateApiKey(
                auth_pb2.CreateApiKeyRequest(display_name=name), metadata=auth_rpc.bearer(token)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert _violations(error) == ["display_name"]


async def test_display_name_of_200_characters_and_unicode_is_accepted(auth_rpc: AuthRpc) -> None:
    for name in ("x" * 200, "Café Ünïcode 🍕", "東京の店"):
        created = await auth_rpc.create_merchant(name)
        assert created.merchant.display_name == name


@pytest.mark.parametrize(
    ("key_id", "secret", "field"),
    [
        ("", "sk_x", "api_key_id"),
        ("not-a-key-id", "sk_x", "api_key_id"),
        ("key_01JAAAAAAAAAAAAAAAAAAAAAAA", "", "api_key_secret"),
        ("key_01JAAAAAAAAAAAAAAAAAAAAAAA", "s" * 257, "api_key_secret"),
    ],
)
async def test_issue_token_rejects_missing_or_malformed_input(
    auth_rpc: AuthRpc, key_id: str, secret: str, field: str
) -> None:
    error = await _fails(auth_rpc.issue(key_id, secret), grpc.StatusCode.INVALID_ARGUMENT)
    assert _violations(error) == [field]


# -- failure throttling -------------------------------------------------------------------------


async def _issue_from(
    auth_rpc: AuthRpc, key_id: str, secret: str, forwarded_for: str
) -> auth_pb2.IssueTokenResponse:
    response: auth_pb2.IssueTokenResponse = await auth_rpc.auth.IssueToken(
        auth_pb2.IssueTokenRequest(api_key_id=key_id, api_key_secret=secret),
        metadata=(("x-forwarded-for", forwarded_for),),
    )
    return response


async def test_failures_answer_the_same_for_unknown_key_ids_and_never_lock_out_the_merchant(
    auth_rpc: AuthRpc, clock: Clock
) -> None:
    created = await auth_rpc.create_merchant()
    real_id, real_secret = created.api_key.id, created.api_key_secret
    unknown_id = "key_01JZZZZZZZZZZZZZZZZZZZZZZZ"
    attacker = "203.0.113.9"

    async def answer(key_id: str, secret: str) -> tuple[Any, ...]:
        error = await _fails(
            _issue_from(auth_rpc, key_id, secret, attacker), grpc.StatusCode.UNAUTHENTICATED
        )
        return (error.code(), error.details(), _status(error).SerializeToString())

    wrong = "sk_" + "A" * 43
    answers = set()
    for _ in range(5):
        answers.add(await answer(real_id, wrong))
        answers.add(await answer(unknown_id, wrong))
    assert len(answers) == 1
    (only,) = answers
    assert _reason_from_bytes(only[2]) == "INVALID_CREDENTIALS"
    await answer(real_id, wrong)  # the key's 6th failure: failing clients now wait

    # The attacker waits (RESOURCE_EXHAUSTED with RetryInfo) even with the right secret...
    throttled = await _fails(
        _issue_from(auth_rpc, real_id, real_secret, attacker), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert _reason_from_bytes(_status(throttled).SerializeToString()) == "LOGIN_THROTTLED"
    # ...the merchant, from an address that has not been failing, gets its token at once.
    assert (await _issue_from(auth_rpc, real_id, real_secret, "192.0.2.20")).access_token


async def test_the_client_address_is_the_last_forwarded_for_entry(
    auth_rpc: AuthRpc, clock: Clock
) -> None:
    """What a client writes into X-Forwarded-For itself never moves its failures to
    another address: the edge appends the real peer last (zero trusted hops)."""
    created = await auth_rpc.create_merchant()
    unknown_id = "key_01JZZZZZZZZZZZZZZZZZZZZZZZ"
    for n in range(11):  # ten free failures per address, then a delay
        await _fails(
            _issue_from(auth_rpc, unknown_id, "sk_wrong", f"10.9.9.{n}, 203.0.113.10"),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    await _fails(
        _issue_from(auth_rpc, unknown_id, "sk_wrong", "10.9.9.99, 203.0.113.10"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    issued = await _issue_from(
        auth_rpc, created.api_key.id, created.api_key_secret, "203.0.113.10, 192.0.2.30"
    )
    assert issued.access_token


async def test_failures_age_out_of_the_thirty_minute_window(
    auth_rpc: AuthRpc, clock: Clock
) -> None:
    created = await auth_rpc.create_merchant()
    key_id, secret = created.api_key.id, created.api_key_secret
    for _ in range(6):
        await _fails(auth_rpc.issue(key_id, "sk_wrong"), grpc.StatusCode.UNAUTHENTICATED)
    await _fails(auth_rpc.issue(key_id, secret), grpc.StatusCode.RESOURCE_EXHAUSTED)
    clock.advance(timedelta(minutes=31))
    await _fails(auth_rpc.issue(key_id, "sk_wrong"), grpc.StatusCode.UNAUTHENTICATED)
    await auth_rpc.issue(key_id, secret)


def _reason_from_bytes(data: bytes) -> str:
    status = status_pb2.Status.FromString(data)
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    raise AssertionError("no ErrorInfo")


# -- key rotation --------------------------------------------------------------------------------


async def test_rotation_keeps_tokens_signed_with_the_previous_key_valid(
    auth_rpc: AuthRpc, clock: Clock
) -> None:
    created, old_token = await auth_rpc.merchant_with_token()
    old_kid = jwt.get_unverified_header(old_token)["kid"]

    # Rotate "36 seconds ago" so that activation can be observed without moving the clock
    # ahead of real time (PyJWT checks `iat` against the real clock).
    clock.advance(-(KEY_ACTIVATION + timedelta(seconds=1)))
    new_kid = await auth_rpc.app.signing_keys.rotate()
    await auth_rpc.app.keys.refresh()
    jwks = _jwks_dict(await auth_rpc.auth.GetJwks(auth_pb2.GetJwksRequest()))
    assert [k["kid"] for k in jwks["keys"]] == [new_kid, old_kid]

    # Published first, signing later: until then new tokens still use the old key.
    interim = await auth_rpc.issue(created.api_key.id, created.api_key_secret)
    assert jwt.get_unverified_header(interim.access_token)["kid"] == old_kid

    clock.advance(KEY_ACTIVATION + timedelta(seconds=1))
    await auth_rpc.app.keys.refresh()
    fresh = await auth_rpc.issue(created.api_key.id, created.api_key_secret)
    assert jwt.get_unverified_header(fresh.access_token)["kid"] == new_kid
    jwks = _jwks_dict(await auth_rpc.auth.GetJwks(auth_pb2.GetJwksRequest()))
    for token in (old_token, interim.access_token, fresh.access_token):
        _verify_with_pyjwt(token, jwks, auth_rpc)

    for token in (old_token, interim.access_token, fresh.access_token):
        await auth_rpc.auth.ListApiKeys(
            auth_pb2.ListApiKeysRequest(), metadata=auth_rpc.bearer(token)
        )

    # The previous key stays published until the last token it signed has expired.
    clock.advance(timedelta(minutes=15) + KEY_REFRESH)
    jwks = _jwks_dict(await auth_rpc.auth.GetJwks(auth_pb2.GetJwksRequest()))
    assert [k["kid"] for k in jwks["keys"]] == [new_kid, old_kid]
    clock.advance(timedelta(minutes=2))
    jwks = _jwks_dict(await auth_rpc.auth.GetJwks(auth_pb2.GetJwksRequest()))
    assert [k["kid"] for k in jwks["keys"]] == [new_kid]
    assert await auth_rpc.app.signing_keys.retire_expired() == [old_kid]


# -- idempotency ---------------------------------------------------------------------------


async def test_create_merchant_retry_replays_the_first_response_with_its_secret(
    auth_rpc: AuthRpc, auth_engine: AsyncEngine
) -> None:
    request = auth_pb2.CreateMerchantRequest(display_name="Acme", request_id="req-123")
    first = await auth_rpc.auth.CreateMerchant(request, metadata=auth_rpc.admin)
    again = await auth_rpc.auth.CreateMerchant(request, metadata=auth_rpc.admin)
    assert again == first
    # The header is the same key.
    header = await auth_rpc.auth.CreateMerchant(
        auth_pb2.CreateMerchantRequest(display_name="Acme"),
        metadata=(*auth_rpc.admin, ("idempotency-key", "req-123")),
    )
    assert header == first
    # The replayed secret is the one that works.
    await auth_rpc.issue(again.api_key.id, again.api_key_secret)

    error = await _fails(
        auth_rpc.auth.CreateMerchant(
            auth_pb2.CreateMerchantRequest(display_name="Other", request_id="req-123"),
            metadata=auth_rpc.admin,
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert _reason(error) == "IDEMPOTENCY_KEY_REUSED"

    from sqlalchemy import func, select

    from pi.auth.adapters.postgres.tables import idempotency_keys, merchants

    async with auth_engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(merchants))).scalar() == 1
        stored = (await conn.execute(select(idempotency_keys.c.response))).scalar_one()
    assert first.api_key_secret.encode() not in stored


async def test_concurrent_duplicates_create_one_merchant(auth_rpc: AuthRpc) -> None:
    request = auth_pb2.CreateMerchantRequest(display_name="Acme", request_id="req-race")
    results = await asyncio.gather(
        *(auth_rpc.auth.CreateMerchant(request, metadata=auth_rpc.admin) for _ in range(8))
    )
    assert len({r.merchant.id for r in results}) == 1
    assert len({r.api_key_secret for r in results}) == 1


async def test_create_api_key_is_idempotent_per_merchant(auth_rpc: AuthRpc) -> None:
    _, alice = await auth_rpc.merchant_with_token("Alice")
    _, bob = await auth_rpc.merchant_with_token("Bob")
    request = auth_pb2.CreateApiKeyRequest(display_name="CI", request_id="k-1")
    a1 = await auth_rpc.auth.CreateApiKey(request, metadata=auth_rpc.bearer(alice))
    a2 = await auth_rpc.auth.CreateApiKey(request, metadata=auth_rpc.bearer(alice))
    b1 = await auth_rpc.auth.CreateApiKey(request, metadata=auth_rpc.bearer(bob))
    assert a1 == a2
    assert b1.api_key.id != a1.api_key.id


async def test_request_id_and_header_must_agree(auth_rpc: AuthRpc) -> None:
    error = await _fails(
        auth_rpc.auth.CreateMerchant(
            auth_pb2.CreateMerchantRequest(display_name="Acme", request_id="a"),
            metadata=(*auth_rpc.admin, ("idempotency-key", "b")),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert _violations(error) == ["request_id"]


# -- listing ---------------------------------------------------------------------------------


async def test_list_api_keys_pages_newest_first(auth_rpc: AuthRpc) -> None:
    created, token = await auth_rpc.merchant_with_token()
    _, other = await auth_rpc.merchant_with_token("Other")
    made = [created.api_key.id]
    for i in range(4):
        response = await auth_rpc.auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(display_name=f"k{i}"), metadata=auth_rpc.bearer(token)
        )
        made.append(response.api_key.id)

    seen: list[str] = []
    page_token = ""
    pages = 0
    while True:
        page = await auth_rpc.auth.ListApiKeys(
            auth_pb2.ListApiKeysRequest(page_size=2, page_token=page_token),
            metadata=auth_rpc.bearer(token),
        )
        pages += 1
        seen.extend(k.id for k in page.api_keys)
        if not page.next_page_token:
            break
        if pages == 1:
            # A cursor is bound to its merchant.
            error = await _fails(
                auth_rpc.auth.ListApiKeys(
                    auth_pb2.ListApiKeysRequest(page_size=2, page_token=page.next_page_token),
                    metadata=auth_rpc.bearer(other),
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert _violations(error) == ["page_token"]
        page_token = page.next_page_token
    assert seen == list(reversed(made))
    assert pages == 3
