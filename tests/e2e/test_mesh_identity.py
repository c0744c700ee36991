"""Inside the mesh, every process is known by its certificate (mutual TLS), and each
internal RPC answers only the callers on its allow-list (pi.platform.runtime.callers).

The mesh of tests/e2e/conftest.py runs as `make run` does: each service with its own
certificate from the dev CA and only its own secrets; Envoy calls them with its own.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message as protobuf_message
from grpc_status import rpc_status

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from generated.pi.payments.v1 import payments_pb2, payments_pb2_grpc
from generated.pi.transactions.v1 import transactions_pb2, transactions_pb2_grpc
from pi.edge.identities import ensure_identities
from pi.platform.runtime.callers import ALLOWED_CALLERS
from tests.e2e.conftest import _plain_get, mesh_channel

pytestmark = pytest.mark.e2e

TIMEOUT = 10


def _health(channel: grpc.Channel) -> Any:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


def _reason(error: grpc.RpcError) -> str:
    from google.rpc import error_details_pb2

    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, error
    info = error_details_pb2.ErrorInfo()
    assert status.details and status.details[0].Unpack(info), status
    return info.reason


@pytest.mark.parametrize("service", ["auth", "transactions", "payments"])
def test_a_caller_without_a_client_certificate_is_refused(mesh: Any, service: str) -> None:
    target = mesh.service_targets[service]
    ca = Path(mesh.identities["admin"].ca_path).read_bytes()
    # TLS that trusts the mesh CA, but presents no certificate of its own.
    with grpc.secure_channel(
        target,
        grpc.ssl_channel_credentials(ca),
        options=[("grpc.ssl_target_name_override", service)],
    ) as anonymous:
        with pytest.raises(grpc.RpcError) as raised:
            _health(anonymous)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    # And plaintext: nothing answers it.
    with grpc.insecure_channel(target) as plain, pytest.raises(grpc.RpcError) as raised:
        _health(plain)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    # With the mesh identity, the same call works: the refusals above are the handshake's.
    with mesh.channel(service, "admin") as channel:
        assert _health(channel).status == 1


def test_a_certificate_from_another_ca_is_refused(mesh: Any, tmp_path: Path) -> None:
    """Calling itself "payments" is not enough: the certificate must chain to the mesh CA."""
    impostor = ensure_identities(tmp_path / "other-ca", ["payments"])["payments"]
    tls = impostor.mesh_tls()
    with grpc.secure_channel(
        mesh.service_targets["auth"],
        grpc.ssl_channel_credentials(
            Path(mesh.identities["admin"].ca_path).read_bytes(),
            Path(tls.key_path).read_bytes(),
            Path(tls.cert_path).read_bytes(),
        ),
        options=[("grpc.ssl_target_name_override", "auth")],
    ) as channel:
        stub = auth_pb2_grpc.AuthInternalServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ListRevokedTokens(auth_pb2.ListRevokedTokensRequest(), timeout=TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_checks_it_reached_the_service_it_meant(mesh: Any) -> None:
    """Each service's certificate names it: payments cannot answer for auth."""
    identity = mesh.identities["transactions"]
    with (
        mesh_channel(mesh.service_targets["payments"], identity, "auth") as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        _health(channel)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


INTERNAL_CALLS: list[tuple[str, str, Any, str, protobuf_message.Message]] = [
    (
        "auth",
        "/pi.auth.v1.AuthInternalService/ListRevokedTokens",
        auth_pb2_grpc.AuthInternalServiceStub,
        "ListRevokedTokens",
        auth_pb2.ListRevokedTokensRequest(),
    ),
    (
        "transactions",
        "/pi.transactions.v1.TransactionLedgerService/LookupTransaction",
        transactions_pb2_grpc.TransactionLedgerServiceStub,
        "LookupTransaction",
        transactions_pb2.LookupTransactionRequest(merchant_id="mer_x", transaction_id="txn_x"),
    ),
    (
        "transactions",
        "/pi.transactions.v1.TransactionLedgerService/ApplyMovements",
        transactions_pb2_grpc.TransactionLedgerServiceStub,
        "ApplyMovements",
        transactions_pb2.ApplyMovementsRequest(),
    ),
    (
        "payments",
        "/pi.payments.v1.PaymentLedgerService/CloseTransaction",
        payments_pb2_grpc.PaymentLedgerServiceStub,
        "CloseTransaction",
        payments_pb2.CloseTransactionRequest(merchant_id="mer_x", transaction_id="txn_x"),
    ),
    (
        "payments",
        "/pi.payments.v1.PaymentLedgerService/RegisterTransactions",
        payments_pb2_grpc.PaymentLedgerServiceStub,
        "RegisterTransactions",
        payments_pb2.RegisterTransactionsRequest(),
    ),
]
IDENTITIES = ("auth", "transactions", "payments", "edge", "admin", "stranger")


@pytest.mark.parametrize(
    ("service", "method", "stub_class", "name", "request_message"),
    INTERNAL_CALLS,
    ids=[call[1].rsplit("/", 1)[1] for call in INTERNAL_CALLS],
)
def test_every_internal_rpc_answers_only_its_allowed_callers(
    mesh: Any,
    service: str,
    method: str,
    stub_class: Any,
    name: str,
    request_message: protobuf_message.Message,
) -> None:
    allowed = ALLOWED_CALLERS[method]
    assert allowed, method
    for identity in IDENTITIES:
        with mesh.channel(service, identity) as channel:
            call = getattr(stub_class(channel), name)
            try:
                call(request_message, timeout=TIMEOUT)
            except grpc.RpcError as error:
                if identity in allowed:
                    # Whatever the answer to this made-up request, the caller got through.
                    assert error.code() not in (
                        grpc.StatusCode.PERMISSION_DENIED,
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.UNIMPLEMENTED,
                    ), (identity, error)
                else:
                    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (identity, error)
                    assert _reason(error) == "CALLER_NOT_ALLOWED", (identity, error)
                continue
            assert identity in allowed, f"{identity} called {method}"


def test_a_service_calling_the_admin_api_is_denied_even_with_the_admin_token(mesh: Any) -> None:
    request = auth_pb2.CreateMerchantRequest(display_name="Nope", request_id=str(uuid.uuid4()))
    admin = (("authorization", f"Bearer {mesh.admin_token}"),)
    for identity in ("payments", "transactions", "edge", "stranger"):
        with mesh.channel("auth", identity) as channel, pytest.raises(grpc.RpcError) as raised:
            auth_pb2_grpc.AuthServiceStub(channel).CreateMerchant(
                request, metadata=admin, timeout=TIMEOUT
            )
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED, identity
        assert _reason(raised.value) == "CALLER_NOT_ALLOWED"
    # The operator's certificate without the admin token is not enough either.
    with mesh.channel("auth", "admin") as channel, pytest.raises(grpc.RpcError) as raised:
        auth_pb2_grpc.AuthServiceStub(channel).CreateMerchant(request, timeout=TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_public_edge_never_routes_the_admin_api(mesh: Any, merchant: Any) -> None:
    for token in (mesh.admin_token, merchant.token):
        for tls in (False, True):
            reply = mesh.request(
                "POST", "/v1/merchants", {"displayName": "Nope"}, token=token, tls=tls
            )
            assert reply.status == 404, reply
            assert reply.json()["code"] == 5, reply
    admin = (("authorization", f"Bearer {mesh.admin_token}"),)
    with grpc.insecure_channel(mesh.grpc_target) as edge, pytest.raises(grpc.RpcError) as raised:
        auth_pb2_grpc.AuthServiceStub(edge).CreateMerchant(
            auth_pb2.CreateMerchantRequest(display_name="Nope", request_id=str(uuid.uuid4())),
            metadata=admin,
            timeout=TIMEOUT,
        )
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED, raised.value


def test_envoy_reaches_the_services_over_mutual_tls(mesh: Any, merchant: Any) -> None:
    assert mesh.request("GET", "/v1/transactions", token=merchant.token).status == 200
    status, body = _plain_get(mesh.admin_port, "/stats?format=json&filter=ssl.handshake$")
    assert status == 200
    handshakes = {
        stat["name"]: stat["value"]
        for stat in json.loads(body)["stats"]
        if "name" in stat and stat["name"].startswith("cluster.")
    }
    for service in ("auth", "transactions", "payments"):
        assert handshakes.get(f"cluster.{service}.ssl.handshake", 0) > 0, handshakes
