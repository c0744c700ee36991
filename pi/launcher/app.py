"""`make run`: the whole platform on one machine, supervised in the foreground.

Order of events: dev secrets and certificate → the database → migrations → the three
services (n replicas each) → Envoy once they are healthy → the demo merchant → addresses
and a curl example. Then it supervises (a crashed process is restarted with backoff)
until Ctrl-C or SIGTERM, and stops Envoy first, then the services (SIGTERM, SIGKILL after
a grace period), then the database.

The database: with no DATABASE_URL, an embedded PostgreSQL (`pi.platform.db.embedded`)
with its data in `<var>/postgres`, listening only on a unix socket there, sized for every
replica's full pool (`connections_for`); a second run finds the same data, and one
already running on that directory is reused (and left running). With DATABASE_URL, that
server. With no REDIS_URL, the services cache in process.

Secrets, certificate, logs and the database live in the var dir (`var/` under the
working directory unless `--var-dir` says otherwise), so a restart keeps them.
`generated/` is found through the installed `generated` package, so any working
directory will do.

This module puts the steps in order and supervises; each step is its own module:
`preflight` (ports, secrets, certificate, Envoy's bootstrap), `database`, `migrations`,
`processes` (what runs, and how it is probed) and `banner` (the demo merchant and the
addresses).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Iterable
from typing import TypeVar

from pi.launcher.banner import demo_merchant, print_banner
from pi.launcher.console import Console
from pi.launcher.database import EmbeddedPostgres, start_database, stop_database
from pi.launcher.migrations import migrate
from pi.launcher.options import DEFAULT_GRPC_PORT_BASE, SERVICES, LaunchOptions, generated_dir
from pi.launcher.preflight import LaunchError, data_store, prepare
from pi.launcher.probes import GrpcHealthProbe
from pi.launcher.processes import envoy_spec, receiver_spec, service_specs
from pi.launcher.supervisor import State, Supervised

__all__ = [
    "DEFAULT_GRPC_PORT_BASE",
    "SERVICES",
    "Console",
    "LaunchError",
    "LaunchOptions",
    "data_store",
    "generated_dir",
    "launch",
]

T = TypeVar("T")


async def launch(options: LaunchOptions, console: Console | None = None) -> int:
    """Run the platform until SIGINT/SIGTERM; returns the process exit code."""
    out = console or Console()
    stop = asyncio.Event()
    supervised: list[Supervised] = []

    def on_signal() -> None:
        if stop.is_set():  # second Ctrl-C: no more patience
            for proc in supervised:
                proc.kill_now()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    probes: list[GrpcHealthProbe] = []
    tasks: list[asyncio.Task[None]] = []
    database: EmbeddedPostgres | None = None
    try:
        env = prepare(options, out)
        store = data_store(options, env)
        try:
            database = start_database(
                options.postgres_dir,
                env,
                processes=len(SERVICES) * options.replicas,
                log_dir=options.var / "log",
                say=out.say,
            )
        except RuntimeError as error:
            raise LaunchError(str(error)) from error
        if not await _until(stop, migrate(options, env, out), default=False):
            return 0
        receiver_process, receiver_probe = receiver_spec(options)
        probes.append(receiver_probe)
        receiver = Supervised(receiver_process, out.status)
        supervised.append(receiver)
        tasks.append(asyncio.create_task(receiver.run()))
        services: list[Supervised] = []
        for spec, probe in service_specs(options, env):
            probes.append(probe)
            services.append(Supervised(spec, out.status))
        supervised.extend(services)
        tasks.extend(asyncio.create_task(proc.run()) for proc in services)

        healthy = await _until(stop, _all_healthy(services, options.startup_timeout), default=False)
        if stop.is_set():
            return 0
        if not healthy:
            slow = [p.name for p in services if p.state is not State.HEALTHY]
            out.say(
                f"!! not healthy after {options.startup_timeout:g}s: {', '.join(slow)} "
                f"(logs in {options.var / 'log'}); starting Envoy anyway"
            )

        envoy = Supervised(envoy_spec(options), out.status)
        supervised.append(envoy)
        tasks.append(asyncio.create_task(envoy.run()))
        if not await _until(stop, envoy.wait_healthy(30.0), default=False):
            if stop.is_set():
                return 0
            out.say(f"!! Envoy is not ready: see {envoy.spec.log_path}")

        merchant = await _until(stop, demo_merchant(options, env, out), default=None)
        if not stop.is_set():
            print_banner(options, store, merchant, out)
            await stop.wait()
        return 0
    except LaunchError as problem:
        out.say(f"!! {problem}")
        return 1
    finally:
        await _shutdown(supervised, options.grace, out)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for probe in probes:
            await probe.close()
        if database is not None:
            stop_database(database, out.say)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _all_healthy(services: Iterable[Supervised], timeout: float) -> bool:
    results = await asyncio.gather(*(proc.wait_healthy(timeout) for proc in services))
    return all(results)


async def _shutdown(supervised: list[Supervised], grace: float, out: Console) -> None:
    """Envoy first (no new requests), then every service at once."""
    running = [p for p in supervised if p.state is not State.STOPPED]
    if not running:
        return
    out.say(f"{time.strftime('%H:%M:%S')}  stopping        (SIGTERM, SIGKILL after {grace:g}s)")
    edge = [p for p in running if p.name == "envoy"]
    for proc in edge:
        await proc.stop(grace)
    await asyncio.gather(*(p.stop(grace) for p in running if p.name != "envoy"))
    out.say(f"{time.strftime('%H:%M:%S')}  stopped")


async def _until(stop: asyncio.Event, work: Awaitable[T], default: T | None = None) -> T | None:
    """`work`'s result, or `default` as soon as `stop` is set (the work is cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopper.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return default
