"""The whole mesh for end-to-end tests: three services + Envoy, on real PostgreSQL and Redis.

`mesh` (session scope) starts, on free loopback ports:
- the auth service first (the others fetch its signing keys), then transactions and
  payments, each migrated into its own fresh PostgreSQL schema (`e2e_<hex>_<service>`,
  dropped afterwards) and sharing Redis (`redis_url` from tests/conftest.py);
- Envoy, its bootstrap rendered by `pi.edge.profiles.e2e_config` with the real descriptor
  set and OpenAPI document, a TLS 1.3 listener whose development certificate is generated
  into a temporary directory, and a rate limit high enough that no test is throttled.

`throttled_edge` is a second Envoy in front of the same services with a tiny rate limit,
for the 429 test only. Every process is stopped by its PID at teardown (SIGTERM to its
process group, SIGKILL after a grace period), also when a test or the start failed.

`mesh.request(...)` is a tiny HTTP/JSON client (http.client; no third-party package), and
`mesh.create_merchant()` makes a merchant and an access token through the edge.

Teardown fails the session (as an error on the last test) when a service died during it,
did not exit 0 on SIGTERM, or logged an ERROR line or a traceback.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.edge import (
    Endpoint,
    UpstreamTls,
    ensure_dev_cert,
    envoy_command,
    render_bootstrap,
    write_bootstrap,
)
from pi.edge.identities import Identity, ensure_identities
from pi.edge.observability import Tracing
from pi.edge.profiles import e2e_config
from pi.edge.static import StaticSite
from pi.launcher.secrets import ensure_dev_secrets
from pi.launcher.supervisor import die_with_parent
from tests.support.leaks import leaks

REPO = Path(__file__).resolve().parents[2]
DESCRIPTOR = REPO / "generated" / "descriptors.binpb"
OPENAPI = REPO / "generated" / "openapi" / "pi.openapi.json"
WEB_DIST = REPO / "web" / "dist"  # built by `make setup` / `make web`; tests/e2e/web needs it
SERVICES = ("auth", "transactions", "payments")
# The services, Envoy, the operator (CreateMerchant), and an identity the CA issued that no
# allow-list names (a valid certificate is not a licence to call internal RPCs).
MESH_NAMES = (*SERVICES, "edge", "admin", "stranger")
START_TIMEOUT = 60.0
STOP_GRACE = 10.0
# The shared mesh: generous, so that no ordinary test is ever throttled.
MESH_REQUESTS_PER_SECOND = 2000
# The throttled edge: a handful of requests, then 429.
THROTTLED_REQUESTS_PER_SECOND = 3
# A service log line that means something went wrong (services log JSON lines).
_ERROR_LINE = re.compile(r'"level": ?"(?:ERROR|CRITICAL)"|^Traceback ')


def mesh_leaks(mesh: Mesh) -> list[str]:
    """Card numbers and secrets in the mesh's exported spans and its processes' logs."""
    texts = {"spans": mesh.traces_path.read_text() if mesh.traces_path.exists() else ""}
    for child in mesh.processes.children:
        texts[child.name] = child.tail(50_000_000)
    return leaks(texts, mesh_secrets(mesh))


def mesh_secrets(mesh: Mesh) -> list[str]:
    """The admin token and every service's key material (master keys, the card key)."""
    wanted = ("PI_ADMIN_TOKEN", "PI_MASTER_KEYS", "PI_CARD_FINGERPRINT_KEY")
    return [
        mesh.admin_token,
        *(
            value
            for env in mesh.service_envs.values()
            for name, value in env.items()
            if name in wanted
        ),
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The contract fuzzer runs last. It fails IssueToken from 127.0.0.1 many times, as
    an attacker would, and the failure throttle (per client address) then delays that
    address's sign-ins for minutes: no test after it could sign in."""
    fuzzed = [item for item in items if "test_contract_fuzzed.py" in item.nodeid]
    items[:] = [item for item in items if item not in fuzzed] + fuzzed


# --- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A process this fixture started; its output goes to `log_path`."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Processes:
    """Starts children in their own process group and stops exactly those, by PID."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path = REPO) -> Child:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # SIGTERM to the child if pytest itself dies without a teardown.
                preexec_fn=die_with_parent(os.getpid()),
            )
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every live child (newest first), SIGKILL after the grace period."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        codes: dict[str, int | None] = {}
        for child in reversed(self.children):
            try:
                codes[child.name] = child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.pid, signal.SIGKILL)
                codes[child.name] = child.process.wait()
        return codes

    def dump_logs(self) -> None:
        for child in self.children:
            sys.stderr.write(f"\n--- {child.name} (pid {child.pid}) {child.log_path}\n")
            sys.stderr.write(child.tail())


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def mesh_channel(target: str, identity: Identity, server: str) -> grpc.Channel:
    """A channel to service `server` at `target`, presenting `identity`'s certificate."""
    tls = identity.mesh_tls()
    return grpc.secure_channel(
        target,
        grpc.ssl_channel_credentials(
            Path(tls.ca_path).read_bytes(),
            Path(tls.key_path).read_bytes(),
            Path(tls.cert_path).read_bytes(),
        ),
        options=[("grpc.ssl_target_name_override", server)],
    )


def wait_grpc_serving(
    child: Child,
    target: str,
    deadline: float,
    identity: Identity | None = None,
    server: str | None = None,
) -> None:
    """Until `child` answers SERVING at `target`: over mutual TLS as `identity` (expecting
    `server`), or in plaintext (the local OTLP receiver) without one."""
    channel_of = (
        grpc.insecure_channel(target)
        if identity is None or server is None
        else mesh_channel(target, identity, server)
    )
    with channel_of as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.process.returncode}")
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.05)
    raise TimeoutError(f"{child.name} ({target}) never answered SERVING")


