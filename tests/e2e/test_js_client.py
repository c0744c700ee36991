"""The JavaScript client (clients/js) against the whole mesh, through Envoy's gRPC port.

The proof that an SDK generated or loaded from our contracts in another language works:
`clients/js/examples/pay.mjs` creates a merchant, issues a token, creates a transaction,
pays it by card with manual capture and captures it, all over native gRPC (h2c) through
the edge; the client's own unit tests (an in-process fake server) run here too.

The mesh comes from the shared e2e fixture `mesh` when tests/e2e/conftest.py provides one;
otherwise this module starts its own: the three services on free ports against real
PostgreSQL (fresh schemas) and Redis, and Envoy rendered by `pi.edge` in front of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "js"
PAY_EXAMPLE = CLIENT / "examples" / "pay.mjs"
SERVICES = ("auth", "transactions", "payments")
NODE_TIMEOUT = 120


@pytest.fixture(scope="module")
def node() -> str:
    binary = shutil.which("node")
    if binary is None:
        pytest.skip("node is not installed (Node.js 20 runs the JavaScript client)")
    if not (REPO / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("node_modules has no @grpc/grpc-js: run `make setup` (npm ci at the root)")
    return binary


def run_node(
    node: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=False,
    )


def test_js_client_unit_suite(node: str) -> None:
    result = run_node(node, "--test", str(CLIENT / "test"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


# --- the mesh ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    """What the JS client needs to know about a running mesh."""

    grpc_target: str  # Envoy's cleartext HTTP/1.1 + h2c port, which also carries native gRPC
    admin_token: str
    tls_target: str | None = None  # Envoy's TLS 1.3 port
    ca_file: str | None = None  # the CA that signed the edge's certificate


@pytest.fixture(scope="module")
def edge(request: pytest.FixtureRequest) -> Iterator[Edge]:
    try:
        shared = request.getfixturevalue("mesh")
    except pytest.FixtureLookupError:
        shared = None
    if shared is not None:
        yield _edge_of(shared)
        return
    pg_url = request.getfixturevalue("pg_url")
    redis_url = request.getfixturevalue("redis_url")
    tmp = request.getfixturevalue("tmp_path_factory").mktemp("js-mesh")
    with _own_mesh(pg_url, redis_url, tmp) as own:
        yield own


def _edge_of(mesh: Any) -> Edge:
    """Adapts the shared fixture: its gRPC (h2c) address and the admin token."""
    target = _first_attribute(mesh, ("grpc_target", "http_target", "http_address", "grpc_address"))
    admin = _first_attribute(mesh, ("admin_token", "admin"))
    tls = next((getattr(mesh, n) for n in ("tls_target", "https_target") if hasattr(mesh, n)), None)
    ca = next((getattr(mesh, n) for n in ("ca_file", "ca_path") if hasattr(mesh, n)), None)
    return Edge(
        grpc_target=str(target).removeprefix("http://"),
        admin_token=str(admin),
        tls_target=None if tls is None else str(tls).removeprefix("https://"),
        ca_file=None if ca is None else str(ca),
    )


def _first_attribute(obj: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        if hasattr(obj, name):
            return getattr(obj, name)
    raise AttributeError(f"the shared `mesh` fixture has none of {names}: adapt _edge_of")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_serving(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"process on port {port} exited with {process.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"no SERVING health on port {port}")


def _wait_edge_healthy(admin_port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    """Until Envoy's active health checks have found every cluster's endpoint healthy."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"envoy exited with {process.returncode}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{admin_port}/clusters?format=json", timeout=1
            ) as reply:
                clusters = json.load(reply).get("cluster_statuses", [])
            healthy = {
                c["name"]
                for c in clusters
                if c.get("host_statuses")
                and all(
                    h.get("health_status", {}).get("eds_health_status") == "HEALTHY"
                    and not h.get("health_status", {}).get("failed_active_health_check")
                    for h in c["host_statuses"]
                )
            }
            if set(SERVICES) <= healthy:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise TimeoutError("envoy never saw all three services healthy")


