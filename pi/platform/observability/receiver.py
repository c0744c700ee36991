"""A small OTLP/gRPC trace receiver that appends every span to a JSON-lines file.

`make run` starts it (`python -m pi.platform.observability.receiver --port 4317 --out
var/traces/spans.jsonl`) so that the edge's and the services' spans land somewhere with
no collector installed; the end-to-end tests read the same file. One line per span:

    {"trace_id": "...", "span_id": "...", "parent_span_id": "..." | null,
     "name": "pi.payments.v1.PaymentService/CreatePayment", "kind": "SERVER",
     "service": "payments", "start_ns": ..., "end_ns": ..., "status": "OK" | "ERROR" | "UNSET",
     "attributes": {...}, "links": [{"trace_id": ..., "span_id": ...}]}

In Kubernetes the OpenTelemetry Collector takes its place (k8s/monitoring).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

__all__ = ["SpanFile", "main", "spans_as_dicts"]

LINGER_QUIET_SECONDS = 2.0
LINGER_MAX_SECONDS = 8.0

_KINDS = {
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
    Span.SPAN_KIND_PRODUCER: "PRODUCER",
    Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
_STATUS = {
    Status.STATUS_CODE_UNSET: "UNSET",
    Status.STATUS_CODE_OK: "OK",
    Status.STATUS_CODE_ERROR: "ERROR",
}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def spans_as_dicts(
    request: trace_service_pb2.ExportTraceServiceRequest,
) -> Iterator[dict[str, Any]]:
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = resource.get("service.name", "")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex() or None,
                    "name": span.name,
                    "kind": _KINDS.get(span.kind, "UNSPECIFIED"),
                    "service": service,
                    "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                    "status": _STATUS.get(span.status.code, "UNSET"),
                    "attributes": _attributes(span.attributes),
                    "links": [
                        {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
                        for link in span.links
                    ],
                }


class SpanFile(trace_service_pb2_grpc.TraceServiceServicer):
    """Appends the spans of each export to `out`, one JSON object per line, flushed."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.last_export = time.monotonic()

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        lines = [json.dumps(span, sort_keys=True) + "\n" for span in spans_as_dicts(request)]
        self._out.writelines(lines)
        self._out.flush()
        self.last_export = time.monotonic()
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve(host: str, port: int, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("a", encoding="utf-8") as out:
        server = grpc.aio.server()
        spans = SpanFile(out)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(spans, server)
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        if server.add_insecure_port(f"{host}:{port}") == 0:
            raise SystemExit(f"cannot listen on {host}:{port}")
        await server.start()
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"OTLP receiver on {host}:{port}, writing spans to {out_path}", flush=True)
        await stop.wait()
        # Stopped together with the processes it serves, it keeps taking their last
        # spans (they flush as they exit) until none came for a while.
        deadline = time.monotonic() + LINGER_MAX_SECONDS
        while time.monotonic() < deadline:
            quiet = time.monotonic() - spans.last_export
            if quiet >= LINGER_QUIET_SECONDS:
                break
            await asyncio.sleep(LINGER_QUIET_SECONDS - quiet)
        await server.stop(1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OTLP/gRPC trace receiver to a JSON-lines file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4317)
    parser.add_argument("--out", type=Path, default=Path("var/traces/spans.jsonl"))
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.out))


if __name__ == "__main__":
    main()