def wait_edge_ready(child: Child, admin_port: int, deadline: float) -> None:
    """Until Envoy is LIVE and its health checks have found every upstream healthy."""
    url = f"http://127.0.0.1:{admin_port}/clusters?format=json"
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}")
        with contextlib.suppress(OSError, ValueError):
            status, body = _plain_get(admin_port, "/clusters?format=json")
            if status == 200:
                healthy = {
                    cluster["name"]
                    for cluster in json.loads(body).get("cluster_statuses", [])
                    if cluster.get("host_statuses")
                    and all(
                        host.get("health_status", {}).get("eds_health_status") == "HEALTHY"
                        and not host.get("health_status", {}).get("failed_active_health_check")
                        for host in cluster["host_statuses"]
                    )
                }
                if set(SERVICES) <= healthy:
                    return
        time.sleep(0.1)
    raise TimeoutError(f"{child.name} never saw all services healthy ({url})")


def _plain_get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# --- HTTP/JSON client ----------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:  # what an assertion failure shows
        return f"<{self.status} {self.text[:2000]}>"


def http_request(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, Any] | None = None,
    raw: bytes | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 15.0,
) -> Response:
    """One request on a fresh connection. `body` is sent as JSON; `raw` as is."""
    url = urlsplit(base)
    if url.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            url.hostname or "localhost", url.port, timeout=timeout, context=ssl_context
        )
    else:
        connection = http.client.HTTPConnection(
            url.hostname or "127.0.0.1", url.port, timeout=timeout
        )
    all_headers = {"accept": "application/json", **(headers or {})}
    payload = raw
    if body is not None:
        payload = json.dumps(body).encode()
    if payload is not None:
        all_headers.setdefault("content-type", "application/json")
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    if query:
        path = f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"
    try:
        connection.request(method, path, body=payload, headers=all_headers)
        reply = connection.getresponse()
        return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read())
    finally:
        connection.close()


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    api_key_id: str
    api_key_secret: str
    token: str


# --- the mesh ------------------------------------------------------------------------------


