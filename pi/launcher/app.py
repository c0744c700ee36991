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
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO, TypeVar

from pi.edge import (
    DEFAULT_GRPC_PORTS,
    REPLICA_PORT_STEP,
    Endpoint,
    ensure_dev_cert,
    envoy_command,
    render_bootstrap,
    write_bootstrap,
)
from pi.edge.profiles import local_config
from pi.launcher import demo
from pi.launcher.database import EmbeddedPostgres, start_database, stop_database
from pi.launcher.probes import GrpcHealthProbe, envoy_ready_probe
from pi.launcher.secrets import ensure_dev_secrets
from pi.launcher.supervisor import ProcessSpec, State, Supervised, tail

SERVICES = tuple(DEFAULT_GRPC_PORTS)
"""In port order: auth on the base port, transactions on base + 1, payments on base + 2."""
DEFAULT_GRPC_PORT_BASE = DEFAULT_GRPC_PORTS[SERVICES[0]]
T = TypeVar("T")


def generated_dir() -> Path:
    """The `generated` package's directory (descriptor set, OpenAPI), wherever it is installed."""
    return Path(str(importlib.resources.files("generated")))


@dataclass(frozen=True)
class LaunchOptions:
    """What to start and where; `root` is the working directory of every child."""

    root: Path = field(default_factory=Path.cwd)
    var_dir: Path = Path("var")
    replicas: int = 1
    grpc_port_base: int = DEFAULT_GRPC_PORT_BASE
    http_port: int = 8080
    https_port: int = 8443
    admin_port: int = 9901
    startup_timeout: float = 90.0
    grace: float = 15.0
    python: str = sys.executable
    generated: Path = field(default_factory=generated_dir)

    @property
    def var(self) -> Path:
        """The var dir as an absolute path (a relative `var_dir` is under `root`)."""
        return (self.root / self.var_dir).absolute()

    def port(self, service: str, replica: int) -> int:
        """Base + 0/1/2 for auth/transactions/payments, plus 100 per replica."""
        return self.grpc_port_base + SERVICES.index(service) + REPLICA_PORT_STEP * replica

    def ports(self) -> list[int]:
        """Every port the launcher listens on: the services' and Envoy's."""
        services = [self.port(s, i) for s in SERVICES for i in range(self.replicas)]
        return [self.http_port, self.https_port, self.admin_port, *services]

    def upstreams(self) -> dict[str, tuple[Endpoint, ...]]:
        """What Envoy routes to: every replica of every service."""
        return {
            service: tuple(
                Endpoint("127.0.0.1", self.port(service, i)) for i in range(self.replicas)
            )
            for service in SERVICES
        }

    @property
    def postgres_dir(self) -> Path:
        """The embedded PostgreSQL's data directory (when DATABASE_URL is unset)."""
        return self.var / "postgres"

    def target(self, service: str) -> str:
        """How services reach each other: one address, or all replicas (gRPC ipv4: list)."""
        addresses = [f"127.0.0.1:{self.port(service, i)}" for i in range(self.replicas)]
        return addresses[0] if self.replicas == 1 else "ipv4:" + ",".join(addresses)


class LaunchError(RuntimeError):
    """Something a newcomer has to fix before the platform can start."""


