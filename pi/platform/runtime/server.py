"""grpc.aio server bootstrap: health, reflection, background tasks and graceful drain.

The services' `bootstrap.py` call `pi.platform.runtime.wiring.run_service`, which amounts to:

    def run() -> None:
        server.run(_main)                      # installs uvloop, runs the coroutine

    async def _main() -> None:
        settings = PaymentsSettings.from_env()
        configure_logging(settings)
        database = await open_database(settings)
        ...build stores, use cases, servicer...
        try:
            await server.serve(
                settings,
                register=lambda s: add_PaymentServiceServicer_to_server(servicer, s),
                service_names=[payments_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name],
                interceptors=[AuthInterceptor(...)],
                background=[poller.run, dispatcher.run],
            )
        finally:
            await database.close()

`serve` returns after SIGTERM/SIGINT: health turns NOT_SERVING, new calls are refused,
in-flight calls get `GRACE_SECONDS` to finish, then background tasks are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pi.platform.config import ServiceSettings
from pi.platform.observability import metrics
from pi.platform.observability.switch import server_interceptors
from pi.platform.runtime.clients import MAX_MESSAGE_BYTES
from pi.platform.runtime.interceptors import ErrorInterceptor
from pi.platform.security.mesh import MeshTls

log = logging.getLogger(__name__)

GRACE_SECONDS = 10.0

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.so_reuseport", 0),
)

BackgroundTask = Callable[[], Awaitable[None]]


def create_server(
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    *,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Server:
    """A grpc.aio server with observability (RED metrics, spans) outermost, so it sees
    the status `ErrorInterceptor` gives an error, then `ErrorInterceptor`, then
    `interceptors`.

    Tests use it directly: `create_server([...])`, register servicers,
    `port = server.add_insecure_port("127.0.0.1:0")`, `await server.start()`.
    """
    chain: list[grpc.aio.ServerInterceptor] = [*server_interceptors(), ErrorInterceptor()]
    chain.extend(i for i in interceptors if not isinstance(i, ErrorInterceptor))
    return grpc.aio.server(
        interceptors=chain,
        options=[*SERVER_OPTIONS, *options],
    )


class HealthReporter:
    """Sets the health of the server (""), and of every named service, at once."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self.servicer = health.aio.HealthServicer()
        self._names = ("", *service_names)

    async def set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._names:
            await self.servicer.set(name, status)


async def serve(
    settings: ServiceSettings,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    background: Sequence[BackgroundTask] = (),
    *,
    grace: float = GRACE_SECONDS,
    stop: asyncio.Event | None = None,
    on_started: Callable[[int], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set), then drain and return.

    `service_names` are full proto service names, reported by health and reflection.
    `background` are coroutine factories started after the server is listening and
    restarted with backoff if they crash. `on_started(port)` reports the bound port.
    """
    server = create_server(interceptors)
    register(server)
    reporter = HealthReporter(service_names)
    health_pb2_grpc.add_HealthServicer_to_server(reporter.servicer, server)
    reflection.enable_server_reflection(
        (
            *service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = listen(server, settings.listen_address, settings.mesh_tls)
    health_server = None
    if settings.health_port is not None:
        health_server = _health_only(reporter, f"{settings.grpc_host}:{settings.health_port}")

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)

    await server.start()
    if health_server is not None:
        await health_server.start()
    await reporter.set(serving=True)
    tasks = [
        asyncio.create_task(_supervise(factory), name=_task_name(factory)) for factory in background
    ]
    log.info(
        "serving",
        extra={"service": settings.service, "address": f"{settings.grpc_host}:{port}"},
    )
    if on_started is not None:
        on_started(port)
    try:
        await stop.wait()
    finally:
        log.info("draining", extra={"grace_seconds": grace})
        await reporter.set(serving=False)
        await server.stop(grace)
        if health_server is not None:
            await health_server.stop(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sig in installed:
            loop.remove_signal_handler(sig)
        log.info("stopped")


def listen(server: grpc.aio.Server, address: str, tls: MeshTls | None) -> int:
    """Bind `address`: mutual TLS with `tls` (a client certificate required), else
    plaintext. Returns the port (`address` may ask for port 0)."""
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, tls.server_credentials())
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


def _health_only(reporter: HealthReporter, address: str) -> grpc.aio.Server:
    """A plaintext server with nothing but the health service, for the kubelet's probes
    (which cannot present a client certificate). It tells only SERVING or not."""
    health_server = grpc.aio.server(options=SERVER_OPTIONS)
    health_pb2_grpc.add_HealthServicer_to_server(reporter.servicer, health_server)
    listen(health_server, address, None)
    return health_server


def periodic(interval: float, job: Callable[[], Awaitable[object]], *, name: str) -> BackgroundTask:
    """A background task that runs `job` every `interval` seconds, the first time after one
    interval. A failed run is logged ("<name> failed") and the next one comes on schedule.
    """

    async def run_periodically() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception:
                log.exception("%s failed", name)

    run_periodically.__qualname__ = name
    return run_periodically


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The process entry point: run `main()` on uvloop (installed here, not at import)."""
    import uvloop

    uvloop.run(main())


async def _supervise(factory: BackgroundTask) -> None:
    backoff = 0.5
    name = _task_name(factory)
    while True:
        try:
            await factory()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s crashed; restarting in %.1fs", name, backoff)
            metrics.background_restarts.labels(name).inc()
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)


def _task_name(factory: BackgroundTask) -> str:
    return getattr(factory, "__qualname__", None) or repr(factory)
