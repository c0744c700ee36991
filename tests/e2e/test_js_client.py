"""The JavaScript client (clients/js) against the whole mesh, through Envoy's gRPC port.

The proof that an SDK generated or loaded from our contracts in another language works:
`clients/js/examples/pay.mjs` creates a merchant, issues a token, creates a transaction,
pays it by card with manual capture and captures it, all over native gRPC (h2c) through
the edge (the shared `mesh` fixture of tests/e2e/conftest.py); the client's own unit tests
(an in-process fake server) run here too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "js"
PAY_EXAMPLE = CLIENT / "examples" / "pay.mjs"
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


def _api_key(mesh: Any) -> dict[str, str]:
    """A merchant's API key: the operator creates merchants inside the mesh, where the
    JS client (a merchant's client, through the edge) never goes."""
    merchant = mesh.create_merchant()
    return {"PI_API_KEY_ID": merchant.api_key_id, "PI_API_KEY_SECRET": merchant.api_key_secret}


def test_js_client_unit_suite(node: str) -> None:
    result = run_node(node, "--test", str(CLIENT / "test"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


@pytest.mark.e2e
def test_pay_example_completes_a_transaction_through_envoy(node: str, mesh: Any) -> None:
    result = run_node(
        node,
        str(PAY_EXAMPLE),
        env={"PI_TARGET": mesh.grpc_target, **_api_key(mesh)},
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
def test_pay_example_over_the_tls_listener(node: str, mesh: Any) -> None:
    result = run_node(
        node,
        str(PAY_EXAMPLE),
        "--target",
        mesh.tls_target,
        "--ca",
        mesh.ca_file,
        env=_api_key(mesh),
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
const { accessToken } = await pi.auth.issueToken({
  apiKeyId: process.env.PI_API_KEY_ID, apiKeySecret: process.env.PI_API_KEY_SECRET });
try {
  await pi.transactions.createTransaction({ transaction: { amount: '0', currency: 'USD' } },
                                          { token: accessToken });
} catch (e) { out.invalid = e.toJSON(); }
pi.close();
console.log(JSON.stringify(out));
"""


@pytest.mark.e2e
def test_js_client_decodes_platform_errors_through_envoy(node: str, mesh: Any) -> None:
    result = run_node(
        node,
        "--input-type=module",
        "-e",
        _ERRORS_SCRIPT,
        env={
            "PI_TARGET": mesh.grpc_target,
            "PI_ADMIN_TOKEN": mesh.admin_token,
            **_api_key(mesh),
        },
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
    # Only auth holds the admin token: to transactions it is no credential at all.
    assert errors["adminCreatesTransaction"]["codeName"] == "UNAUTHENTICATED"
