"""The error and auth interceptors on a real in-process grpc.aio server."""

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.platform.kernel.errors import FieldViolation, InvalidArgument, NotFound
from pi.platform.kernel.principal import current_principal, principal_of, require_merchant
from pi.platform.runtime.interceptors import AuthInterceptor
from pi.platform.runtime.server import create_server
from pi.platform.security.tokens import RevocationList, StaticKeySource, TokenVerifier

ADMIN, SERVICE = "adm_test_token_123", "svc_test_token_456"
SECRET_DETAIL = "db password is hunter2"


class _Servicer(auth_pb2_grpc.AuthServiceServicer):
    async def CreateMerchant(self, request: Any, context: Any) -> Any:
        raise InvalidArgument(
            "The request has invalid fields.",
            [
                FieldViolation("display_name", "is required."),
                FieldViolation("request_id", "is too long."),
            ],
        )

    async def RevokeToken(self, request: Any, context: Any) -> Any:
        raise NotFound("No such token.", reason="TOKEN_NOT_FOUND", metadata={"token_id": "t1"})

    async def RevokeApiKey(self, request: Any, context: Any) -> Any:
        raise RuntimeError(SECRET_DETAIL)

    async def ListApiKeys(self, request: Any, context: Any) -> Any:
        p = principal_of(context)
        return auth_pb2.ListApiKeysResponse(next_page_token=f"{p.kind}:{p.merchant_id}")

    async def CreateApiKey(self, request: Any, context: Any) -> Any:
        merchant_id = require_merchant(principal_of(context))
        return auth_pb2.CreateApiKeyResponse(api_key_secret=merchant_id)

    async def GetJwks(self, request: Any, context: Any) -> Any:
        p = current_principal()
        return auth_pb2.GetJwksResponse(
            keys=[auth_pb2.JsonWebKey(kid=p.kind if p else "anonymous")]
        )

    async def IssueToken(self, request: Any, context: Any) -> Any:
        if request.api_key_id == "downstream-down":
            channel = grpc.aio.insecure_channel("127.0.0.1:1")
            try:
                await auth_pb2_grpc.AuthServiceStub(channel).GetJwks(
                    auth_pb2.GetJwksRequest(), timeout=0.3
                )
            finally:
                await channel.close()
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "servicer's own abort")


@pytest.fixture
async def stub(es256_signer: Any) -> AsyncIterator[auth_pb2_grpc.AuthServiceStub]:
    verifier = TokenVerifier(
        StaticKeySource({es256_signer.kid: es256_signer.public_key}),
        RevocationList(),
        "pi-platform",
        "pi-api",
    )
    auth = AuthInterceptor(
        verifier,
        ADMIN,
        SERVICE,
        public_methods=["/pi.auth.v1.AuthService/GetJwks", "/pi.auth.v1.AuthService/IssueToken"],
    )
    server = create_server([auth])
    auth_pb2_grpc.add_AuthServiceServicer_to_server(_Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield auth_pb2_grpc.AuthServiceStub(channel)
    await channel.close()
    await server.stop(None)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def call_error(coro: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value


def details(error: grpc.aio.AioRpcError) -> tuple[Any, list[Any]]:
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info, list(status.details[1:])


async def test_invalid_argument_has_error_info_and_bad_request(stub: Any) -> None:
    error = await call_error(
        stub.CreateMerchant(auth_pb2.CreateMerchantRequest(), metadata=bearer(ADMIN))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "The request has invalid fields."
    info, rest = details(error)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "pi.platform")
    bad = error_details_pb2.BadRequest()
    assert rest[0].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("display_name", "is required."),
        ("request_id", "is too long."),
    ]


async def test_domain_error_reason_and_metadata_reach_the_client(stub: Any) -> None:
    error = await call_error(
        stub.RevokeToken(auth_pb2.RevokeTokenRequest(token_id="t1"), metadata=bearer(ADMIN))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info, rest = details(error)
    assert info.reason == "TOKEN_NOT_FOUND"
    assert dict(info.metadata) == {"token_id": "t1"}
    assert rest == []


async def test_unexpected_exception_is_internal_without_details(
    stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="pi.platform.runtime.interceptors"):
        error = await call_error(
            stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id="k"), metadata=bearer(ADMIN))
        )
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "Internal error."
    assert SECRET_DETAIL not in str(error.debug_error_string())
    assert SECRET_DETAIL not in repr(error.trailing_metadata())
    assert "Traceback" not in str(error)
    assert rpc_status.from_call(error) is None
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "RevokeApiKey" in logged[0].getMessage()


