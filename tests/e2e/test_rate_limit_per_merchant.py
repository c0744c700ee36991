"""Per-merchant rate limits end to end: a service's own limit, rendered by Envoy as 429.

The shared mesh runs with a limit no test reaches. Here a second transaction service
process, a replica on the mesh's schema and Redis with `PI_RATE_LIMIT_PER_MERCHANT=3`,
sits behind an Envoy of its own (auth and payments are the mesh's), whose edge-wide
limit is far above what the test sends: every 429 here comes from the service.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from generated.pi.transactions.v1 import transactions_pb2, transactions_pb2_grpc
from pi.edge import Endpoint, UpstreamTls, envoy_command, render_bootstrap, write_bootstrap
from pi.edge.identities import Identity
from pi.edge.profiles import e2e_config
from tests.support.processes import REPO, free_port, running

pytestmark = pytest.mark.e2e

LIMIT = 3
EDGE_REQUESTS_PER_SECOND = 2000
START_TIMEOUT = 60.0
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


@dataclass(frozen=True)
class LimitedEdge:
    """An Envoy whose transaction service allows `LIMIT` calls per merchant per second."""

    http_port: int

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def list_transactions(self, token: str) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=15)
        try:
            connection.request(
                "GET",
                "/v1/transactions",
                headers={"authorization": f"Bearer {token}", "accept": "application/json"},
            )
            reply = connection.getresponse()
            assert reply.getheader("content-type", "").startswith("application/json")
            return reply.status, json.loads(reply.read())
        finally:
            connection.close()


@pytest.fixture(scope="module")
def limited_edge(mesh: Any) -> Iterator[LimitedEdge]:
    port = free_port()
    environ = {
        **mesh.service_envs["transactions"],
        "PI_DB_SCHEMA": mesh.schemas["transactions"],
        "PI_GRPC_PORT": str(port),
        "PI_METRICS_PORT": str(free_port()),  # the mesh's replica holds its own
        "PI_RATE_LIMIT_PER_MERCHANT": str(LIMIT),
    }
    with running("transactions", environ) as replica:
        _wait_serving(replica, mesh.channel_to(f"127.0.0.1:{port}", "transactions", "admin"))
        upstreams = {
            svc: int(target.rsplit(":", 1)[1]) for svc, target in mesh.service_targets.items()
        }
        upstreams["transactions"] = port
        with _envoy(mesh.workdir, upstreams, mesh.identities["edge"]) as http_port:
            yield LimitedEdge(http_port)
        replica.send_signal(signal.SIGTERM)
        _, stderr = replica.communicate(timeout=15)
    assert replica.returncode == 0, stderr[-4000:]
    assert '"level": "ERROR"' not in stderr and "Traceback" not in stderr, stderr[-4000:]


def test_over_its_limit_a_merchant_gets_429_with_rate_limited_details(
    mesh: Any, limited_edge: LimitedEdge
) -> None:
    merchant, other = mesh.create_merchant(), mesh.create_merchant()

    _at_the_start_of_a_second()
    started = time.time()
    replies = [limited_edge.list_transactions(merchant.token) for _ in range(LIMIT + 3)]
    one_window = int(started) == int(time.time())
    statuses = [status for status, _ in replies]
    if one_window:
        assert statuses == [200] * LIMIT + [429] * 3, replies
    assert statuses[0] == 200 and 429 in statuses, replies
    assert set(statuses) <= {200, 429}, replies

    body = next(body for status, body in replies if status == 429)
    assert body["code"] == 8, body  # RESOURCE_EXHAUSTED
    assert body["message"], body
    (info,) = [d for d in body["details"] if d["@type"] == ERROR_INFO]
    assert (info["reason"], info["domain"]) == ("RATE_LIMITED", "pi.platform"), body
    assert info["metadata"] == {"limit": str(LIMIT), "retry_after_seconds": "1"}, body
    (retry,) = [d for d in body["details"] if d["@type"] == RETRY_INFO]
    assert 0 < float(retry["retryDelay"].removesuffix("s")) <= 1, body

    # Another merchant has a budget of its own; the shared mesh (limit 100) still serves.
    assert limited_edge.list_transactions(other.token)[0] == 200
    assert mesh.request("GET", "/v1/transactions", token=merchant.token).status == 200

    # The next window starts afresh.
    _at_the_start_of_a_second()
    assert limited_edge.list_transactions(merchant.token)[0] == 200


def test_native_grpc_clients_get_resource_exhausted_with_retry_info(
    mesh: Any, limited_edge: LimitedEdge
) -> None:
    merchant = mesh.create_merchant()
    request = transactions_pb2.ListTransactionsRequest(page_size=1)
    metadata = (("authorization", f"Bearer {merchant.token}"),)
    errors: list[grpc.RpcError] = []
    with grpc.insecure_channel(limited_edge.grpc_target) as channel:
        stub = transactions_pb2_grpc.TransactionServiceStub(channel)
        _at_the_start_of_a_second()
        for _ in range(LIMIT + 3):
            try:
                stub.ListTransactions(request, metadata=metadata, timeout=5)
            except grpc.RpcError as error:
                errors.append(error)
    assert errors, "never rate limited"
    error: Any = errors[0]
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    status = rpc_status.from_call(error)
    assert status is not None
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.reason == "RATE_LIMITED"
    assert status.details[1].Unpack(retry)
    assert 0 < retry.retry_delay.ToNanoseconds() <= 1_000_000_000


# --- helpers -------------------------------------------------------------------------------


def _at_the_start_of_a_second() -> None:
    """So that a burst of quick requests falls in one one-second window."""
    time.sleep(1.02 - time.time() % 1)


def _wait_serving(process: subprocess.Popen[str], channel: grpc.Channel) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    target = "the replica"
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, "the transaction service replica exited"
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.05)
    raise TimeoutError(f"the transaction service replica at {target} never became SERVING")


@contextlib.contextmanager
def _envoy(workdir: Path, upstreams: dict[str, int], edge: Identity) -> Iterator[int]:
    """Envoy before `upstreams` (service → port); yields its HTTP port once all are healthy."""
    http_port, admin_port = free_port(), free_port()
    config = e2e_config(
        str(REPO / "generated" / "descriptors.binpb"),
        upstreams={svc: (Endpoint("127.0.0.1", port),) for svc, port in upstreams.items()},
        http_port=http_port,
        https_port=free_port(),
        admin_port=admin_port,
        requests_per_second=EDGE_REQUESTS_PER_SECOND,
        upstream_tls=UpstreamTls(str(edge.ca_path), str(edge.cert_path), str(edge.key_path)),
    )
    config_path = workdir / "envoy-merchant-limit.json"
    write_bootstrap(render_bootstrap(config), config_path)
    with open(workdir / "envoy-merchant-limit.log", "ab") as log:
        envoy = subprocess.Popen(
            envoy_command(config_path, concurrency=1, log_level="warn"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(envoy, admin_port, set(upstreams))
        yield http_port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(envoy.pid, signal.SIGTERM)
        try:
            envoy.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(envoy.pid, signal.SIGKILL)
            envoy.wait()


def _wait_healthy(envoy: subprocess.Popen[bytes], admin_port: int, clusters: set[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert envoy.poll() is None, f"envoy exited with {envoy.returncode}"
        with contextlib.suppress(OSError, ValueError):
            connection = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=2)
            try:
                connection.request("GET", "/clusters?format=json")
                statuses = json.loads(connection.getresponse().read())["cluster_statuses"]
            finally:
                connection.close()
            healthy = {
                cluster["name"]
                for cluster in statuses
                if cluster.get("host_statuses")
                and all(
                    host.get("health_status", {}).get("eds_health_status") == "HEALTHY"
                    for host in cluster["host_statuses"]
                )
            }
            if clusters <= healthy:
                return
        time.sleep(0.1)
    raise TimeoutError("envoy never saw every upstream healthy")
