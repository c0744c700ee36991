"""The mesh under test: the three services (n replicas each) and Envoy, on bench ports.

The bench uses its own ports (default base 31000: services 31001/2/3 + 100 per replica,
Envoy HTTP 31080, admin 31090) so that it can run while `make run` or the e2e tests use
the defaults. The Envoy bootstrap comes from `pi.edge` (the same renderer as every other
deployment); only the ports, the replica endpoints and the access log differ.

Every process is started by this module and stopped by it, by pid, even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pi.launcher.supervisor import tail

T = TypeVar("T")

SERVICES = ("auth", "transactions", "payments")
SERVICE_OFFSETS = {"auth": 1, "transactions": 2, "payments": 3}
REPLICA_STEP = 100
ENVOY_HTTP_OFFSET = 80
ENVOY_ADMIN_OFFSET = 90
ENVOY_METRICS_OFFSET = 91
OTLP_OFFSET = 95
METRICS_OFFSET = 1000  # a service's /metrics: its gRPC port + 1000


class MeshError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    base: int

    def service(self, name: str, replica: int = 0) -> int:
        return self.base + SERVICE_OFFSETS[name] + REPLICA_STEP * replica

    @property
    def envoy_http(self) -> int:
        return self.base + ENVOY_HTTP_OFFSET

    @property
    def envoy_admin(self) -> int:
        return self.base + ENVOY_ADMIN_OFFSET

    @property
    def envoy_metrics(self) -> int:
        return self.base + ENVOY_METRICS_OFFSET

    @property
    def otlp(self) -> int:
        return self.base + OTLP_OFFSET

    def metrics(self, name: str, replica: int = 0) -> int:
        return self.service(name, replica) + METRICS_OFFSET

    def all(self, replicas: int) -> list[int]:
        ports = [self.service(n, i) for n in SERVICES for i in range(replicas)]
        metrics = [self.metrics(n, i) for n in SERVICES for i in range(replicas)]
        return [*ports, *metrics, self.envoy_http, self.envoy_admin, self.envoy_metrics, self.otlp]


def secrets_env(workdir: Path) -> dict[str, str]:
    """Fresh credentials for one run (the launcher's generator; the file is in workdir)."""
    from pi.launcher.secrets import ensure_dev_secrets

    return ensure_dev_secrets(workdir / "secrets.env")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Mesh:
    """Start with `start()`, stop with `stop()` (idempotent; call it in a `finally`).

    The processes are run by `pi.launcher`'s supervisor (`Supervised`: own session,
    SIGTERM if the bench dies, gRPC health / Envoy `/ready` probes, SIGTERM then SIGKILL on
    stop) on an asyncio loop in a background thread, so the rest of the bench stays plain
    blocking code. The supervisor restarts a crashed child; the bench counts that as a
    failure (`check_alive`) rather than silently measuring a restarted mesh.
    """

    repo: Path
    workdir: Path
    ports: Ports
    replicas: int
    base_env: Mapping[str, str]
    envoy_concurrency: int = 1
    envoy_access_log: bool = False
    edge_rate_limit_rps: int | None = None
    # Observability on: metrics ports, interceptors, and the edge tracing
    # `trace_sample_percent` % of requests into an OTLP receiver writing to the workdir.
    observability: bool = True
    trace_sample_percent: float = 1.0
    python: str = sys.executable
    envoy_config_path: Path | None = None
    events: list[str] = field(default_factory=list)
    _procs: list[Any] = field(default_factory=list)
    _tasks: list[Any] = field(default_factory=list)
    _probes: list[Any] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _started_at: float = 0.0

    # --- environment ---------------------------------------------------------------------

    def service_env(self, name: str, replica: int) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PI_", "BENCH_")) and k != "GRPC_ENABLE_FORK_SUPPORT"
        }
        env.update(
            {
                k: v
                for k, v in self.base_env.items()
                if not k.startswith(("PI_MASTER_KEYS", "PI_ADMIN_TOKEN"))
            }
        )
        # As `make run` does: each service its own master keys and mesh identity; only
        # auth the admin token.
        env["PI_MASTER_KEYS"] = self.base_env[f"PI_MASTER_KEYS_{name.upper()}"]
        if name == "auth":
            env["PI_ADMIN_TOKEN"] = self.base_env["PI_ADMIN_TOKEN"]
        env.update(self.identity(name).env())
        env.update(
            {
                "PI_GRPC_HOST": "127.0.0.1",
                "PI_GRPC_PORT": str(self.ports.service(name, replica)),
                # Replica i calls replica i of the other services: spreads internal calls.
                "PI_AUTH_TARGET": f"127.0.0.1:{self.ports.service('auth', replica)}",
                "PI_TRANSACTIONS_TARGET": (
                    f"127.0.0.1:{self.ports.service('transactions', replica)}"
                ),
                "PI_PAYMENTS_TARGET": f"127.0.0.1:{self.ports.service('payments', replica)}",
                "PYTHONUNBUFFERED": "1",
                "PI_OBSERVABILITY": "on" if self.observability else "off",
                "PI_METRICS_PORT": str(self.ports.metrics(name, replica)),
            }
        )
        if self.observability:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{self.ports.otlp}"
        else:
            env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        return env

    def identity(self, name: str) -> Any:
        """Mesh identity `name` (a service, "edge" or "admin"), issued in the workdir."""
        from pi.edge.identities import MESH_IDENTITIES, ensure_identities

        return ensure_identities(self.workdir / "certs", MESH_IDENTITIES)[name]

    # --- lifecycle -----------------------------------------------------------------------

    def check_ports(self) -> None:
        busy = [p for p in self.ports.all(self.replicas) if not port_free(p)]
        if busy:
            raise MeshError(
                f"ports already in use: {busy} (another bench running? set BENCH_PORT_BASE)"
            )

    def migrate(self, timeout: float = 180) -> None:
        for name in SERVICES:
            log = self.workdir / f"migrate-{name}.log"
            with open(log, "wb") as out:
                done = subprocess.run(
                    [self.python, "-m", f"pi.{name}", "migrate"],
                    cwd=self.repo,
                    env=self.service_env(name, 0),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
            if done.returncode != 0:
                raise MeshError(
                    f"`python -m pi.{name} migrate` failed ({done.returncode}):\n"
                    + "\n".join(tail(log, 40))
                )

    def start(self, timeout: float = 90) -> None:
        """auth first (the others fetch its signing keys when they start), then the
        transaction and payment services, then Envoy once every upstream is healthy."""
        self.check_ports()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="bench-mesh", daemon=True
        )
        self._thread.start()
        self._started_at = time.monotonic()
        deadline = time.monotonic() + timeout
        if self.observability:
            receiver = self._supervise(
                "otlp-receiver",
                [
                    self.python,
                    "-m",
                    "pi.platform.observability.receiver",
                    "--port",
                    str(self.ports.otlp),
                    "--out",
                    str(self.workdir / "traces" / "spans.jsonl"),
                ],
                {k: v for k, v in os.environ.items() if not k.startswith(("PI_", "BENCH_"))},
                self._grpc_probe(self.ports.otlp),
                f":{self.ports.otlp}",
            )
            self._wait_healthy(receiver, deadline)
        for wave in (("auth",), ("transactions", "payments")):
            procs = []
            for replica in range(self.replicas):
                for name in wave:
                    port = self.ports.service(name, replica)
                    procs.append(
                        self._supervise(
                            f"{name}#{replica}",
                            [self.python, "-m", f"pi.{name}"],
                            self.service_env(name, replica),
                            self._grpc_probe(port),
                            f":{port}",
                        )
                    )
            for proc in procs:
                self._wait_healthy(proc, deadline)
        self._start_envoy(deadline)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _grpc_probe(self, port: int) -> Any:
        from pi.launcher.probes import GrpcHealthProbe

        name = next((n for n in SERVICES if port in self._ports_of(n)), None)
        # A service over mutual TLS, as the operator; the local OTLP receiver in plaintext.
        probe = (
            GrpcHealthProbe(f"127.0.0.1:{port}")
            if name is None
            else GrpcHealthProbe(f"127.0.0.1:{port}", self.identity("admin"), name)
        )
        self._probes.append(probe)
        return probe

    def _ports_of(self, name: str) -> list[int]:
        return [self.ports.service(name, i) for i in range(self.replicas)]

    def _supervise(
        self, name: str, argv: list[str], env: Mapping[str, str], probe: Any, address: str
    ) -> Any:
        from pi.launcher.supervisor import ProcessSpec, Supervised

        spec = ProcessSpec(
            name=name,
            argv=argv,
            log_path=self.workdir / f"{name.replace('#', '-')}.log",
            probe=probe,
            env=dict(env),
            address=address,
            cwd=str(self.repo),
        )

        async def create() -> Any:
            proc = Supervised(spec, self._on_change)
            self._tasks.append(asyncio.create_task(proc.run()))
            return proc

        proc = self._call(create(), timeout=10)
        self._procs.append(proc)
        return proc

    def _on_change(self, proc: Any) -> None:
        when = time.monotonic() - self._started_at
        detail = f" (exit {proc.last_exit})" if proc.last_exit is not None else ""
        self.events.append(f"{when:7.1f}s {proc.name} {proc.state.value}{detail}")

    def _wait_healthy(self, proc: Any, deadline: float) -> None:
        remaining = max(0.1, deadline - time.monotonic())
        if not self._call(proc.wait_healthy(remaining), timeout=remaining + 5):
            raise MeshError(
                f"{proc.name} not healthy ({proc.state.value}, restarts {proc.restarts}):\n"
                + "\n".join(tail(proc.spec.log_path, 30))
            )

    def render_envoy(self) -> Path:
        from pi.edge import EdgeConfig, Endpoint, HealthCheck, RateLimit, UpstreamTls
        from pi.edge.config import render_bootstrap
        from pi.edge.files import write_bootstrap

        upstreams = {
            name: tuple(
                Endpoint("127.0.0.1", self.ports.service(name, i)) for i in range(self.replicas)
            )
            for name in SERVICES
        }
        options: dict[str, Any] = {}
        edge = self.identity("edge")
        if self.observability:
            from pi.edge.observability import Tracing

            options["metrics_port"] = self.ports.envoy_metrics
            options["tracing"] = Tracing(
                "127.0.0.1", self.ports.otlp, sample_percent=self.trace_sample_percent
            )
        if self.edge_rate_limit_rps:
            options["rate_limit"] = RateLimit(self.edge_rate_limit_rps, self.edge_rate_limit_rps)
        config = EdgeConfig(
            descriptor_path=str((self.repo / "generated" / "descriptors.binpb").resolve()),
            upstreams=upstreams,
            http_port=self.ports.envoy_http,
            admin_port=self.ports.envoy_admin,
            health_check=HealthCheck(interval=1.0),
            access_log=self.envoy_access_log,
            upstream_tls=UpstreamTls(str(edge.ca_path), str(edge.cert_path), str(edge.key_path)),
            **options,
        )
        path = self.workdir / "envoy.json"
        write_bootstrap(render_bootstrap(config), path)
        self.envoy_config_path = path
        return path

    def _start_envoy(self, deadline: float) -> None:
        from pi.edge import envoy_command
        from pi.launcher.probes import envoy_ready_probe

        path = self.render_envoy()
        command = envoy_command(path, concurrency=self.envoy_concurrency, log_level="warn")
        proc = self._supervise(
            "envoy",
            command,
            dict(os.environ),
            envoy_ready_probe(self.ports.envoy_admin),
            f":{self.ports.envoy_http}",
        )
        self._wait_healthy(proc, deadline)
        admin = f"http://127.0.0.1:{self.ports.envoy_admin}"
        while not self._clusters_healthy(admin):
            if time.monotonic() > deadline:
                raise MeshError(
                    "Envoy's upstreams are not healthy:\n" + "\n".join(tail(proc.spec.log_path, 30))
                )
            time.sleep(0.2)

    def _clusters_healthy(self, admin: str) -> bool:
        try:
            with urllib.request.urlopen(f"{admin}/clusters?format=json", timeout=2) as r:
                data = json.load(r)
        except (OSError, ValueError):
            return False
        seen = 0
        for cluster in data.get("cluster_statuses", []):
            if cluster.get("name") not in SERVICES:
                continue
            for host in cluster.get("host_statuses", []):
                seen += 1
                health = host.get("health_status", {})
                flags = ("failed_active_health_check", "failed_outlier_check", "pending_active_hc")
                if health.get("eds_health_status", "HEALTHY") != "HEALTHY" or any(
                    health.get(flag) for flag in flags
                ):
                    return False
        return seen == len(SERVICES) * self.replicas

    def admin_stat(self, name: str) -> int | None:
        """One Envoy counter or gauge by exact name (e.g. http.http.downstream_cx_active)."""
        url = f"http://127.0.0.1:{self.ports.envoy_admin}/stats?filter=^{name}$&format=json"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                data = json.load(r)
        except (OSError, ValueError):
            return None
        for stat in data.get("stats", []):
            if stat.get("name") == name:
                return int(stat.get("value", 0))
        return None

    def admin_stats(self, pattern: str) -> dict[str, int]:
        """Envoy counters and gauges whose name matches `pattern` (a regex), non-zero only."""
        query = urllib.parse.urlencode({"filter": pattern, "format": "json"})
        url = f"http://127.0.0.1:{self.ports.envoy_admin}/stats?{query}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                data = json.load(r)
        except (OSError, ValueError):
            return {}
        return {
            stat["name"]: int(stat["value"]) for stat in data.get("stats", []) if stat.get("value")
        }

    def pids(self) -> dict[str, list[int]]:
        """Live pids by process group name: envoy, auth, transactions, payments."""
        out: dict[str, list[int]] = {}
        for proc in self._procs:
            if proc.pid is not None:
                out.setdefault(proc.name.partition("#")[0], []).append(proc.pid)
        return out

    def restarts(self) -> dict[str, int]:
        return {proc.name: proc.restarts for proc in self._procs if proc.restarts}

    def check_alive(self) -> None:
        """Raise if a process died (and was restarted) or is not healthy now."""
        from pi.launcher.supervisor import State

        bad = [p for p in self._procs if p.restarts or p.state is not State.HEALTHY]
        if bad:
            raise MeshError(
                "; ".join(
                    f"{p.name} is {p.state.value} after {p.restarts} restart(s) "
                    f"(last exit {p.last_exit}):\n" + "\n".join(tail(p.spec.log_path, 20))
                    for p in bad
                )
            )

    def stop(self, grace: float = 15.0) -> None:
        """Envoy first (no new requests), then the services: SIGTERM, SIGKILL after
        `grace`. Idempotent."""
        if self._loop is None:
            return

        async def shutdown() -> None:
            for proc in [p for p in self._procs if p.name == "envoy"]:
                await proc.stop(grace)
            await asyncio.gather(*(p.stop(grace) for p in self._procs if p.name != "envoy"))
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for probe in self._probes:
                with contextlib.suppress(Exception):
                    await probe.close()

        try:
            self._call(shutdown(), timeout=grace * 2 + 30)
        except BaseException:
            for proc in self._procs:
                proc.kill_now()
            raise
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._loop.close()
            self._loop = None
