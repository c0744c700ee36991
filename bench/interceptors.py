"""`python -m bench.interceptors`: CPU per call of the observability interceptors.

One process runs a grpc.aio server and a client calling it (a trivial unary RPC, health
Check, from `CONCURRENCY` callers), so the CPU measured is the server's and the client's
together. Four runs of `CALLS` calls each:

- off: no observability interceptors (PI_OBSERVABILITY=off);
- on, untraced: server and client interceptors, no `traceparent`;
- on, unsampled: a `traceparent` with the sampled flag off (what the edge sends for most
  requests);
- on, sampled: every call traced (a server span, spans exported to nowhere).

It prints CPU µs per call for each and the difference to "off". On a shared machine the
end-to-end numbers are noisy (tens of µs), so `--direct` also times the interceptors'
own code alone: the server wrapper around a handler and the client interceptor around a
continuation, called in a loop with no network, which is what they add to each call
besides gRPC's own per-interceptor dispatch. Not a test: timings are never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from pi.platform.observability import switch, tracing
from pi.platform.observability.telemetry import tracer_provider
from pi.platform.runtime.clients import service_channel
from pi.platform.runtime.server import create_server

CALLS = 20_000
CONCURRENCY = 32
UNSAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class _Nowhere(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def _run(label: str, calls: int, *, observed: bool, traceparent: str | None) -> float:
    switch.set_enabled(observed)
    server = create_server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = service_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest()
    metadata = (("traceparent", traceparent),) if traceparent else None

    async def caller(n: int) -> None:
        for _ in range(n):
            await stub.Check(request, metadata=metadata)

    await asyncio.gather(*(caller(50) for _ in range(CONCURRENCY)))  # warm up
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(calls // CONCURRENCY) for _ in range(CONCURRENCY)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await channel.close()
    await server.stop(None)
    per_call = cpu / calls * 1e6
    print(f"{label:<14} {per_call:8.1f} µs CPU/call   {calls / wall:8.0f} calls/s")
    return per_call


async def _main(calls: int, rounds: int) -> None:
    results: dict[str, list[float]] = {}
    runs = (
        ("off", False, None),
        ("on, untraced", True, None),
        ("on, unsampled", True, UNSAMPLED),
        ("on, sampled", True, SAMPLED),
    )
    for _ in range(rounds):
        for label, observed, traceparent in runs:
            value = await _run(label, calls, observed=observed, traceparent=traceparent)
            results.setdefault(label, []).append(value)
    best = {label: min(values) for label, values in results.items()}
    print("\nbest of", rounds, "rounds (server + client CPU per call):")
    for label, value in best.items():
        print(f"  {label:<14} {value:8.1f} µs   (+{value - best['off']:.1f} µs vs off)")


class _Context:
    """What the server wrapper asks of a servicer context."""

    def code(self) -> None:
        return None


class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class _Call:
    def __await__(self):  # type: ignore[no-untyped-def]
        yield from ()
        return b""


async def _direct(iterations: int) -> None:
    from pi.platform.observability.interceptors import ClientObservability, ServerObservability

    async def behavior(request: object, context: object) -> bytes:
        return b""

    handler: Any = grpc.unary_unary_rpc_method_handler(behavior)

    async def continuation(details: object) -> object:
        return handler

    async def client_continuation(details: object, request: object) -> object:
        return _Call()

    method = "/grpc.health.v1.Health/Check"
    server = ServerObservability()
    client = ClientObservability()
    context = _Context()
    client_details = grpc.aio.ClientCallDetails(method, 5.0, None, None, None)

    async def time_it(label: str, traceparent: str | None) -> None:
        metadata = (("traceparent", traceparent),) if traceparent else ()
        details = _Details(method, metadata)
        base = time.process_time()
        for _ in range(iterations):
            await behavior(None, context)
        base = time.process_time() - base
        spent = time.process_time()
        for _ in range(iterations):
            wrapped: Any = await server.intercept_service(continuation, details)  # type: ignore[arg-type]
            await wrapped.unary_unary(None, context)
        server_us = (time.process_time() - spent - base) / iterations * 1e6
        # The client inside the request's span when it is sampled, as a servicer calls.
        current = tracing.server_span(method, traceparent) if traceparent else None
        spent = time.process_time()
        for _ in range(iterations):
            await client.intercept_unary_unary(client_continuation, client_details, None)
        client_us = (time.process_time() - spent) / iterations * 1e6
        if current is not None:
            tracing.end_span(current[0], "OK", current[1])
        print(f"  {label:<14} server {server_us:6.1f} µs   client {client_us:6.1f} µs")

    print(f"interceptors' own code, {iterations} calls each (CPU per call):")
    await time_it("untraced", None)
    await time_it("unsampled", UNSAMPLED)
    await time_it("sampled", SAMPLED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=CALLS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--direct", action="store_true", help="only the interceptors' code")
    args = parser.parse_args()
    import uvloop

    tracing.install(tracer_provider("bench", _Nowhere()))
    if args.direct:
        uvloop.run(_direct(args.calls))
    else:
        uvloop.run(_main(args.calls, args.rounds))


if __name__ == "__main__":
    main()