@dataclass
class Mesh:
    """Addresses and credentials of the running mesh."""

    http_port: int
    https_port: int
    admin_port: int
    ca_file: str
    admin_token: str
    identities: Mapping[str, Identity]  # every mesh identity, by name (MESH_NAMES)
    database_url: str
    redis_url: str
    schemas: Mapping[str, str]
    service_targets: Mapping[str, str]  # straight to each service, bypassing Envoy
    env: Mapping[str, str]  # what every service's environment has in common (no secrets)
    service_envs: Mapping[str, Mapping[str, str]]  # each one's, with its secrets and identity
    processes: Processes
    workdir: Path
    metrics_ports: Mapping[str, int]  # each service's /metrics
    edge_metrics_port: int  # Envoy's /stats/prometheus
    traces_path: Path  # every span, from the OTLP receiver
    _ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_base(self) -> str:
        return f"https://localhost:{self.https_port}"

    @property
    def grpc_target(self) -> str:
        """Envoy's cleartext port, which also carries native gRPC (h2c)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def tls_target(self) -> str:
        """Envoy's TLS 1.3 port, by the name its development certificate carries."""
        return f"localhost:{self.https_port}"

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the development CA only."""
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context(cafile=self.ca_file)
        return self._ssl_context

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Response:
        """HTTP/JSON through Envoy's cleartext listener (`tls=True`: the TLS listener)."""
        if kwargs.pop("tls", False):
            kwargs.setdefault("ssl_context", self.ssl_context())
            return http_request(self.https_base, method, path, body, **kwargs)
        return http_request(self.http_base, method, path, body, **kwargs)

    def channel(self, service: str, identity: str) -> grpc.Channel:
        """Straight to `service` (bypassing Envoy) over mTLS, as mesh identity `identity`."""
        return self.channel_to(self.service_targets[service], service, identity)

    def channel_to(self, target: str, service: str, identity: str) -> grpc.Channel:
        """To a process of `service` at `target` over mTLS, as mesh identity `identity`."""
        return mesh_channel(target, self.identities[identity], service)

    def create_merchant(self, display_name: str | None = None) -> Merchant:
        """CreateMerchant inside the mesh (the admin certificate and token: the edge never
        routes it), then POST /v1/auth/token through the edge."""
        with self.channel("auth", "admin") as channel:
            created = auth_pb2_grpc.AuthServiceStub(channel).CreateMerchant(
                auth_pb2.CreateMerchantRequest(
                    display_name=display_name or f"E2E {uuid.uuid4().hex[:8]}",
                    request_id=str(uuid.uuid4()),
                ),
                metadata=(("authorization", f"Bearer {self.admin_token}"),),
                timeout=15,
            )
        issued = self.request(
            "POST",
            "/v1/auth/token",
            {"apiKeyId": created.api_key.id, "apiKeySecret": created.api_key_secret},
        )
        assert issued.status == 200, issued
        return Merchant(
            merchant_id=created.merchant.id,
            api_key_id=created.api_key.id,
            api_key_secret=created.api_key_secret,
            token=issued.json()["accessToken"],
        )


def _drop_schemas(pg_url: str, schemas: Iterable[str]) -> None:
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())


def _start_envoy(
    processes: Processes,
    name: str,
    workdir: Path,
    ports: Mapping[str, int],
    requests_per_second: int,
    cert: Any | None,
    edge: Identity,
    *,
    metrics_port: int | None = None,
    tracing: Tracing | None = None,
) -> tuple[int, int, int]:
    http_port, https_port, admin_port = free_port(), free_port(), free_port()
    config = e2e_config(
        str(DESCRIPTOR),
        upstreams={svc: (Endpoint("127.0.0.1", port),) for svc, port in ports.items()},
        http_port=http_port,
        https_port=https_port,
        admin_port=admin_port,
        openapi_path=str(OPENAPI) if OPENAPI.is_file() else None,
        tls_cert_path=None if cert is None else str(cert.cert_path),
        tls_key_path=None if cert is None else str(cert.key_path),
        upstream_tls=UpstreamTls(str(edge.ca_path), str(edge.cert_path), str(edge.key_path)),
        requests_per_second=requests_per_second,
        web=StaticSite.scan(WEB_DIST) if (WEB_DIST / "index.html").is_file() else None,
        metrics_port=metrics_port,
        tracing=tracing,
    )
    config_path = workdir / f"{name}.json"
    write_bootstrap(render_bootstrap(config), config_path)
    envoy = processes.start(
        name, envoy_command(config_path, concurrency=1, log_level="warn"), os.environ
    )
    wait_edge_ready(envoy, admin_port, time.monotonic() + START_TIMEOUT)
    return http_port, https_port, admin_port