async def test_a_servicer_abort_passes_through(stub: Any) -> None:
    error = await call_error(stub.IssueToken(auth_pb2.IssueTokenRequest()))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "servicer's own abort"


async def test_a_downstream_outage_is_unavailable_for_the_caller(stub: Any) -> None:
    error = await call_error(
        stub.IssueToken(auth_pb2.IssueTokenRequest(api_key_id="downstream-down"))
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert details(error)[0].reason == "DEPENDENCY_UNAVAILABLE"


async def test_missing_or_bad_credentials_are_unauthenticated(stub: Any) -> None:
    for metadata, reason in [
        ((), "TOKEN_MISSING"),
        ((("authorization", "Basic abc"),), "TOKEN_INVALID"),
        (bearer("not-a-token"), "TOKEN_INVALID"),
        (bearer(ADMIN + "x"), "TOKEN_INVALID"),
    ]:
        error = await call_error(stub.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=metadata))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        info, _ = details(error)
        assert info.reason == reason


async def test_admin_service_and_merchant_principals(stub: Any, es256_signer: Any) -> None:
    request = auth_pb2.ListApiKeysRequest()
    admin = await stub.ListApiKeys(request, metadata=bearer(ADMIN))
    assert admin.next_page_token == "admin:None"
    service = await stub.ListApiKeys(request, metadata=bearer(SERVICE))
    assert service.next_page_token == "service:None"
    merchant = await stub.ListApiKeys(request, metadata=bearer(es256_signer.sign("mer_7")))
    assert merchant.next_page_token == "merchant:mer_7"


async def test_permission_denied_for_the_wrong_kind_of_caller(stub: Any) -> None:
    error = await call_error(
        stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(), metadata=bearer(ADMIN))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert details(error)[0].reason == "PERMISSION_DENIED"


async def test_expired_token_is_unauthenticated_with_reason(stub: Any, es256_signer: Any) -> None:
    import time

    now = int(time.time())
    token = es256_signer.sign(iat=now - 2000, exp=now - 1000)
    error = await call_error(
        stub.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=bearer(token))
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert details(error)[0].reason == "TOKEN_EXPIRED"


async def test_public_methods_need_no_token_and_ignore_a_bad_one(
    stub: Any, es256_signer: Any
) -> None:
    anonymous = await stub.GetJwks(auth_pb2.GetJwksRequest())
    assert anonymous.keys[0].kid == "anonymous"
    stale = await stub.GetJwks(auth_pb2.GetJwksRequest(), metadata=bearer("expired-junk"))
    assert stale.keys[0].kid == "anonymous"
    known = await stub.GetJwks(auth_pb2.GetJwksRequest(), metadata=bearer(es256_signer.sign()))
    assert known.keys[0].kid == "merchant"


async def test_principal_does_not_leak_between_calls(stub: Any, es256_signer: Any) -> None:
    import asyncio

    tokens = {f"mer_{i}": es256_signer.sign(f"mer_{i}") for i in range(20)}
    results = await asyncio.gather(
        *(
            stub.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=bearer(token))
            for token in tokens.values()
        )
    )
    assert [r.next_page_token for r in results] == [f"merchant:{m}" for m in tokens]
