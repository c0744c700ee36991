"""The rendered config, run by a real Envoy in front of fake gRPC services.

The fakes implement a few RPCs with the generated stubs and record what reaches them, so
these tests pin down what the edge does on its own: transcoding, error rendering, routing,
retries, headers, TLS and limits. The real services are exercised through it in tests/e2e.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from generated.pi.transactions.v1 import transactions_pb2, transactions_pb2_grpc
from pi.edge import DevCert, EdgeConfig, Endpoint, envoy_command, render_bootstrap, write_bootstrap
from pi.edge.profiles import e2e_config

# --- fake services ---------------------------------------------------------------------


@dataclass
class Recorder:
    """What reached one fake replica: (method, request, metadata) per call."""

    calls: list[tuple[str, Any, dict[str, str]]] = field(default_factory=list)

    def record(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.calls.append((method, request, metadata))

    def count(self, method: str) -> int:
        return sum(1 for name, _, _ in self.calls if name == method)


class FakeAuth(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, recorder: Recorder, *, broken: bool) -> None:
        self._recorder = recorder
        self._broken = broken  # as if its database were down: UNAVAILABLE for everything

    def GetJwks(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._recorder.record("GetJwks", request, context)
        if self._broken:
            context.abort(grpc.StatusCode.UNAVAILABLE, "database unavailable")
        return auth_pb2.GetJwksResponse(
            keys=[auth_pb2.JsonWebKey(kty="EC", crv="P-256", kid="k1", alg="ES256")]
        )

    def CreateApiKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._recorder.record("CreateApiKey", request, context)
        if self._broken:
            context.abort(grpc.StatusCode.UNAVAILABLE, "database unavailable")
        return auth_pb2.CreateApiKeyResponse(
            api_key=auth_pb2.ApiKey(id="key_1", display_name=request.display_name),
            api_key_secret="sk_test",
        )


class FakeAuthInternal(auth_pb2_grpc.AuthInternalServiceServicer):
    def ListRevokedTokens(self, request: Any, context: grpc.ServicerContext) -> Any:
        return auth_pb2.ListRevokedTokensResponse()


class FakeTransactions(transactions_pb2_grpc.TransactionServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def ListTransactions(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._recorder.record("ListTransactions", request, context)
        return transactions_pb2.ListTransactionsResponse()

    def GetTransaction(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._recorder.record("GetTransaction", request, context)
        context.abort(grpc.StatusCode.NOT_FOUND, "transaction not found")

    def CreateTransaction(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._recorder.record("CreateTransaction", request, context)
        status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="amount must be > 0")
        for detail in (
            error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="pi.platform"),
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="transaction.amount", description="must be greater than zero"
                    )
                ]
            ),
        ):
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        context.abort_with_status(rpc_status.to_status(status))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _grpc_server(*servicers: Any) -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    for servicer in servicers:
        if isinstance(servicer, auth_pb2_grpc.AuthServiceServicer):
            auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
        elif isinstance(servicer, auth_pb2_grpc.AuthInternalServiceServicer):
            auth_pb2_grpc.add_AuthInternalServiceServicer_to_server(servicer, server)
        else:
            transactions_pb2_grpc.add_TransactionServiceServicer_to_server(servicer, server)
    checks = health.HealthServicer()
    checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


@contextlib.contextmanager
def _envoy(config: EdgeConfig, workdir: Path) -> Iterator[None]:
    path = workdir / "envoy.json"
    write_bootstrap(render_bootstrap(config), path)
    with open(workdir / "envoy.log", "wb") as log:
        process = subprocess.Popen(
            envoy_command(path, concurrency=1, log_level="warn"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_live(config.admin_port, process, workdir / "envoy.log")
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_live(admin_port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"envoy exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError):
            status, body, _ = _request(admin_port, "GET", "/ready")
            if status == 200 and body.strip() == b"LIVE":
                return
        time.sleep(0.1)
    pytest.fail(f"envoy did not become ready:\n{log.read_text()}")


@dataclass(frozen=True)
class Edge:
    config: EdgeConfig
    cert: DevCert
    auth: Recorder
    broken_auth: Recorder
    transactions: Recorder
    auth_port: int


@pytest.fixture(scope="module")
def edge(
    envoy_binary: Path,
    descriptor_path: str,
    openapi_path: str,
    dev_cert: DevCert,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Edge]:
    auth, broken_auth, transactions = Recorder(), Recorder(), Recorder()
    with (
        _grpc_server(FakeAuth(auth, broken=False), FakeAuthInternal()) as auth_port,
        _grpc_server(FakeAuth(broken_auth, broken=True)) as broken_auth_port,
        _grpc_server(FakeTransactions(transactions)) as transactions_port,
    ):
        config = e2e_config(
            descriptor_path,
            upstreams={
                "auth": (
                    Endpoint("127.0.0.1", auth_port),
                    Endpoint("127.0.0.1", broken_auth_port),
                ),
                "transactions": (Endpoint("127.0.0.1", transactions_port),),
                # Nothing listens here: the payments service is down.
                "payments": (Endpoint("127.0.0.1", _free_port()),),
            },
            http_port=_free_port(),
            https_port=_free_port(),
            admin_port=_free_port(),
            openapi_path=openapi_path,
            tls_cert_path=str(dev_cert.cert_path),
            tls_key_path=str(dev_cert.key_path),
            requests_per_second=10_000,
        )
        with _envoy(config, tmp_path_factory.mktemp("envoy")):
            yield Edge(config, dev_cert, auth, broken_auth, transactions, auth_port)


def _request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response
    finally:
        connection.close()


def _json(edge: Edge, method: str, path: str, body: Any = None, **headers: str | None) -> Any:
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    # Calls carry a token unless a test removes it: the edge answers 401 without one.
    all_headers = {"content-type": "application/json", "authorization": "Bearer t", **headers}
    all_headers = {name: value for name, value in all_headers.items() if value is not None}
    status, raw, response = _request(edge.config.http_port, method, path, data, all_headers)
    assert response.getheader("content-type") == "application/json", raw
    return status, json.loads(raw)


# --- HTTP/JSON --------------------------------------------------------------------------


def test_get_is_transcoded_with_lower_camel_names_and_zero_values_printed(edge: Edge) -> None:
    status, body = _json(edge, "GET", "/v1/transactions")
    assert status == 200
    assert body == {"transactions": [], "nextPageToken": ""}


def test_authorization_and_idempotency_key_headers_reach_the_service_as_metadata(
    edge: Edge,
) -> None:
    status, _ = _json(
        edge,
        "GET",
        "/v1/transactions?pageSize=3",
        authorization="Bearer token-123",
        **{"idempotency-key": "key-abc"},
    )
    assert status == 200
    _, request, metadata = edge.transactions.calls[-1]
    assert request.page_size == 3
    assert metadata["authorization"] == "Bearer token-123"
    assert metadata["idempotency-key"] == "key-abc"


@pytest.mark.parametrize(
    ("query", "seconds", "nanos"),
    [
        ("createTimeStart=2026-01-01T00:00:00Z", 1767225600, 0),
        ("create_time_start=2026-01-01T00:00:00.5Z", 1767225600, 500_000_000),
        ("createTimeStart=2026-01-01T02:00:00%2B02:00", 1767225600, 0),
        ("createTimeStart=2026-01-01T02:00:00+02:00", 1767225600, 0),
    ],
)
def test_timestamp_query_parameters_are_accepted_in_rfc3339_form(
    edge: Edge, query: str, seconds: int, nanos: int
) -> None:
    status, _ = _json(edge, "GET", f"/v1/transactions?{query}")
    assert status == 200
    _, request, _ = edge.transactions.calls[-1]
    assert (request.create_time_start.seconds, request.create_time_start.nanos) == (seconds, nanos)


def test_a_timestamp_query_parameter_that_is_not_rfc3339_is_a_400(edge: Edge) -> None:
    status, body = _json(edge, "GET", "/v1/transactions?createTimeStart=2026-01-01")
    assert status == 400
    assert body["code"] == code_pb2.INVALID_ARGUMENT


def test_service_errors_become_json_status_with_details_and_http_status(edge: Edge) -> None:
    status, body = _json(edge, "POST", "/v1/transactions", {"amount": "0", "currency": "USD"})
    assert status == 400
    assert body["code"] == code_pb2.INVALID_ARGUMENT
    assert body["message"] == "amount must be > 0"
    types = [d["@type"] for d in body["details"]]
    assert types == [
        "type.googleapis.com/google.rpc.ErrorInfo",
        "type.googleapis.com/google.rpc.BadRequest",
    ]
    assert body["details"][1]["fieldViolations"][0]["field"] == "transaction.amount"


def test_not_found_from_a_service_is_a_404_json_status(edge: Edge) -> None:
    status, body = _json(edge, "GET", "/v1/transactions/txn_missing")
    assert (status, body["code"]) == (404, code_pb2.NOT_FOUND)
    assert edge.transactions.calls[-1][1].id == "txn_missing"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nope"),
        ("POST", "/pi.auth.v1.AuthInternalService/ListRevokedTokens"),
        ("POST", "/pi.transactions.v1.TransactionLedgerService/ApplyMovement"),
        ("POST", "/pi.transactions.v1.TransactionLedgerService/ApplyMovements"),
        # The payment service is down here: routed, this would be a 503, not a 404.
        ("POST", "/pi.payments.v1.PaymentLedgerService/RegisterTransactions"),
        ("POST", "/pi.auth.v1.AuthService/GetJwks"),
        ("GET", "/"),
    ],
)
def test_unknown_routes_are_404_json_without_reaching_a_service(
    edge: Edge, method: str, path: str
) -> None:
    def reached() -> int:
        return len(edge.auth.calls) + len(edge.broken_auth.calls) + len(edge.transactions.calls)

    before = reached()
    status, body = _json(edge, method, path, {} if method == "POST" else None)
    assert (status, body["code"]) == (404, code_pb2.NOT_FOUND)
    assert reached() == before


def test_malformed_json_is_a_400_json_status(edge: Edge) -> None:
    status, body = _json(edge, "POST", "/v1/transactions", b'{"amount": ')
    assert (status, body["code"]) == (400, code_pb2.INVALID_ARGUMENT)


def test_unknown_query_parameters_are_a_400(edge: Edge) -> None:
    status, body = _json(edge, "GET", "/v1/transactions?pageSise=3")
    assert (status, body["code"]) == (400, code_pb2.INVALID_ARGUMENT)


def test_bodies_over_the_limit_are_refused_with_413(edge: Edge) -> None:
    huge = json.dumps({"currency": "USD", "description": "x" * (2 * 1024 * 1024)}).encode()
    status, body = _json(edge, "POST", "/v1/transactions", huge)
    assert status == 413
    assert body["code"] == code_pb2.INVALID_ARGUMENT


def test_a_service_that_is_down_is_a_503_json_status(edge: Edge) -> None:
    status, body = _json(edge, "GET", "/v1/payments/pay_1")
    assert (status, body["code"]) == (503, code_pb2.UNAVAILABLE)


def test_reads_are_retried_on_another_replica(edge: Edge) -> None:
    for _ in range(20):
        status, body = _json(edge, "GET", "/v1/auth/jwks")
        assert status == 200, body
        # always_print_primitive_fields: empty strings are printed, not omitted.
        assert body["keys"] == [
            {"kty": "EC", "crv": "P-256", "x": "", "y": "", "kid": "k1", "use": "", "alg": "ES256"}
        ]
    assert edge.broken_auth.count("GetJwks") > 0  # the broken replica was tried, then skipped


def test_mutations_that_reached_a_service_are_never_retried(edge: Edge) -> None:
    before_ok, before_broken = (
        edge.auth.count("CreateApiKey"),
        edge.broken_auth.count("CreateApiKey"),
    )
    statuses = [_json(edge, "POST", "/v1/api-keys", {"displayName": f"k{i}"})[0] for i in range(20)]
    reached_broken = edge.broken_auth.count("CreateApiKey") - before_broken
    reached_ok = edge.auth.count("CreateApiKey") - before_ok
    assert statuses.count(503) == reached_broken > 0
    assert statuses.count(200) == reached_ok
    assert reached_ok + reached_broken == 20


def test_openapi_document_is_served_as_json(edge: Edge) -> None:
    status, raw, response = _request(edge.config.http_port, "GET", "/openapi.json")
    assert status == 200
    assert response.getheader("content-type") == "application/json"
    assert edge.config.openapi_path is not None
    assert raw == Path(edge.config.openapi_path).read_bytes()


def test_healthz_is_answered_by_envoy(edge: Edge) -> None:
    status, _, _ = _request(edge.config.http_port, "GET", "/healthz")
    assert status == 200


# --- native gRPC --------------------------------------------------------------------------


def test_native_grpc_passes_through_the_cleartext_port(edge: Edge) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{edge.config.http_port}") as channel:
        stub = transactions_pb2_grpc.TransactionServiceStub(channel)
        stub.ListTransactions(
            transactions_pb2.ListTransactionsRequest(page_size=7),
            metadata=(("authorization", "Bearer native"),),
            timeout=5,
        )
        with pytest.raises(grpc.RpcError) as error:
            stub.GetTransaction(transactions_pb2.GetTransactionRequest(id="txn_x"), timeout=5)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    _, request, metadata = [c for c in edge.transactions.calls if c[0] == "ListTransactions"][-1]
    assert request.page_size == 7
    assert metadata["authorization"] == "Bearer native"


def test_internal_services_are_unimplemented_through_the_edge(edge: Edge) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{edge.auth_port}") as direct:
        auth_pb2_grpc.AuthInternalServiceStub(direct).ListRevokedTokens(
            auth_pb2.ListRevokedTokensRequest(), timeout=5
        )  # the fake does serve it...
    with grpc.insecure_channel(f"127.0.0.1:{edge.config.http_port}") as channel:
        with pytest.raises(grpc.RpcError) as error:
            auth_pb2_grpc.AuthInternalServiceStub(channel).ListRevokedTokens(
                auth_pb2.ListRevokedTokensRequest(), timeout=5
            )  # ...but not through the edge
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
        health_stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            health_stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- TLS ----------------------------------------------------------------------------------


def _tls_context(edge: Edge, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(edge.cert.ca_path))
    context.minimum_version = context.maximum_version = version
    return context


def test_tls_1_3_serves_json_and_negotiates_h2(edge: Edge) -> None:
    context = _tls_context(edge, ssl.TLSVersion.TLSv1_3)
    connection = http.client.HTTPSConnection(
        "localhost", edge.config.https_port, context=context, timeout=10
    )
    connection.request("GET", "/v1/transactions", headers={"authorization": "Bearer t"})
    response = connection.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["transactions"] == []
    connection.close()

    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", edge.config.https_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() == "h2"


def test_tls_1_2_is_refused(edge: Edge) -> None:
    context = _tls_context(edge, ssl.TLSVersion.TLSv1_2)
    with (
        socket.create_connection(("127.0.0.1", edge.config.https_port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="localhost")


def test_native_grpc_over_tls(edge: Edge) -> None:
    credentials = grpc.ssl_channel_credentials(edge.cert.ca_path.read_bytes())
    with grpc.secure_channel(f"localhost:{edge.config.https_port}", credentials) as channel:
        response = auth_pb2_grpc.AuthServiceStub(channel).GetJwks(
            auth_pb2.GetJwksRequest(), timeout=5
        )
    assert response.keys[0].kid == "k1"


# --- rate limit ---------------------------------------------------------------------------


def test_the_rate_limit_answers_429_json_and_resource_exhausted(
    envoy_binary: Path, descriptor_path: str, tmp_path: Path
) -> None:
    transactions = Recorder()
    with _grpc_server(FakeTransactions(transactions)) as port:
        endpoint = (Endpoint("127.0.0.1", port),)
        config = e2e_config(
            descriptor_path,
            upstreams={"auth": endpoint, "transactions": endpoint, "payments": endpoint},
            http_port=_free_port(),
            https_port=_free_port(),
            admin_port=_free_port(),
            requests_per_second=2,
        )
        with _envoy(config, tmp_path):
            token = {"authorization": "Bearer t"}
            results = [
                _request(config.http_port, "GET", "/v1/transactions", headers=token)
                for _ in range(6)
            ]
            with (
                grpc.insecure_channel(f"127.0.0.1:{config.http_port}") as channel,
                pytest.raises(grpc.RpcError) as error,
            ):
                transactions_pb2_grpc.TransactionServiceStub(channel).ListTransactions(
                    transactions_pb2.ListTransactionsRequest(), timeout=5
                )
    limited = [(status, raw, response) for status, raw, response in results if status == 429]
    assert limited, [status for status, _, _ in results]
    _, raw, response = limited[0]
    assert response.getheader("retry-after") == "1"
    assert json.loads(raw)["code"] == code_pb2.RESOURCE_EXHAUSTED
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(transactions.calls) == 6 - len(limited)


# --- answered before the transcoder (pi/edge/guards.py, header_names.py) ------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("TRACE", "/v1/transactions", "GET, POST"),
        ("DELETE", "/v1/transactions/txn_1", "GET"),
        ("PUT", "/v1/payments/pay_1:capture", "POST"),
        ("QUERY", "/v1/auth/jwks", "GET"),
        ("POST", "/openapi.json", "GET"),
    ],
)
def test_undeclared_methods_are_405_json_with_allow(
    edge: Edge, method: str, path: str, allow: str
) -> None:
    before = len(edge.transactions.calls)
    status, raw, response = _request(edge.config.http_port, method, path)
    assert (status, json.loads(raw)["code"]) == (405, code_pb2.UNIMPLEMENTED)
    assert response.getheader("allow") == allow
    assert len(edge.transactions.calls) == before


def test_a_call_without_a_token_is_401_even_when_its_body_does_not_parse(edge: Edge) -> None:
    before = len(edge.transactions.calls)
    status, body = _json(edge, "POST", "/v1/transactions", b'{"amount": ', authorization=None)
    assert (status, body["code"]) == (401, code_pb2.UNAUTHENTICATED)
    assert body["details"][0]["reason"] == "TOKEN_MISSING"
    assert len(edge.transactions.calls) == before


def test_public_calls_need_no_token_at_the_edge(edge: Edge) -> None:
    status, body = _json(edge, "POST", "/v1/auth/token", b'{"apiKeyId": ', authorization=None)
    assert (status, body["code"]) == (400, code_pb2.INVALID_ARGUMENT)


@pytest.mark.parametrize("header", [("|yrad", "x"), ("x-note", "caf\xe9")])
def test_headers_grpc_cannot_carry_are_a_400_not_a_500(edge: Edge, header: tuple[str, str]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", edge.config.http_port, timeout=10)
    try:
        connection.putrequest("GET", "/v1/transactions")
        connection.putheader("authorization", "Bearer t")
        connection.putheader(header[0], header[1].encode("latin-1"))
        connection.endheaders()
        response = connection.getresponse()
        status, raw = response.status, response.read()
    finally:
        connection.close()
    assert (status, json.loads(raw)["code"]) == (400, code_pb2.INVALID_ARGUMENT)
