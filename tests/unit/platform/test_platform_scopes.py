"""Finding 2, in one place: every RPC of the public services names the scope it needs."""

import json
from pathlib import Path

from generated.pi.auth.v1 import auth_pb2
from generated.pi.payments.v1 import payments_pb2
from generated.pi.transactions.v1 import transactions_pb2
from pi.platform.kernel import scopes
from pi.platform.kernel.errors import PermissionDenied
from pi.platform.kernel.principal import Principal
from pi.platform.security.scopes import NOT_FOR_MERCHANTS, REQUIRED_SCOPE, check_scope

# Public RPCs that take no token (AuthInterceptor's public methods).
NO_TOKEN = {"/pi.auth.v1.AuthService/IssueToken", "/pi.auth.v1.AuthService/GetJwks"}


def _every_method() -> set[str]:
    methods = set()
    for module in (auth_pb2, payments_pb2, transactions_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods.add(f"/{service.full_name}/{method.name}")
    return methods


def test_every_rpc_is_scoped_public_or_not_for_merchants() -> None:
    every = _every_method()
    decided = set(REQUIRED_SCOPE) | NO_TOKEN | NOT_FOR_MERCHANTS
    assert every - decided == set(), "decide the scope of these RPCs"
    assert decided - every == set(), "these RPCs no longer exist"
    assert set(REQUIRED_SCOPE.values()) - {""} <= scopes.FULL


def test_key_management_needs_a_scope_that_payment_keys_lack() -> None:
    payments = Principal.merchant(
        "mer_1", scopes=frozenset({scopes.PAYMENTS_WRITE, scopes.TRANSACTIONS_WRITE})
    )
    check_scope("/pi.payments.v1.PaymentService/CreatePayment", payments)
    for method in ("CreateApiKey", "RevokeApiKey", "ListApiKeys"):
        try:
            check_scope(f"/pi.auth.v1.AuthService/{method}", payments)
        except PermissionDenied as denied:
            assert denied.reason == "SCOPE_MISSING"
        else:
            raise AssertionError(f"{method} allowed without its scope")


def test_a_read_only_token_reads_and_cannot_write_or_refund() -> None:
    read_only = Principal.merchant(
        "mer_1", scopes=frozenset({scopes.PAYMENTS_READ, scopes.TRANSACTIONS_READ})
    )
    check_scope("/pi.payments.v1.PaymentService/GetPayment", read_only)
    check_scope("/pi.transactions.v1.TransactionService/ListTransactions", read_only)
    for method in (
        "/pi.payments.v1.PaymentService/CreatePayment",
        "/pi.payments.v1.PaymentService/RefundPayment",
        "/pi.transactions.v1.TransactionService/CreateTransaction",
        "/pi.unknown.v1.Service/Method",
    ):
        try:
            check_scope(method, read_only)
        except PermissionDenied:
            continue
        raise AssertionError(f"{method} allowed to a read-only token")


def test_admin_and_service_callers_are_not_scoped() -> None:
    check_scope("/pi.auth.v1.AuthService/CreateMerchant", Principal.admin())
    check_scope("/pi.payments.v1.PaymentLedgerService/CloseTransaction", Principal.service())


def test_the_scope_list_is_documented_in_the_api_and_the_openapi_document() -> None:
    repo = Path(__file__).resolve().parents[3]
    proto = (repo / "protos/pi/auth/v1/auth.proto").read_text()
    openapi = json.loads((repo / "generated/openapi/pi.openapi.json").read_text())
    schemas = openapi["components"]["schemas"]
    api_key = json.dumps(schemas["pi.auth.v1.ApiKey"]["properties"]["scopes"])
    for scope in scopes.ALL_SCOPES:
        assert f"`{scope}`" in proto and scope in api_key
    body = openapi["paths"]["/v1/api-keys"]["post"]["requestBody"]["content"]
    create = body["application/json"]["schema"]["properties"]
    assert "array" in create["scopes"]["type"]
    # Only the known scopes: the services refuse any other.
    assert create["scopes"]["items"]["enum"] == [*scopes.ALL_SCOPES, None]