@pytest.fixture(scope="session")
def mesh(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    workdir = tmp_path_factory.mktemp("e2e-mesh")
    processes = Processes(workdir)
    suffix = uuid.uuid4().hex[:10]
    schemas = {svc: f"e2e_{suffix}_{svc}" for svc in SERVICES}
    ports = {svc: free_port() for svc in SERVICES}
    metrics_ports = {svc: free_port() for svc in SERVICES}
    edge_metrics_port, otlp_port = free_port(), free_port()
    traces_path = workdir / "traces" / "spans.jsonl"
    secrets_env = ensure_dev_secrets(workdir / "secrets.env")
    identities = ensure_identities(workdir / "certs", MESH_NAMES)
    base_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PI_") and key not in ("DATABASE_URL", "REDIS_URL")
    }
    # Each service only its own secrets and identity, as `make run` and Kubernetes do.
    common = {
        **base_env,
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_url,
        "PI_GRPC_HOST": "127.0.0.1",
        "PI_AUTH_TARGET": f"127.0.0.1:{ports['auth']}",
        "PI_TRANSACTIONS_TARGET": f"127.0.0.1:{ports['transactions']}",
        "PI_PAYMENTS_TARGET": f"127.0.0.1:{ports['payments']}",
        "PI_REVOCATION_POLL_SECONDS": "1",
        # Every test's client is 127.0.0.1, and the suite signs in far more often than one
        # client should: the per-address limit (tested on its own in tests/integration/
        # auth) would throttle the suite itself. The failure throttle stays as deployed.
        "PI_RATE_LIMIT_PER_CLIENT_ADDRESS": "10000",
        "PI_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
    }
    envs = {
        svc: {
            **common,
            **identities[svc].env(),
            "PI_MASTER_KEYS": secrets_env[f"PI_MASTER_KEYS_{svc.upper()}"],
            **({"PI_ADMIN_TOKEN": secrets_env["PI_ADMIN_TOKEN"]} if svc == "auth" else {}),
            "PI_DB_SCHEMA": schemas[svc],
            "PI_GRPC_PORT": str(ports[svc]),
            "PI_METRICS_PORT": str(metrics_ports[svc]),
        }
        for svc in SERVICES
    }
    started = False
    try:
        # Migrations in parallel (each service owns its schema), then auth, then the rest.
        migrations = [
            processes.start(
                f"{svc}-migrate", [sys.executable, "-m", f"pi.{svc}", "migrate"], envs[svc]
            )
            for svc in SERVICES
        ]
        for child in migrations:
            code = child.process.wait(timeout=START_TIMEOUT)
            assert code == 0, f"{child.name} failed ({code}):\n{child.tail()}"
        deadline = time.monotonic() + START_TIMEOUT
        receiver = processes.start(
            "otlp-receiver",
            [
                sys.executable,
                "-m",
                "pi.platform.observability.receiver",
                "--port",
                str(otlp_port),
                "--out",
                str(traces_path),
            ],
            base_env,
        )
        wait_grpc_serving(receiver, f"127.0.0.1:{otlp_port}", deadline)
        children = {}
        for svc in SERVICES:
            children[svc] = processes.start(svc, [sys.executable, "-m", f"pi.{svc}"], envs[svc])
            if svc == "auth":
                wait_grpc_serving(
                    children[svc], f"127.0.0.1:{ports[svc]}", deadline, identities["admin"], svc
                )
        for svc in SERVICES[1:]:
            wait_grpc_serving(
                children[svc], f"127.0.0.1:{ports[svc]}", deadline, identities["admin"], svc
            )

        cert = ensure_dev_cert(workdir / "certs")
        http_port, https_port, admin_port = _start_envoy(
            processes,
            "envoy",
            workdir,
            ports,
            MESH_REQUESTS_PER_SECOND,
            cert,
            identities["edge"],
            metrics_port=edge_metrics_port,
            # Every request traced: the tests follow one request's spans.
            tracing=Tracing("127.0.0.1", otlp_port, sample_percent=100.0),
        )
        started = True
        mesh_info = Mesh(
            http_port=http_port,
            https_port=https_port,
            admin_port=admin_port,
            ca_file=str(cert.ca_path),
            admin_token=secrets_env["PI_ADMIN_TOKEN"],
            identities=identities,
            database_url=pg_url,
            redis_url=redis_url,
            schemas=schemas,
            service_targets={svc: f"127.0.0.1:{port}" for svc, port in ports.items()},
            env=common,
            service_envs=envs,
            processes=processes,
            workdir=workdir,
            metrics_ports=metrics_ports,
            edge_metrics_port=edge_metrics_port,
            traces_path=traces_path,
        )
        yield mesh_info
    except BaseException:
        processes.dump_logs()
        raise
    finally:
        crashed = [
            f"{c.name} exited with {c.process.returncode}"
            for c in processes.children
            if not c.name.endswith("-migrate") and c.process.poll() is not None
        ]
        codes = processes.stop_all()
        _drop_schemas(pg_url, list(schemas.values()))
        # After the whole e2e suite: nothing it sent leaked into spans or logs.
        leaked = mesh_leaks(mesh_info) if started else []
        if leaked:
            pytest.fail(f"card numbers or secrets in spans or logs: {leaked}")
        if started and crashed:
            processes.dump_logs()
            pytest.fail(f"mesh processes died during the session: {crashed}")
        unclean = {name: code for name, code in codes.items() if code != 0}
        if started and unclean:
            processes.dump_logs()
            pytest.fail(f"processes did not stop cleanly on SIGTERM (exit codes): {unclean}")
        errors = [
            f"{child.name}: {line[:300]}"
            for child in processes.children
            if child.name in SERVICES
            for line in child.tail(200_000).splitlines()
            if _ERROR_LINE.search(line)
        ]
        if started and errors:
            pytest.fail("the services logged errors:\n" + "\n".join(errors[:20]))


