"""The `pi.auth.v1` servicers: proto → plain values → one use case → proto.

Requests and principals go to `pi.auth.app` use cases; records come back and are mapped
to messages here. Errors are domain errors, turned into statuses by the platform's
interceptor.
"""

from __future__ import annotations

from typing import Any

import grpc

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.auth.app.use_cases import AuthUseCases
from pi.auth.domain.merchants import ApiKey, Merchant
from pi.auth.domain.tokens import RevokedToken
from pi.platform.kernel import scopes
from pi.platform.kernel.principal import principal_of
from pi.platform.runtime.idempotency import fingerprint, key_from
from pi.platform.runtime.peers import client_address
from pi.platform.runtime.protobuf import timestamp, to_datetime

Context = grpc.aio.ServicerContext[Any, Any]

# Responses that carry a secret or a token must not be stored by HTTP caches (RFC 6749
# §5.1); Envoy passes this header through to HTTP/JSON clients.
_NO_STORE = (("cache-control", "no-store"),)


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, use_cases: AuthUseCases) -> None:
        self._use_cases = use_cases

    async def CreateMerchant(
        self, request: auth_pb2.CreateMerchantRequest, context: Context
    ) -> auth_pb2.CreateMerchantResponse:
        result = await self._use_cases.create_merchant(
            principal_of(context),
            request.display_name,
            idempotency_key=key_from(request.request_id, context),
            fingerprint=fingerprint(request),
        )
        await context.send_initial_metadata(_NO_STORE)
        return auth_pb2.CreateMerchantResponse(
            merchant=_merchant(result.merchant),
            api_key=_api_key(result.api_key),
            api_key_secret=result.secret,
        )

    async def IssueToken(
        self, request: auth_pb2.IssueTokenRequest, context: Context
    ) -> auth_pb2.IssueTokenResponse:
        issued = await self._use_cases.issue_token(
            request.api_key_id,
            request.api_key_secret,
            client=client_address(context.invocation_metadata(), context.peer()),
            scope_names=request.scopes,
        )
        grant = issued.grant
        await context.send_initial_metadata(_NO_STORE)
        return auth_pb2.IssueTokenResponse(
            access_token=issued.access_token,
            token_type="Bearer",
            expires_in=int((grant.expire_time - grant.issue_time).total_seconds()),
            expire_time=timestamp(grant.expire_time),
            token_id=grant.token_id,
            scopes=scopes.ordered(grant.scopes),
        )

    async def RevokeToken(
        self, request: auth_pb2.RevokeTokenRequest, context: Context
    ) -> auth_pb2.RevokeTokenResponse:
        revoked = await self._use_cases.revoke_token(principal_of(context), request.token_id)
        return auth_pb2.RevokeTokenResponse(
            token_id=revoked.token_id, revoke_time=timestamp(revoked.revoke_time)
        )

    async def GetJwks(
        self, request: auth_pb2.GetJwksRequest, context: Context
    ) -> auth_pb2.GetJwksResponse:
        return auth_pb2.GetJwksResponse(
            keys=[
                auth_pb2.JsonWebKey(
                    kty=jwk["kty"],
                    crv=jwk["crv"],
                    x=jwk["x"],
                    y=jwk["y"],
                    kid=jwk["kid"],
                    use=jwk["use"],
                    alg=jwk["alg"],
                )
                for jwk in self._use_cases.get_jwks()
            ]
        )

    async def CreateApiKey(
        self, request: auth_pb2.CreateApiKeyRequest, context: Context
    ) -> auth_pb2.CreateApiKeyResponse:
        created = await self._use_cases.create_api_key(
            principal_of(context),
            request.display_name,
            idempotency_key=key_from(request.request_id, context),
            fingerprint=fingerprint(request),
            scope_names=request.scopes,
        )
        await context.send_initial_metadata(_NO_STORE)
        return auth_pb2.CreateApiKeyResponse(
            api_key=_api_key(created.api_key), api_key_secret=created.secret
        )

    async def ListApiKeys(
        self, request: auth_pb2.ListApiKeysRequest, context: Context
    ) -> auth_pb2.ListApiKeysResponse:
        keys, next_page_token = await self._use_cases.list_api_keys(
            principal_of(context),
            page_size_value=request.page_size,
            page_token=request.page_token,
        )
        return auth_pb2.ListApiKeysResponse(
            api_keys=[_api_key(key) for key in keys], next_page_token=next_page_token
        )

    async def RevokeApiKey(
        self, request: auth_pb2.RevokeApiKeyRequest, context: Context
    ) -> auth_pb2.RevokeApiKeyResponse:
        key = await self._use_cases.revoke_api_key(principal_of(context), request.id)
        return auth_pb2.RevokeApiKeyResponse(api_key=_api_key(key))


class AuthInternalServicer(auth_pb2_grpc.AuthInternalServiceServicer):
    def __init__(self, use_cases: AuthUseCases) -> None:
        self._use_cases = use_cases

    async def ListRevokedTokens(
        self, request: auth_pb2.ListRevokedTokensRequest, context: Context
    ) -> auth_pb2.ListRevokedTokensResponse:
        after = to_datetime(request.revoked_after) if request.HasField("revoked_after") else None
        revoked = await self._use_cases.list_revoked_tokens(principal_of(context), after)
        return auth_pb2.ListRevokedTokensResponse(
            revoked_tokens=[_revoked_token(r) for r in revoked]
        )


def _merchant(merchant: Merchant) -> auth_pb2.Merchant:
    return auth_pb2.Merchant(
        id=merchant.id,
        display_name=merchant.display_name,
        create_time=timestamp(merchant.create_time),
    )


def _api_key(key: ApiKey) -> auth_pb2.ApiKey:
    message = auth_pb2.ApiKey(
        id=key.id,
        merchant_id=key.merchant_id,
        display_name=key.display_name,
        state=auth_pb2.API_KEY_STATE_ACTIVE if key.active else auth_pb2.API_KEY_STATE_REVOKED,
        create_time=timestamp(key.create_time),
        scopes=scopes.ordered(key.scopes),
    )
    if key.revoke_time is not None:
        message.revoke_time.CopyFrom(timestamp(key.revoke_time))
    return message


def _revoked_token(revoked: RevokedToken) -> auth_pb2.RevokedToken:
    return auth_pb2.RevokedToken(
        token_id=revoked.token_id,
        expire_time=timestamp(revoked.expire_time),
        revoke_time=timestamp(revoked.revoke_time),
    )