@contextlib.contextmanager
def _own_mesh(pg_url: str, redis_url: str, tmp: Path) -> Iterator[Edge]:
    from pi.edge import Endpoint, ensure_dev_cert, envoy_command, render_bootstrap, write_bootstrap
    from pi.edge.profiles import e2e_config

    suffix = uuid.uuid4().hex[:10]
    ports = {name: _free_port() for name in SERVICES}
    admin_token = "adm_" + secrets.token_urlsafe(24)
    common = {
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_url,
        "PI_ADMIN_TOKEN": admin_token,
        "PI_SERVICE_TOKEN": "svc_" + secrets.token_urlsafe(24),
        "PI_MASTER_KEYS": "1=" + _b64(secrets.token_bytes(32)),
        "PI_AUTH_TARGET": f"127.0.0.1:{ports['auth']}",
        "PI_TRANSACTIONS_TARGET": f"127.0.0.1:{ports['transactions']}",
        "PI_PAYMENTS_TARGET": f"127.0.0.1:{ports['payments']}",
        "PI_REVOCATION_POLL_SECONDS": "1",
        "PI_LOG_LEVEL": "WARNING",
    }
    schemas = {name: f"js_{suffix}_{name}" for name in SERVICES}
    processes: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for name in SERVICES:
            env = {**os.environ, **common, "PI_DB_SCHEMA": schemas[name]}
            subprocess.run(
                [sys.executable, "-m", f"pi.{name}", "migrate"],
                cwd=REPO,
                env=env,
                check=True,
                timeout=120,
            )
        deadline = time.monotonic() + 60
        # auth first, as a launcher does: the others fetch its signing keys when they start.
        for name in SERVICES:
            env = {
                **os.environ,
                **common,
                "PI_DB_SCHEMA": schemas[name],
                "PI_GRPC_PORT": str(ports[name]),
            }
            log = (tmp / f"{name}.log").open("wb")
            logs.append(log)
            process = subprocess.Popen(
                [sys.executable, "-m", f"pi.{name}"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            processes.append(process)
            if name == "auth":
                _wait_serving(ports[name], process, deadline)
        for name, process in zip(SERVICES, processes, strict=True):
            _wait_serving(ports[name], process, deadline)

        http_port, https_port, admin_port = _free_port(), _free_port(), _free_port()
        cert = ensure_dev_cert(tmp / "certs")
        config = e2e_config(
            str(REPO / "generated" / "descriptors.binpb"),
            upstreams={name: (Endpoint("127.0.0.1", port),) for name, port in ports.items()},
            http_port=http_port,
            https_port=https_port,
            admin_port=admin_port,
            requests_per_second=1000,
            tls_cert_path=str(cert.cert_path),
            tls_key_path=str(cert.key_path),
        )
        config_path = tmp / "envoy.json"
        write_bootstrap(render_bootstrap(config), config_path)
        log = (tmp / "envoy.log").open("wb")
        logs.append(log)
        envoy = subprocess.Popen(
            envoy_command(config_path, concurrency=1),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(envoy)
        _wait_edge_healthy(admin_port, envoy, time.monotonic() + 60)
        yield Edge(
            grpc_target=f"127.0.0.1:{http_port}",
            admin_token=admin_token,
            tls_target=f"127.0.0.1:{https_port}",
            ca_file=str(cert.ca_path),
        )
    except Exception:
        for log in logs:
            log.flush()
            tail = Path(log.name).read_text(errors="replace")[-3000:]
            sys.stderr.write(f"--- {log.name}\n{tail}\n")
        raise
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
        with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
            for schema in schemas.values():
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


# --- the tests -----------------------------------------------------------------------------


@pytest.mark.e2e
def test_pay_example_completes_a_transaction_through_envoy(node: str, edge: Edge) -> None:
    result = run_node(
        node,
        str(PAY_EXAMPLE),
        env={"PI_TARGET": edge.grpc_target, "PI_ADMIN_TOKEN": edge.admin_token},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    transaction = json.loads(result.stdout)
    assert transaction["status"] == "TRANSACTION_STATUS_COMPLETED"
    assert int(transaction["capturedAmount"]) == 1999
    assert int(transaction["amount"]) == 1999
    assert transaction["currency"] == "USD"
    assert int(transaction["refundedAmount"]) == 0
    assert transaction["id"].startswith("txn_")
    assert "captured 1999" in result.stderr


@pytest.mark.e2e
def test_pay_example_over_the_tls_listener(node: str, edge: Edge) -> None:
    if edge.tls_target is None or edge.ca_file is None:
        pytest.skip("the shared mesh names no TLS address or CA file")
    result = run_node(
        node,
        str(PAY_EXAMPLE),
        "--target",
        edge.tls_target,
        "--ca",
        edge.ca_file,
        env={"PI_ADMIN_TOKEN": edge.admin_token},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    transaction = json.loads(result.stdout)
    assert transaction["status"] == "TRANSACTION_STATUS_COMPLETED"
    assert int(transaction["capturedAmount"]) == 1999


# The services encode google.rpc.Status with Python's protobuf; the JS client must decode
# it after Envoy has passed the trailer through.
_ERRORS_SCRIPT = """
import { createClients } from './clients/js/src/index.js';
const pi = createClients({ target: process.env.PI_TARGET, tls: false });
const out = {};
try {
  await pi.transactions.createTransaction({ transaction: { amount: '100', currency: 'USD' } },
                                          { token: process.env.PI_ADMIN_TOKEN });
} catch (e) { out.adminCreatesTransaction = e.toJSON(); }
try {
  await pi.transactions.getTransaction({ id: 'txn_x' }, { token: 'not-a-token' });
} catch (e) { out.badToken = e.toJSON(); }
const { apiKey, apiKeySecret } = await pi.auth.createMerchant(
  { displayName: 'JS errors' }, { token: process.env.PI_ADMIN_TOKEN });
const { accessToken } = await pi.auth.issueToken({ apiKeyId: apiKey.id, apiKeySecret });
try {
  await pi.transactions.createTransaction({ transaction: { amount: '0', currency: 'USD' } },
                                          { token: accessToken });
} catch (e) { out.invalid = e.toJSON(); }
pi.close();
console.log(JSON.stringify(out));
"""


@pytest.mark.e2e
def test_js_client_decodes_platform_errors_through_envoy(node: str, edge: Edge) -> None:
    result = run_node(
        node,
        "--input-type=module",
        "-e",
        _ERRORS_SCRIPT,
        env={"PI_TARGET": edge.grpc_target, "PI_ADMIN_TOKEN": edge.admin_token},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    errors = json.loads(result.stdout)

    invalid = errors["invalid"]
    assert invalid["codeName"] == "INVALID_ARGUMENT"
    assert invalid["domain"] == "pi.platform"
    assert invalid["reason"]
    assert any(v["field"] == "transaction.amount" for v in invalid["fieldViolations"]), invalid

    assert errors["badToken"]["codeName"] == "UNAUTHENTICATED"
    assert errors["badToken"]["reason"]
    assert errors["adminCreatesTransaction"]["codeName"] == "PERMISSION_DENIED"