class Console:
    """Compact status lines: one per state change, plus the banner."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self._stream = stream
        self._color = stream.isatty() and os.environ.get("NO_COLOR") is None

    def say(self, text: str = "") -> None:
        print(text, file=self._stream, flush=True)

    def status(self, proc: Supervised) -> None:
        colors = {
            State.HEALTHY: "32",
            State.STARTING: "33",
            State.UNHEALTHY: "31",
            State.BACKOFF: "31",
        }
        state = f"{proc.state.value:<10}"
        if self._color and proc.state in colors:
            state = f"\033[{colors[proc.state]}m{state}\033[0m"
        details = [proc.spec.address]
        if proc.pid is not None:
            details.append(f"pid {proc.pid}")
        if proc.state is State.BACKOFF:
            details.append(
                f"{_describe_exit(proc.last_exit)}; restart #{proc.restarts} "
                f"in {proc.next_restart_in:g}s"
            )
        self.say(f"{time.strftime('%H:%M:%S')}  {proc.name:<15} {state} {'  '.join(details)}")
        if proc.state is State.BACKOFF:
            for line in tail(proc.spec.log_path, 6):
                self.say(f"            | {line[:160]}")
            self.say(f"            | (full log: {proc.spec.log_path})")


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with {code}"


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
        env = _prepare(options, out)
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
        if not await _until(stop, _migrate(options, env, out), default=False):
            return 0
        services: list[Supervised] = []
        for service in SERVICES:
            for replica in range(options.replicas):
                port = options.port(service, replica)
                probe = GrpcHealthProbe(f"127.0.0.1:{port}")
                probes.append(probe)
                spec = ProcessSpec(
                    name=f"{service}-{replica}",
                    argv=[options.python, "-m", f"pi.{service}"],
                    env={
                        **env,
                        "PI_GRPC_HOST": "127.0.0.1",
                        "PI_GRPC_PORT": str(port),
                    },
                    log_path=options.var / "log" / f"{service}-{replica}.log",
                    probe=probe,
                    address=f":{port}",
                    cwd=str(options.root),
                )
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

        envoy = Supervised(
            ProcessSpec(
                name="envoy",
                argv=envoy_command(
                    options.var / "envoy.json",
                    log_level="warn",
                    extra=("--file-flush-interval-msec", "1000"),
                ),
                log_path=options.var / "log" / "envoy.log",
                probe=envoy_ready_probe(options.admin_port),
                address=f":{options.http_port} :{options.https_port}",
                cwd=str(options.root),
            ),
            out.status,
        )
        supervised.append(envoy)
        tasks.append(asyncio.create_task(envoy.run()))
        if not await _until(stop, envoy.wait_healthy(30.0), default=False):
            if stop.is_set():
                return 0
            out.say(f"!! Envoy is not ready: see {envoy.spec.log_path}")

        merchant = await _until(stop, _demo_merchant(options, env, out), default=None)
        if not stop.is_set():
            _banner(options, store, merchant, out)
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


def _prepare(options: LaunchOptions, out: Console) -> dict[str, str]:
    """Checks and files the processes need; returns the environment for the services."""
    descriptor = options.generated / "descriptors.binpb"
    if not descriptor.is_file():
        raise LaunchError(f"{descriptor} is missing: run `make proto`")
    ports = options.ports()
    if not all(0 < port < 65536 for port in ports):
        raise LaunchError(f"ports must be between 1 and 65535: {ports}")
    clashes = sorted({port for port in ports if ports.count(port) > 1})
    if clashes:
        raise LaunchError(
            f"port(s) {', '.join(map(str, clashes))} would be used twice: "
            "choose Envoy's ports outside the services' (--grpc-port-base)"
        )
    busy = _busy_ports(ports)
    if busy:
        raise LaunchError(
            f"port(s) {', '.join(map(str, busy))} already in use on 127.0.0.1 "
            "(is another `make run` still running?)"
        )
    options.var.mkdir(parents=True, exist_ok=True)
    secrets_file = options.var / "dev-secrets.env"
    dev_secrets = ensure_dev_secrets(secrets_file)
    cert = ensure_dev_cert(options.var / "certs")
    openapi = options.generated / "openapi" / "pi.swagger.json"
    config = local_config(
        str(descriptor),
        replicas=options.replicas,
        openapi_path=str(openapi) if openapi.is_file() else None,
        tls_cert_path=str(cert.cert_path.resolve()),
        tls_key_path=str(cert.key_path.resolve()),
        http_port=options.http_port,
        https_port=options.https_port,
        admin_port=options.admin_port,
    )
    config = replace(config, upstreams=options.upstreams())
    write_bootstrap(render_bootstrap(config), options.var / "envoy.json")

    env = {**dev_secrets, **os.environ}  # what the caller exported wins
    env["PYTHONUNBUFFERED"] = "1"
    for service in SERVICES:
        env[f"PI_{service.upper()}_TARGET"] = options.target(service)
    store = data_store(options, env)
    cache = "Redis" if env.get("REDIS_URL") else "in-process cache"
    out.say(
        f"Pi Platform: {len(SERVICES)} services x {options.replicas} replica(s) + Envoy; "
        f"{store}; {cache}; secrets in {secrets_file}"
    )
    return env


def data_store(options: LaunchOptions, env: Mapping[str, str]) -> str:
    """Where the services keep their data, for people (never the URL: it may hold a password)."""
    if (env.get("DATABASE_URL") or "").strip():
        return "PostgreSQL (DATABASE_URL)"
    return f"an embedded PostgreSQL in {options.postgres_dir}"


async def _migrate(options: LaunchOptions, env: dict[str, str], out: Console) -> bool:
    async def one(service: str) -> tuple[str, int, Path]:
        log_path = options.var / "log" / f"{service}-migrate.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process = await asyncio.create_subprocess_exec(
                options.python,
                "-m",
                f"pi.{service}",
                "migrate",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=str(options.root),
            )
            try:
                return service, await process.wait(), log_path
            except asyncio.CancelledError:
                process.kill()
                raise

    started = time.monotonic()
    results = await asyncio.gather(*(one(service) for service in SERVICES))
    failed = [(service, code, log) for service, code, log in results if code != 0]
    for service, code, log in failed:
        out.say(f"!! migrating {service} failed (exit {code}):")
        for line in tail(log, 12):
            out.say(f"   | {line}")
    if failed:
        raise LaunchError("migrations failed")
    elapsed = time.monotonic() - started
    out.say(f"{time.strftime('%H:%M:%S')}  migrations      done in {elapsed:.1f}s")
    return True


async def _all_healthy(services: Iterable[Supervised], timeout: float) -> bool:
    results = await asyncio.gather(*(proc.wait_healthy(timeout) for proc in services))
    return all(results)


async def _demo_merchant(
    options: LaunchOptions, env: dict[str, str], out: Console
) -> demo.DemoMerchant | None:
    """Reuse the stored demo merchant if its key still works through the edge, else create."""
    path = options.var / "demo-merchant.json"
    http_base = f"http://127.0.0.1:{options.http_port}"
    merchant = demo.load(path)
    if merchant is not None:
        status = await _token_status(http_base, merchant)
        if status == 200:
            return merchant
        if status not in (400, 401, 403, 404):
            out.say(f"!! the edge answered {status} to POST /v1/auth/token")
            return merchant
        out.say(f"the demo merchant in {path} is unknown to this database: creating a new one")
    try:
        merchant = await demo.create(f"127.0.0.1:{options.port('auth', 0)}", env["PI_ADMIN_TOKEN"])
    except Exception as error:  # the platform still runs; only the demo is missing
        out.say(f"!! could not create the demo merchant: {error}")
        return None
    demo.save(path, merchant)
    status = await _token_status(http_base, merchant)
    if status != 200:
        out.say(f"!! POST /v1/auth/token through the edge answered {status}")
    return merchant


async def _token_status(http_base: str, merchant: demo.DemoMerchant) -> int:
    status = 0
    for _ in range(10):  # the edge may still be finding healthy upstreams
        try:
            status, _ = await demo.issue_token(http_base, merchant)
        except OSError:
            status = 0
        if status not in (0, 502, 503):
            break
        await asyncio.sleep(0.5)
    return status


def _banner(
    options: LaunchOptions,
    store: str,
    merchant: demo.DemoMerchant | None,
    out: Console,
) -> None:
    http_base = f"http://127.0.0.1:{options.http_port}"
    ca = options.var / "certs" / "ca.pem"
    out.say()
    out.say(f"Pi Platform is running. Ctrl-C stops everything; the data stays in {store}.")
    out.say(f"  HTTP/JSON    {http_base}   (OpenAPI: {http_base}/openapi.json)")
    out.say(f"  HTTPS        https://localhost:{options.https_port}   (TLS 1.3; CA: {ca})")
    out.say(
        f"  gRPC         127.0.0.1:{options.http_port} (h2c), localhost:{options.https_port} (TLS)"
    )
    out.say(f"  Envoy admin  http://127.0.0.1:{options.admin_port}   logs: {options.var / 'log'}/")
    if merchant is not None:
        out.say()
        out.say(
            f"Demo merchant {merchant.merchant_id}  (saved in {options.var}/demo-merchant.json)"
        )
        out.say(f"  API key id      {merchant.api_key_id}")
        out.say(f"  API key secret  {merchant.api_key_secret}")
        out.say()
        out.say("Try it:")
        for line in demo.curl_example(http_base, merchant).splitlines():
            out.say(f"  {line}")
    out.say()


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


def _busy_ports(ports: Iterable[int]) -> list[int]:
    """Ports something already listens on (a bind test would also trip over short-lived
    client sockets, since 50051-50053 lie in Linux's ephemeral port range)."""
    busy = []
    for port in ports:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                busy.append(port)
        except OSError:
            pass
    return busy
