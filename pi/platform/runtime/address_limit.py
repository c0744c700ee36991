"""A per-client-address rate limit on the methods that take no token.

Methods like IssueToken have no merchant to count calls against, so before this limit
anyone could call them as fast as the edge let everyone together. `AddressLimitInterceptor`
counts each client address's calls (`peers.client_address`: the real peer as the edge
saw it) in the same fixed one-second windows as the per-merchant limit, in Redis across
replicas when configured (`runtime.ratelimit`), and ends calls over the limit with
RESOURCE_EXHAUSTED, reason RATE_LIMITED (HTTP 429). Health checks and reflection are never
counted. Like every limit here it fails open if Redis is down.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from pi.platform.cache import Cache, MemoryCache, RedisCache
from pi.platform.config import ServiceSettings
from pi.platform.kernel.errors import DomainError
from pi.platform.runtime.interceptors import Continuation, Handler, UnaryBehavior
from pi.platform.runtime.peers import client_address
from pi.platform.runtime.ratelimit import REDIS_TIMEOUT_SECONDS, RateLimiter
from pi.platform.runtime.status import abort_with


class AddressLimitInterceptor(grpc.aio.ServerInterceptor):
    """Counts calls to `methods` (full names) per client address against `limiter`."""

    def __init__(self, limiter: RateLimiter, methods: Iterable[str]) -> None:
        self.limiter = limiter
        self._methods = frozenset(m for m in methods if not m.endswith("/"))

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        if handler_call_details.method not in self._methods:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self._limited(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _limited(self, behavior: UnaryBehavior) -> UnaryBehavior:
        check = self.limiter.check

        async def limited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                await check(client_address(context.invocation_metadata(), context.peer()))
            except DomainError as error:
                await abort_with(context, error)
            return await behavior(request, context)

        return limited


def create_address_limit(
    settings: ServiceSettings, methods: Iterable[str]
) -> AddressLimitInterceptor | None:
    """The interceptor for `methods` (None without any, or with the limit at 0); close
    `interceptor.limiter.cache` when done."""
    names = [m for m in methods if not m.endswith("/")]
    if not names or settings.rate_limit_per_client_address <= 0:
        return None
    cache: Cache = (
        RedisCache(settings.redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS)
        if settings.redis_url
        else MemoryCache()
    )
    limiter = RateLimiter(
        cache,
        service=f"{settings.service}:addr",
        limit=settings.rate_limit_per_client_address,
        lease=1,
        subject="a client address",
    )
    return AddressLimitInterceptor(limiter, names)
