"""Server interceptors: errors become statuses, bearer credentials become principals,
merchants are rate limited.

`server.create_server` installs `ErrorInterceptor` outermost itself; a service passes
`AuthInterceptor(...)` then `RateLimitInterceptor(...)` (in that order: the rate limit
counts the principal the auth interceptor found). All our RPCs are unary-unary; health
and reflection (streaming) are public and pass through untouched.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

import grpc

from pi.platform.kernel.errors import DomainError, Unauthenticated, Unavailable
from pi.platform.kernel.principal import (
    Principal,
    current_principal,
    reset_principal,
    set_principal,
)
from pi.platform.runtime.ratelimit import RateLimiter
from pi.platform.runtime.status import INTERNAL_MESSAGE, abort_with
from pi.platform.security.crypto import constant_time_equal
from pi.platform.security.scopes import check_scope
from pi.platform.security.tokens import TokenVerifier

log = logging.getLogger(__name__)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"
UnaryBehavior = Callable[[Any, Any], Any]

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = (
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
ALWAYS_PUBLIC = tuple(f"/{name}/" for name in (HEALTH_SERVICE, *REFLECTION_SERVICES))

_DEPENDENCY_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_DEPENDENCY_UNAVAILABLE = Unavailable(
    "A service this call depends on is unavailable; retry with the same request.",
    reason="DEPENDENCY_UNAVAILABLE",
)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """`DomainError` → its status with details; anything else → INTERNAL, logged, no leak.

    An unhandled UNAVAILABLE / DEADLINE_EXCEEDED from a downstream call becomes
    UNAVAILABLE (reason DEPENDENCY_UNAVAILABLE) so the client knows a retry may work.
    """

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        return _replace_unary(handler, _guard(handler.unary_unary, handler_call_details.method))


def _guard(behavior: UnaryBehavior, method: str) -> UnaryBehavior:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except DomainError as error:
            await abort_with(context, error)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except grpc.aio.AioRpcError as error:
            if error.code() not in _DEPENDENCY_DOWN:
                log.exception("unhandled downstream error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
            # A service this call depends on is down or slow: the caller may retry.
            log.warning("dependency unavailable in %s: %s", method, error.code().name)
            await abort_with(context, _DEPENDENCY_UNAVAILABLE)
        except Exception:
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    return guarded


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Turns `authorization: Bearer <x>` into the call's `Principal`.

    The admin token gives the admin principal and the service token the service
    principal (both compared in constant time); anything else must be a valid access
    token (a merchant), whose scopes must include the one the method needs
    (`pi.platform.security.scopes`, checked here for every RPC). `public_methods` are
    full method names ("/pi.auth.v1.AuthService/IssueToken") or whole services
    ("/pi.auth.v1.AuthService/");
    health and reflection are always public. A public method gets a principal if it
    carries valid credentials and none otherwise (a stale token must not block
    IssueToken), so it calls `current_principal()` rather than `principal_of`.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        admin_token: str,
        service_token: str,
        public_methods: Iterable[str] = (),
    ) -> None:
        self._verifier = verifier
        self._admin_token = admin_token.encode()
        self._service_token = service_token.encode()
        self._public_exact: frozenset[str] = frozenset(
            m for m in public_methods if not m.endswith("/")
        )
        self._public_prefixes: tuple[str, ...] = ALWAYS_PUBLIC + tuple(
            m for m in public_methods if m.endswith("/")
        )

    def is_public(self, method: str) -> bool:
        return method in self._public_exact or method.startswith(self._public_prefixes)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        public = self.is_public(method)
        if handler.unary_unary is None:
            return handler if public else _refuse_streaming(handler)
        authorization = _header(handler_call_details.invocation_metadata, "authorization")
        return _replace_unary(
            handler, self._authenticated(handler.unary_unary, authorization, public, method)
        )

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal for an `authorization` header value; `Unauthenticated` if none."""
        if not authorization:
            raise Unauthenticated(
                "This call requires an `authorization: Bearer <token>` header.",
                reason="TOKEN_MISSING",
            )
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated(
                "The authorization header must be `Bearer <token>`.", reason="TOKEN_INVALID"
            )
        presented = credential.encode()
        is_admin = constant_time_equal(presented, self._admin_token)
        is_service = constant_time_equal(presented, self._service_token)
        if is_admin:
            return Principal.admin()
        if is_service:
            return Principal.service()
        return await self._verifier.verify(credential)

    def _authenticated(
        self, behavior: UnaryBehavior, authorization: str | None, public: bool, method: str
    ) -> UnaryBehavior:
        async def authenticated(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            # A service the caller interceptor (runtime.callers) knew by its certificate.
            principal = current_principal()
            if principal is not None and principal.kind == "service":
                return await behavior(request, context)
            if authorization or not public:
                try:
                    principal = await self.authenticate(authorization)
                    if not public:
                        check_scope(method, principal)
                except DomainError as error:
                    if not public:
                        await abort_with(context, error)
            token = set_principal(principal)
            try:
                return await behavior(request, context)
            finally:
                reset_principal(token)

        return authenticated


class RateLimitInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by a merchant principal against `limiter` (`runtime.ratelimit`).

    Install it after `AuthInterceptor`, which sets the principal it reads. Calls by the
    admin, by services and without credentials are not counted. Over the limit the call
    ends with RESOURCE_EXHAUSTED (reason RATE_LIMITED) before it reaches the servicer.
    """

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        # Per method: the handler last seen and its rate-limited wrapper, built once.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _replace_unary(handler, self._limited(handler.unary_unary))
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _limited(self, behavior: UnaryBehavior) -> UnaryBehavior:
        check = self.limiter.check

        async def limited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            principal = current_principal()
            if principal is not None and principal.kind == "merchant" and principal.merchant_id:
                try:
                    await check(principal.merchant_id)
                except DomainError as error:
                    await abort_with(context, error)
            return await behavior(request, context)

        return limited


def _header(metadata: Any, name: str) -> str | None:
    for key, value in metadata or ():
        if key == name:
            return value if isinstance(value, str) else None
    return None


def _replace_unary(handler: Handler, behavior: UnaryBehavior) -> Handler:
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _refuse_streaming(handler: Handler) -> Handler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Streaming methods are not supported.")

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
