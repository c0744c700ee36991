"""Traces that cost nothing unless the edge sampled the request.

The edge (Envoy) decides which requests are traced and says so in the W3C `traceparent`
header's sampled flag; services only follow (`ParentBased`): they never start a trace of
their own. So the common, unsampled request does no span work at all here: the server
interceptor looks for a `traceparent` ending in a sampled flag and, finding none, goes
on. Only a sampled request pays for the OpenTelemetry SDK (spans, context, export).

- `server_span(...)`: the span of an incoming sampled RPC, made current.
- `client_span(...)`: the span of an outgoing call, when the current work is traced: a
  request's span, or background work done `on_behalf_of` traced requests (its parent is
  the first of them, the others are links).
- `current_traceparent()`: what to store with work left for later (outbox rows, facts).
- `unit_span(...)`: a database unit of work inside a traced request.

`install(provider)` turns tracing on (`pi.platform.observability.setup` does it when
OTEL_EXPORTER_OTLP_ENDPOINT is set); until then every function here is a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags

from pi.platform.kernel.causes import causes
from pi.platform.observability.codes import SERVER_FAULT_CODES

__all__ = [
    "TRACEPARENT",
    "client_span",
    "current_traceparent",
    "format_traceparent",
    "install",
    "parse_traceparent",
    "sampled_traceparent",
    "server_span",
    "uninstall",
    "unit_span",
]

TRACEPARENT = "traceparent"
_SAMPLED_LAST_DIGITS = frozenset("13579bdfBDF")  # flags byte with bit 0 (sampled) set
_TRACEPARENT_LENGTH = 55  # "00-" + 32 + "-" + 16 + "-" + 2

_tracer: trace.Tracer | None = None


def install(provider: trace.TracerProvider) -> None:
    """Trace sampled requests with `provider` (its sampler should be parent-based)."""
    global _tracer
    _tracer = provider.get_tracer("pi.platform")


def uninstall() -> None:
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


def sampled_traceparent(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The `traceparent` in `metadata` if tracing is on and it says "sampled", else None.

    The whole cost of an unsampled request: one pass over the metadata keys.
    """
    if _tracer is None or not metadata:
        return None
    for key, value in metadata:
        if key == TRACEPARENT:
            if (
                isinstance(value, str)
                and len(value) == _TRACEPARENT_LENGTH
                and value[-1] in _SAMPLED_LAST_DIGITS
            ):
                return value
            return None
    return None


def parse_traceparent(value: str) -> SpanContext | None:
    """The remote span context `value` names, or None if it is malformed."""
    parts = value.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1))


def format_traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The current span's `traceparent` if it is sampled (what to keep with work left for
    later), else None."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.trace_flags.sampled:
        return None
    return format_traceparent(context)


def _rpc_attributes(full_method: str) -> dict[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def server_span(full_method: str, traceparent: str) -> tuple[Span, object] | None:
    """Start the SERVER span of a sampled incoming RPC and make it current.

    Returns (span, token) for `end_span`, or None if `traceparent` is malformed.
    """
    tracer = _tracer
    parent = parse_traceparent(traceparent)
    if tracer is None or parent is None:
        return None
    span = tracer.start_span(
        full_method.lstrip("/"),
        context=trace.set_span_in_context(NonRecordingSpan(parent)),
        kind=SpanKind.SERVER,
        attributes=_rpc_attributes(full_method),
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    return span, token


def client_span(full_method: str) -> Span | None:
    """Start the CLIENT span of an outgoing call if the current work is traced, else None."""
    tracer = _tracer
    if tracer is None:
        return None
    current = trace.get_current_span()
    if current.get_span_context().trace_flags.sampled:
        return tracer.start_span(
            full_method.lstrip("/"),
            kind=SpanKind.CLIENT,
            attributes=_rpc_attributes(full_method),
        )
    references = causes()
    if not references:
        return None
    contexts = [c for c in map(parse_traceparent, references) if c and c.trace_flags.sampled]
    if not contexts:
        return None
    return tracer.start_span(
        full_method.lstrip("/"),
        context=trace.set_span_in_context(NonRecordingSpan(contexts[0])),
        kind=SpanKind.CLIENT,
        attributes={**_rpc_attributes(full_method), "pi.causes": len(contexts)},
        links=[Link(c) for c in contexts[1:]],
    )


def end_span(span: Span, code_name: str, token: object | None = None) -> None:
    """Record the gRPC status (Go spelling in `rpc.grpc.status`), end `span`, and detach
    its context if `token` made it current."""
    span.set_attribute("rpc.grpc.status", code_name)
    if code_name in SERVER_FAULT_CODES:
        span.set_status(trace.Status(trace.StatusCode.ERROR, code_name))
    span.end()
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


def unit_span(mode: str) -> Span | None:
    """A span for a database unit of work, if the current request is traced; its caller
    ends it. Not made current: nothing runs inside it that makes spans of its own."""
    tracer = _tracer
    if tracer is None or not trace.get_current_span().get_span_context().trace_flags.sampled:
        return None
    return tracer.start_span(
        f"db.unit {mode}",
        kind=SpanKind.CLIENT,
        attributes={"db.system": "postgresql", "pi.unit.mode": mode},
    )
