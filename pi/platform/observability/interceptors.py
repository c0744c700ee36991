"""RED metrics and traces for every unary RPC a service answers or makes.

`ServerObservability` goes first in a server's interceptors (before the error
interceptor, so it sees the final status of a domain error rather than an exception)
and `ClientObservability` on every channel to another service. Per call they count the
start, time the call and count its end by code (go-grpc-prometheus's names, Go code
spellings), with label children looked up once per method. A span is made only for a
sampled request (`tracing`): for the rest, tracing costs one pass over the metadata.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeAlias

import grpc
from prometheus_client import Counter, Histogram

from pi.platform.observability import metrics, tracing
from pi.platform.observability.codes import go_name

__all__ = ["ClientObservability", "ServerObservability"]

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Any]"


class _Rpc:
    """One method's label children: built on its first call, reused after."""

    __slots__ = ("_handled", "_handled_by_code", "method", "seconds", "started")

    def __init__(self, method: str, started: Counter, seconds: Histogram, handled: Counter):
        service, _, name = method.lstrip("/").partition("/")
        labels = ("unary", service, name)
        self.method = method
        self.started = started.labels(*labels)
        self.seconds = seconds.labels(*labels)
        self._handled = handled
        self._handled_by_code: dict[str, Any] = {}

    def handled(self, code: str) -> Any:
        child = self._handled_by_code.get(code)
        if child is None:
            service, _, name = self.method.lstrip("/").partition("/")
            child = self._handled.labels("unary", service, name, code)
            self._handled_by_code[code] = child
        return child


class ServerObservability(grpc.aio.ServerInterceptor):
    """grpc_server_* metrics, and the SERVER span of sampled requests."""

    def __init__(self) -> None:
        self._rpcs: dict[str, _Rpc] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        rpc = self._rpcs.get(method)
        if rpc is None:
            rpc = self._rpcs[method] = _Rpc(
                method,
                metrics.grpc_server_started,
                metrics.grpc_server_handling_seconds,
                metrics.grpc_server_handled,
            )
        traceparent = tracing.sampled_traceparent(handler_call_details.invocation_metadata)
        return grpc.unary_unary_rpc_method_handler(
            _observed(handler.unary_unary, rpc, traceparent),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _observed(
    behavior: Callable[[Any, Any], Any], rpc: _Rpc, traceparent: str | None
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]:
    async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        rpc.started.inc()
        start = perf_counter()
        span = tracing.server_span(rpc.method, traceparent) if traceparent else None
        code = "Unknown"
        try:
            response = await behavior(request, context)
            code = go_name(context.code())
            return response
        except grpc.aio.AbortError:
            code = go_name(context.code())
            raise
        except asyncio.CancelledError:
            code = "Canceled"
            raise
        finally:
            rpc.seconds.observe(perf_counter() - start)
            rpc.handled(code).inc()
            if span is not None:
                tracing.end_span(span[0], code, span[1])

    return observed


class ClientObservability(grpc.aio.UnaryUnaryClientInterceptor):
    """grpc_client_* metrics, and a CLIENT span (with `traceparent` sent on) when the
    current work is traced."""

    def __init__(self) -> None:
        self._rpcs: dict[str, _Rpc] = {}

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        if isinstance(method, bytes):
            method = method.decode()
        rpc = self._rpcs.get(method)
        if rpc is None:
            rpc = self._rpcs[method] = _Rpc(
                method,
                metrics.grpc_client_started,
                metrics.grpc_client_handling_seconds,
                metrics.grpc_client_handled,
            )
        span = tracing.client_span(method)
        if span is not None:
            client_call_details = _with_traceparent(client_call_details, span)
        rpc.started.inc()
        start = perf_counter()
        code = "Unknown"
        try:
            call = await continuation(client_call_details, request)
            await call
            code = "OK"
            # The call, not its response: the caller keeps its metadata and status.
            return call
        except grpc.aio.AioRpcError as error:
            code = go_name(error.code())
            raise
        except asyncio.CancelledError:
            code = "Canceled"
            raise
        finally:
            rpc.seconds.observe(perf_counter() - start)
            rpc.handled(code).inc()
            if span is not None:
                tracing.end_span(span, code)


def _with_traceparent(details: grpc.aio.ClientCallDetails, span: Any) -> grpc.aio.ClientCallDetails:
    metadata = [(k, v) for k, v in (details.metadata or ()) if k != tracing.TRACEPARENT]
    metadata.append((tracing.TRACEPARENT, tracing.format_traceparent(span.get_span_context())))
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=grpc.aio.Metadata(*metadata),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )
