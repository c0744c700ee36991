"""The security findings of issue 13 through the running mesh and a real Envoy.

- 1: an edge rendered for a public address proxies no plain HTTP: a card payment over
  http:// is refused and reaches no service; GET is redirected to https://; TLS responses
  carry HSTS.
- 2: a restricted key's token is refused (403) where it lacks the scope, through the edge.
- 4: X-Forwarded-For written by a client does not change who the services count.
- 9: revocation propagation through the mesh, measured (p99 printed; bounded, not timed).
- 11: the edge's access log holds paths without their query strings.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from pi.edge import Endpoint, UpstreamTls, envoy_command, render_bootstrap, write_bootstrap
from pi.edge.certs import ensure_dev_cert
from pi.edge.profiles import e2e_config
from tests.e2e.conftest import (
    DESCRIPTOR,
    START_TIMEOUT,
    Merchant,
    Mesh,
    Processes,
    free_port,
    http_request,
    wait_edge_ready,
)

CARD = {"number": "4242424242424242", "expMonth": 12, "expYear": 2034, "cvc": "123"}


@pytest.fixture(scope="module")
def public_edge(mesh: Mesh) -> Iterator[tuple[int, int]]:
    """A second Envoy before the same services, rendered as a public edge would be
    (cleartext redirects only, HSTS), on loopback ports: (http port, https port)."""
    processes = Processes(mesh.workdir)
    cert = ensure_dev_cert(mesh.workdir / "certs")
    http_port, https_port, admin_port = free_port(), free_port(), free_port()
    edge = mesh.identities["edge"]
    config = e2e_config(
        str(DESCRIPTOR),
        upstreams={
            svc: (Endpoint("127.0.0.1", int(t.rsplit(":", 1)[1])),)
            for svc, t in mesh.service_targets.items()
        },
        http_port=http_port,
        https_port=https_port,
        admin_port=admin_port,
        tls_cert_path=str(cert.cert_path),
        tls_key_path=str(cert.key_path),
        requests_per_second=1000,
        # The services serve mutual TLS only: the edge calls them as itself.
        upstream_tls=UpstreamTls(str(edge.ca_path), str(edge.cert_path), str(edge.key_path)),
    )
    config = replace(config, plaintext="redirect", hsts=True, public_https_port=https_port)
    path = mesh.workdir / "envoy-public.json"
    write_bootstrap(render_bootstrap(config), path)
    envoy = processes.start("envoy-public", envoy_command(path, concurrency=1), os.environ)
    try:
        wait_edge_ready(envoy, admin_port, time.monotonic() + START_TIMEOUT)
        yield http_port, https_port
    finally:
        processes.stop_all()


def test_a_card_payment_over_plain_http_reaches_no_service(
    mesh: Mesh, merchant: Merchant, public_edge: tuple[int, int]
) -> None:
    http_port, https_port = public_edge
    txn = mesh.request(
        "POST", "/v1/transactions", {"amount": "500", "currency": "USD"}, token=merchant.token
    )
    assert txn.status == 200, txn
    body = {
        "transactionId": txn.json()["transaction"]["id"],
        "method": "PAYMENT_METHOD_TYPE_CARD",
        "card": CARD,
    }
    plain = http_request(
        f"http://127.0.0.1:{http_port}", "POST", "/v1/payments", body, token=merchant.token
    )
    assert plain.status == 403, plain
    assert "location" not in plain.headers  # never re-sent over TLS behind the client's back
    assert "https" in plain.json()["message"]
    listed = mesh.request("GET", "/v1/payments", token=merchant.token)
    assert listed.json().get("payments", []) == []

    redirected = http_request(f"http://127.0.0.1:{http_port}", "GET", "/v1/transactions")
    assert redirected.status == 301
    assert redirected.headers["location"].startswith("https://127.0.0.1")
    assert redirected.headers["location"].endswith(f":{https_port}/v1/transactions")
    health = http_request(f"http://127.0.0.1:{http_port}", "GET", "/healthz")
    assert health.status == 200

    secure = http_request(
        f"https://localhost:{https_port}",
        "GET",
        "/v1/payments",
        token=merchant.token,
        ssl_context=mesh.ssl_context(),
    )
    assert secure.status == 200, secure
    assert secure.headers["strict-transport-security"].startswith("max-age=")


def _key(mesh: Mesh, merchant: Merchant, scopes: list[str]) -> str:
    created = mesh.request(
        "POST",
        "/v1/api-keys",
        {"displayName": "restricted", "scopes": scopes},
        token=merchant.token,
    )
    assert created.status == 200, created
    key = created.json()
    assert key["apiKey"]["scopes"] == scopes
    issued = mesh.request(
        "POST",
        "/v1/auth/token",
        {"apiKeyId": key["apiKey"]["id"], "apiKeySecret": key["apiKeySecret"]},
    )
    assert issued.status == 200, issued
    assert issued.json()["scopes"] == scopes
    return str(issued.json()["accessToken"])


def test_restricted_keys_are_enforced_on_every_service_through_the_edge(
    mesh: Mesh, merchant: Merchant
) -> None:
    read_only = _key(mesh, merchant, ["transactions:read", "payments:read"])
    assert mesh.request("GET", "/v1/transactions", token=read_only).status == 200
    assert mesh.request("GET", "/v1/payments", token=read_only).status == 200
    denied = mesh.request(
        "POST", "/v1/transactions", {"amount": "100", "currency": "USD"}, token=read_only
    )
    assert denied.status == 403, denied
    assert "transactions:write" in denied.json()["message"]
    assert mesh.request("GET", "/v1/api-keys", token=read_only).status == 403
    # A payments token cannot mint a key, so it cannot outlive its own revocation.
    payments = _key(mesh, merchant, ["transactions:write", "payments:write"])
    minted = mesh.request("POST", "/v1/api-keys", {"displayName": "x"}, token=payments)
    assert minted.status == 403, minted


def _from_address(mesh: Mesh, source: str, body: dict[str, Any], forwarded: str) -> int:
    connection = http.client.HTTPConnection(
        "127.0.0.1", mesh.http_port, timeout=15, source_address=(source, 0)
    )
    try:
        connection.request(
            "POST",
            "/v1/auth/token",
            body=json.dumps(body).encode(),
            headers={"content-type": "application/json", "x-forwarded-for": forwarded},
        )
        reply = connection.getresponse()
        reply.read()
        return reply.status
    finally:
        connection.close()


def test_a_spoofed_forwarded_for_does_not_change_who_is_counted(mesh: Mesh) -> None:
    """From 127.0.0.2 (a loopback address of its own, so no other test is affected):
    eleven failures under eleven made-up X-Forwarded-For values are all counted against
    127.0.0.2, whose next attempt waits."""
    source = "127.0.0.2"
    bad = {"apiKeyId": "key_01JZZZZZZZZZZZZZZZZZZZZZZZ", "apiKeySecret": "sk_wrong"}
    codes = [_from_address(mesh, source, bad, f"10.1.2.{n}") for n in range(11)]
    assert codes == [401] * 11
    assert _from_address(mesh, source, bad, "10.1.2.99") == 429
    assert mesh.request("POST", "/v1/auth/token", bad).status == 401  # 127.0.0.1 is fine


def test_revocations_propagate_within_the_bound_p99_measured(mesh: Mesh) -> None:
    merchant = mesh.create_merchant()
    samples: list[float] = []
    for _ in range(20):
        issued = mesh.request(
            "POST",
            "/v1/auth/token",
            {"apiKeyId": merchant.api_key_id, "apiKeySecret": merchant.api_key_secret},
        ).json()
        token = issued["accessToken"]
        assert mesh.request("GET", "/v1/payments", token=token).status == 200
        started = time.monotonic()
        revoked = mesh.request(
            "POST", "/v1/auth/token:revoke", {"tokenId": issued["tokenId"]}, token=token
        )
        assert revoked.status == 200, revoked
        while mesh.request("GET", "/v1/payments", token=token).status != 401:
            assert time.monotonic() - started < 10, "a revocation did not propagate"
            time.sleep(0.005)
        samples.append(time.monotonic() - started)
    samples.sort()
    p99 = samples[min(len(samples) - 1, math.ceil(0.99 * len(samples)) - 1)]
    p50 = samples[len(samples) // 2]
    print(
        f"\nrevocation propagation through the mesh: p50 {p50 * 1000:.1f} ms,"
        f" p99 {p99 * 1000:.1f} ms (n={len(samples)})"
    )


def test_the_access_log_has_no_query_strings(mesh: Mesh, merchant: Merchant) -> None:
    marker = f"q{uuid.uuid4().hex}"
    reply = mesh.request("GET", "/v1/payments", token=merchant.token, query={"pageToken": marker})
    assert reply.status in (200, 400)
    (envoy,) = [c for c in mesh.processes.children if c.name == "envoy"]
    deadline = time.monotonic() + 15  # stdout access log lines are flushed in batches
    log = ""
    while '"path":"/v1/payments"' not in log:
        assert time.monotonic() < deadline, "the request never showed in the access log"
        time.sleep(0.25)
        log = envoy.tail(5_000_000)
    assert marker not in log
