"""The Kubernetes manifests, run: each overlay's Jobs and Deployments as podman containers
from the image, with the manifest's own command, env, ports, securityContext and volumes
(tests/containers/podman.py), probed as the kubelet would, then a merchant's journey
through the edge container.

Per overlay: a fresh database on the session's PostgreSQL; the migration Jobs one by one
(exit 0 required); every Deployment's container; its startupProbe until it passes (within
the manifest's own budget), then its readiness and liveness probes once each; the journey
over HTTP/JSON on the edge's TLS port 8443 (its cleartext 8080 only redirects; a POST there
is refused and reaches no service). Every container is removed afterwards, pass or
fail (by the ids this test started).
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.edge.certs import ensure_dev_cert
from pi.edge.identities import MESH_IDENTITIES, Identity, ensure_identities
from pi.platform.db.embedded import EmbeddedPostgres
from pi.platform.db.roles import role_url
from tests.containers.podman import Manifest, container_argv, podman
from tests.containers.ports import busy_ports, release, reserve

REPO = Path(__file__).resolve().parents[2]
# Every address a manifest's config names by cluster DNS, pointed at the shared loopback.
CLUSTER_HOSTS = {
    **{
        f"{service}.pi.svc.cluster.local": "127.0.0.1"
        for service in ("auth", "transactions", "payments")
    },
    # The OpenTelemetry Collector of k8s/monitoring is not run here: spans the edge samples
    # find nothing listening (the services count them as dropped).
    "otel-collector.pi-monitoring.svc.cluster.local": "127.0.0.1",
}
JOB_TIMEOUT = 90.0
CARD = {"number": "4242424242424242", "expMonth": 12, "expYear": 2034, "cvc": "123"}


def render(overlay: str) -> list[Manifest]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlays cannot be rendered")
    done = subprocess.run(
        [kubectl, "kustomize", str(REPO / "k8s" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


# --- probes, as the kubelet runs them -----------------------------------------------------


def named_port(container: Manifest, port: int | str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if isinstance(port, str):
        assert port in ports, f"probe port {port!r} is not a named port of {container['name']}"
        return int(ports[port])
    assert port in ports.values(), f"probe port {port} is not declared by {container['name']}"
    return port


def probe_once(container: Manifest, probe: Manifest, timeout: float) -> str | None:
    """None if the probe passes, else why not."""
    if "grpc" in probe:
        port = named_port(container, probe["grpc"]["port"])
        service = probe["grpc"].get("service", "")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout
                )
            except grpc.RpcError as exc:
                return f"grpc :{port}: {exc.code()}"
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            return None if serving else f"grpc :{port}: {reply.status}"
    if "httpGet" in probe:
        get = probe["httpGet"]
        port = named_port(container, get["port"])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            connection.request("GET", get.get("path", "/"))
            status = connection.getresponse().status
        except OSError as exc:
            return f"GET :{port}{get.get('path')}: {exc}"
        finally:
            connection.close()
        return None if 200 <= status < 400 else f"GET :{port}{get.get('path')}: {status}"
    if "tcpSocket" in probe:
        port = named_port(container, probe["tcpSocket"]["port"])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
        except OSError as exc:
            return f"tcp :{port}: {exc}"
        return None
    raise AssertionError(f"probe kind not handled: {probe}")


def wait_probe(container: Manifest, probe: Manifest, cid: str, budget: float) -> None:
    """Probe every 0.2 s until it passes within `budget` s (the manifest's own, capped)."""
    deadline = time.monotonic() + budget
    while True:
        failure = probe_once(container, probe, float(probe.get("timeoutSeconds", 1)))
        if failure is None:
            return
        state = podman("inspect", "--format", "{{.State.Status}}", cid).stdout.strip()
        if state != "running" or time.monotonic() > deadline:
            logs = podman("logs", cid, check=False)
            raise AssertionError(
                f"{container['name']}: {failure} (container {state})\n{logs.stderr[-3000:]}"
            )
        time.sleep(0.2)


# --- the journey --------------------------------------------------------------------------


_TLS: dict[str, ssl.SSLContext] = {}


def call(method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    # The development certificate names localhost.
    connection = http.client.HTTPSConnection("localhost", 8443, timeout=15, context=_TLS["ca"])
    headers = {"accept": "application/json", "content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    if method == "POST":
        headers["idempotency-key"] = uuid.uuid4().hex
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=payload, headers=headers)
        reply = connection.getresponse()
        data = reply.read()
    finally:
        connection.close()
    assert reply.status == 200, f"{method} {path}: {reply.status} {data[:1000]!r}"
    return json.loads(data)


def create_merchant(admin_token: str, admin: Identity) -> auth_pb2.CreateMerchantResponse:
    """As the operator: straight to the auth pod's mTLS port with the admin certificate
    (the edge never routes the admin API)."""
    tls = admin.mesh_tls()
    credentials = grpc.ssl_channel_credentials(
        Path(tls.ca_path).read_bytes(),
        Path(tls.key_path).read_bytes(),
        Path(tls.cert_path).read_bytes(),
    )
    with grpc.secure_channel(
        "127.0.0.1:50051", credentials, options=[("grpc.ssl_target_name_override", "auth")]
    ) as channel:
        created: auth_pb2.CreateMerchantResponse = auth_pb2_grpc.AuthServiceStub(
            channel
        ).CreateMerchant(
            auth_pb2.CreateMerchantRequest(
                display_name="Container journey", request_id=str(uuid.uuid4())
            ),
            metadata=(("authorization", f"Bearer {admin_token}"),),
            timeout=15,
        )
    return created


def merchant_journey(admin_token: str, admin: Identity) -> None:
    created = create_merchant(admin_token, admin)
    issued = call(
        "POST",
        "/v1/auth/token",
        {"apiKeyId": created.api_key.id, "apiKeySecret": created.api_key_secret},
    )
    token = issued["accessToken"]
    txn = call("POST", "/v1/transactions", {"amount": "5000", "currency": "USD"}, token)
    txn_id = txn["transaction"]["id"]
    pay = call(
        "POST",
        "/v1/payments",
        {
            "transactionId": txn_id,
            "method": "PAYMENT_METHOD_TYPE_CARD",
            "card": CARD,
            "captureMode": "CAPTURE_MODE_MANUAL",
        },
        token,
    )["payment"]
    assert pay["status"] == "PAYMENT_STATUS_REQUIRES_CAPTURE", pay
    captured = call("POST", f"/v1/payments/{pay['id']}:capture", {}, token)["payment"]
    assert captured["capturedAmount"] == "5000", captured
    refunded = call("POST", f"/v1/payments/{pay['id']}:refund", {"amount": "1500"}, token)
    assert refunded["payment"]["refundedAmount"] == "1500", refunded
    read = call("GET", f"/v1/payments/{pay['id']}", token=token)["payment"]
    assert (read["capturedAmount"], read["refundedAmount"]) == ("5000", "1500"), read
    # The movements reach the transaction through the outbox: poll, bounded.
    deadline = time.monotonic() + 15
    while True:
        shown = call("GET", f"/v1/transactions/{txn_id}", token=token)["transaction"]
        if shown.get("refundedAmount") == "1500":
            assert shown["status"] == "TRANSACTION_STATUS_PARTIALLY_REFUNDED", shown
            return
        assert time.monotonic() < deadline, f"the transaction never showed the refund: {shown}"
        time.sleep(0.2)


# --- the test -----------------------------------------------------------------------------


@pytest.fixture
def started() -> Iterator[list[str]]:
    """Ids of the containers this test started; all removed afterwards, pass or fail, and
    the pod ports reserved again for the next test."""
    ids: list[str] = []
    yield ids
    for cid in reversed(ids):
        podman("rm", "--force", "--time", "5", cid, check=False, timeout=60)
    busy_ports()  # waits, bounded, for the removed pods' listeners to close
    reserve()


def fresh_database(pg: EmbeddedPostgres, name: str) -> str:
    with psycopg.connect(pg.tcp_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return pg.tcp_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_the_overlay_runs_from_the_image(
    overlay: str,
    image: str,
    container_pg: EmbeddedPostgres,
    started: list[str],
    tmp_path: Path,
) -> None:
    objects = render(overlay)
    release()  # the ports reserved since the tier was loaded (tests/containers/ports.py)
    busy = busy_ports()
    assert not busy, f"ports the manifests use are taken on this machine: {busy}"
    tmp_path.chmod(0o755)  # the volumes' files are read by user 10001 in the containers

    admin_token = secrets.token_urlsafe(24)
    cert = ensure_dev_cert(tmp_path / "certs")
    identities = ensure_identities(tmp_path / "certs", MESH_IDENTITIES)
    owner_url = fresh_database(container_pg, f"k8s_{uuid.uuid4().hex[:8]}")
    test_secrets: dict[str, dict[str, str]] = {
        "pi-migrations": {"DATABASE_URL": owner_url},
        "pi-edge-tls": {
            "tls.crt": cert.cert_path.read_text(),
            "tls.key": cert.key_path.read_text(),
        },
    }
    for service in ("auth", "transactions", "payments"):
        password = secrets.token_urlsafe(16)
        test_secrets[f"pi-{service}"] = {
            "DATABASE_URL": role_url(owner_url, f"pi_{service}", password),
            "PI_DB_SERVICE_ROLE_PASSWORD": password,
            "PI_MASTER_KEYS": "1=" + base64.b64encode(secrets.token_bytes(32)).decode(),
            # No REDIS_URL: the manifests mark it optional; the services run without Redis.
        }
    test_secrets["pi-auth"]["PI_ADMIN_TOKEN"] = admin_token
    for name, identity in identities.items():
        secret_name = "pi-edge-mesh-tls" if name == "edge" else f"pi-{name}-tls"
        test_secrets[secret_name] = {
            "tls.crt": identity.cert_path.read_text(),
            "tls.key": identity.key_path.read_text(),
            "ca.crt": identity.ca_path.read_text(),
        }
    config_maps = {
        o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"
    }

    def start(kind: str, obj: Manifest) -> tuple[Manifest, str]:
        spec = obj["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        argv = container_argv(
            f"pi-ct-{obj['metadata']['name']}-{uuid.uuid4().hex[:6]}",
            image,
            spec,
            container,
            config_maps,
            test_secrets,
            CLUSTER_HOSTS,
            tmp_path,
        )
        done = podman(*argv, check=False)
        assert done.returncode == 0, f"{kind} {obj['metadata']['name']}: {done.stderr}"
        started.append(done.stdout.strip())
        return container, started[-1]

    # The migration Jobs, one-shot, before anything else (as the README's rollout does).
    jobs = [o for o in objects if o["kind"] == "Job"]
    assert {j["metadata"]["name"] for j in jobs} == {
        "auth-migrate",
        "transactions-migrate",
        "payments-migrate",
    }
    for job in jobs:
        _, cid = start("Job", job)
        waited = podman("wait", cid, timeout=JOB_TIMEOUT)
        logs = podman("logs", cid, check=False)
        assert waited.stdout.strip() == "0", f"{job['metadata']['name']}: {logs.stderr[-3000:]}"

    # Every Deployment, services first: the edge's health checks need them.
    deployments = sorted(
        (o for o in objects if o["kind"] == "Deployment"),
        key=lambda d: d["metadata"]["name"] == "edge",
    )
    assert len(deployments) == 4
    for deployment in deployments:
        container, cid = start("Deployment", deployment)
        startup = container.get("startupProbe") or container["readinessProbe"]
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        wait_probe(container, startup, cid, min(budget + startup.get("initialDelaySeconds", 0), 60))
        for kind in ("readinessProbe", "livenessProbe"):
            assert kind in container, f"{deployment['metadata']['name']} has no {kind}"
            failure = probe_once(container, container[kind], 3.0)
            assert failure is None, f"{deployment['metadata']['name']} {kind}: {failure}"

    _TLS["ca"] = ssl.create_default_context(cafile=str(cert.ca_path))
    plain = http.client.HTTPConnection("127.0.0.1", 8080, timeout=15)
    try:
        plain.request("POST", "/v1/merchants", body=b"{}", headers={"authorization": "x"})
        refused = plain.getresponse()
        refused.read()
    finally:
        plain.close()
    assert refused.status == 403, "plain HTTP must reach no service"
    # The edge answers only once its upstreams are healthy: retry the first call briefly.
    deadline = time.monotonic() + 20
    while True:
        try:
            merchant_journey(admin_token, identities["admin"])
            break
        except AssertionError as exc:
            if "503" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
