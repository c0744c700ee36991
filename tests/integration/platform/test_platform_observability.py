"""RED metrics and cheap traces on real in-process grpc.aio servers: a front service
that calls a back service over a service channel, as transactions calls payments."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.platform.kernel.causes import on_behalf_of
from pi.platform.kernel.errors import InvalidArgument, NotFound
from pi.platform.observability import tracing
from pi.platform.observability.telemetry import tracer_provider
from pi.platform.runtime.clients import service_channel
from pi.platform.runtime.server import create_server

SERVICE = "pi.auth.v1.AuthService"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
EDGE_SPAN = "00f067aa0ba902b7"


class _Back(auth_pb2_grpc.AuthServiceServicer):
    async def GetJwks(self, request: Any, context: Any) -> Any:
        return auth_pb2.GetJwksResponse(keys=[auth_pb2.JsonWebKey(kid="back")])

    async def RevokeToken(self, request: Any, context: Any) -> Any:
        raise NotFound("No such token.", reason="TOKEN_NOT_FOUND")


class _Front(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, back: auth_pb2_grpc.AuthServiceStub) -> None:
        self._back = back

    async def GetJwks(self, request: Any, context: Any) -> Any:
        return await self._back.GetJwks(auth_pb2.GetJwksRequest())

    async def CreateMerchant(self, request: Any, context: Any) -> Any:
        raise InvalidArgument("The request has invalid fields.")

    async def RevokeApiKey(self, request: Any, context: Any) -> Any:
        raise RuntimeError("boom")


@dataclass
class Mesh:
    front: auth_pb2_grpc.AuthServiceStub
    back: auth_pb2_grpc.AuthServiceStub
    spans: InMemorySpanExporter


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    spans = InMemorySpanExporter()
    tracing.install(tracer_provider("test", spans, batch=False))
    back_server = create_server()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(_Back(), back_server)
    back_port = back_server.add_insecure_port("127.0.0.1:0")
    await back_server.start()
    back_channel = service_channel(f"127.0.0.1:{back_port}")
    front_server = create_server()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(
        _Front(auth_pb2_grpc.AuthServiceStub(back_channel)), front_server
    )
    front_port = front_server.add_insecure_port("127.0.0.1:0")
    await front_server.start()
    front_channel = grpc.aio.insecure_channel(f"127.0.0.1:{front_port}")
    try:
        yield Mesh(
            auth_pb2_grpc.AuthServiceStub(front_channel),
            auth_pb2_grpc.AuthServiceStub(back_channel),
            spans,
        )
    finally:
        tracing.uninstall()
        await front_channel.close()
        await back_channel.close()
        await front_server.stop(None)
        await back_server.stop(None)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _server(method: str, **extra: str) -> dict[str, str]:
    return {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": method, **extra}


async def test_server_metrics_count_every_call_by_its_code_in_go_spelling(mesh: Mesh) -> None:
    calls = [
        ("CreateMerchant", "InvalidArgument"),
        ("RevokeApiKey", "Internal"),
        ("GetJwks", "OK"),
    ]
    before = {m: _value("grpc_server_handled_total", **_server(m, grpc_code=c)) for m, c in calls}
    started = _value("grpc_server_started_total", **_server("CreateMerchant"))
    timed = _value("grpc_server_handling_seconds_count", **_server("GetJwks"))
    with pytest.raises(grpc.aio.AioRpcError):
        await mesh.front.CreateMerchant(auth_pb2.CreateMerchantRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        await mesh.front.RevokeApiKey(auth_pb2.RevokeApiKeyRequest())
    await mesh.front.GetJwks(auth_pb2.GetJwksRequest())

    # GetJwks twice: the front's and the back's (both servers share the process registry).
    expected = {"CreateMerchant": 1, "RevokeApiKey": 1, "GetJwks": 2}
    for method, code in calls:
        assert _value("grpc_server_handled_total", **_server(method, grpc_code=code)) == (
            before[method] + expected[method]
        ), (method, code)
    assert _value("grpc_server_started_total", **_server("CreateMerchant")) == started + 1
    assert _value("grpc_server_handling_seconds_count", **_server("GetJwks")) == timed + 2


async def test_client_metrics_count_calls_to_another_service(mesh: Mesh) -> None:
    ok = _value("grpc_client_handled_total", **_server("GetJwks", grpc_code="OK"))
    missing = _value("grpc_client_handled_total", **_server("RevokeToken", grpc_code="NotFound"))
    await mesh.front.GetJwks(auth_pb2.GetJwksRequest())
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await mesh.back.RevokeToken(auth_pb2.RevokeTokenRequest(token_id="t"))
    assert error.value.code() is grpc.StatusCode.NOT_FOUND
    assert _value("grpc_client_handled_total", **_server("GetJwks", grpc_code="OK")) == ok + 1
    assert (
        _value("grpc_client_handled_total", **_server("RevokeToken", grpc_code="NotFound"))
        == missing + 1
    )
    assert _value("grpc_client_handling_seconds_count", **_server("RevokeToken")) >= 1


async def test_unsampled_and_untraced_requests_make_no_spans(mesh: Mesh) -> None:
    await mesh.front.GetJwks(auth_pb2.GetJwksRequest())
    await mesh.front.GetJwks(
        auth_pb2.GetJwksRequest(), metadata=(("traceparent", f"00-{TRACE_ID}-{EDGE_SPAN}-00"),)
    )
    assert mesh.spans.get_finished_spans() == ()


async def test_a_sampled_request_is_one_connected_trace_across_services(mesh: Mesh) -> None:
    await mesh.front.GetJwks(
        auth_pb2.GetJwksRequest(), metadata=(("traceparent", f"00-{TRACE_ID}-{EDGE_SPAN}-01"),)
    )
    spans = mesh.spans.get_finished_spans()
    kinds = sorted((s.kind.name, s.name) for s in spans)
    assert kinds == [
        ("CLIENT", f"{SERVICE}/GetJwks"),
        ("SERVER", f"{SERVICE}/GetJwks"),
        ("SERVER", f"{SERVICE}/GetJwks"),
    ]
    assert {f"{s.context.trace_id:032x}" for s in spans} == {TRACE_ID}
    front = next(
        s
        for s in spans
        if s.kind.name == "SERVER"
        and s.parent.is_remote
        and f"{s.parent.span_id:016x}" == EDGE_SPAN
    )
    client = next(s for s in spans if s.kind.name == "CLIENT")
    back = next(s for s in spans if s.kind.name == "SERVER" and s is not front)
    assert client.parent.span_id == front.context.span_id
    assert back.parent.span_id == client.context.span_id
    assert front.attributes["rpc.grpc.status"] == "OK"


async def test_a_domain_error_ends_the_span_with_its_code_and_no_error_status(mesh: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await mesh.front.CreateMerchant(
            auth_pb2.CreateMerchantRequest(),
            metadata=(("traceparent", f"00-{TRACE_ID}-{EDGE_SPAN}-01"),),
        )
    (span,) = mesh.spans.get_finished_spans()
    assert span.attributes["rpc.grpc.status"] == "InvalidArgument"
    assert span.status.status_code.name == "UNSET"
    assert len(span.events) == 0


async def test_work_done_on_behalf_of_traced_requests_joins_their_trace(mesh: Mesh) -> None:
    first = f"00-{TRACE_ID}-{EDGE_SPAN}-01"
    second = "00-11111111111111111111111111111111-2222222222222222-01"
    with on_behalf_of(
        [None, first, "00-33333333333333333333333333333333-4444444444444444-00", second]
    ):
        await mesh.back.GetJwks(auth_pb2.GetJwksRequest())
    spans = mesh.spans.get_finished_spans()
    client = next(s for s in spans if s.kind.name == "CLIENT")
    server = next(s for s in spans if s.kind.name == "SERVER")
    assert f"{client.context.trace_id:032x}" == TRACE_ID
    assert f"{client.parent.span_id:016x}" == EDGE_SPAN
    assert [f"{link.context.trace_id:032x}" for link in client.links] == ["1" * 32]
    assert server.parent.span_id == client.context.span_id