@dataclass(frozen=True)
class ThrottledEdge:
    """A second Envoy (cleartext only) with a rate limit of a few requests per second."""

    http_port: int
    admin_port: int
    requests_per_second: int

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Response:
        return http_request(self.http_base, method, path, body, **kwargs)


@pytest.fixture(scope="session")
def throttled_edge(mesh: Mesh) -> Iterator[ThrottledEdge]:
    """A second Envoy before the same services, with a tiny rate limit (429 tests only)."""
    processes = Processes(mesh.workdir)
    ports = {svc: int(target.rsplit(":", 1)[1]) for svc, target in mesh.service_targets.items()}
    try:
        http_port, _, admin_port = _start_envoy(
            processes,
            "envoy-throttled",
            mesh.workdir,
            ports,
            THROTTLED_REQUESTS_PER_SECOND,
            None,
            mesh.identities["edge"],
        )
        yield ThrottledEdge(http_port, admin_port, THROTTLED_REQUESTS_PER_SECOND)
    except BaseException:
        processes.dump_logs()
        raise
    finally:
        processes.stop_all()


@pytest.fixture
def merchant(mesh: Mesh) -> Merchant:
    """A fresh merchant with an access token."""
    return mesh.create_merchant()


@pytest.fixture(scope="session")
def openapi(mesh: Mesh) -> dict[str, Any]:
    """The OpenAPI document as the edge serves it."""
    reply = mesh.request("GET", "/openapi.json")
    assert reply.status == 200, reply
    assert reply.headers.get("content-type", "").startswith("application/json")
    document: dict[str, Any] = reply.json()
    return document
