"""A service with a mesh identity: mutual TLS only, a plaintext health-only port for
probes, and the caller allow-list turning an allowed certificate into the service
principal (pi.platform.runtime.server, .callers, .clients)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.edge.identities import Identity, ensure_identities
from pi.platform.config import ServiceSettings
from pi.platform.kernel.principal import current_principal
from pi.platform.runtime.callers import CallerInterceptor
from pi.platform.runtime.clients import service_channel
from pi.platform.runtime.interceptors import AuthInterceptor
from pi.platform.runtime.server import serve
from pi.platform.security.tokens import RevocationList, StaticKeySource, TokenVerifier

INTERNAL = auth_pb2.DESCRIPTOR.services_by_name["AuthInternalService"].full_name


class _Internal(auth_pb2_grpc.AuthInternalServiceServicer):
    def __init__(self) -> None:
        self.principals: list[Any] = []

    async def ListRevokedTokens(self, request: Any, context: Any) -> Any:
        self.principals.append(current_principal())
        return auth_pb2.ListRevokedTokensResponse()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def identities(tmp_path: Path) -> dict[str, Identity]:
    return dict(ensure_identities(tmp_path, ["auth", "payments", "edge"]))


@pytest.fixture
async def server(
    settings_factory: Callable[..., ServiceSettings], identities: dict[str, Identity]
) -> AsyncIterator[tuple[int, int, _Internal]]:
    health_port = _free_port()
    settings = dataclasses.replace(
        settings_factory("auth", database_url="postgresql://unused@127.0.0.1:1/unused"),
        mesh_tls=identities["auth"].mesh_tls(),
        health_port=health_port,
        service_token="",
    )
    servicer = _Internal()
    verifier = TokenVerifier(StaticKeySource(), RevocationList(), "i", "a")
    stop = asyncio.Event()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            settings,
            register=lambda s: auth_pb2_grpc.add_AuthInternalServiceServicer_to_server(servicer, s),
            service_names=[INTERNAL],
            interceptors=[CallerInterceptor(), AuthInterceptor(verifier, settings.admin_token, "")],
            grace=1,
            stop=stop,
            on_started=started.set_result,
        )
    )
    port = await asyncio.wait_for(started, 5)
    try:
        yield port, health_port, servicer
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_the_health_port_is_plaintext_and_serves_health_only(
    server: tuple[int, int, _Internal],
) -> None:
    port, health_port, _ = server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await auth_pb2_grpc.AuthInternalServiceStub(channel).ListRevokedTokens(
                auth_pb2.ListRevokedTokensRequest()
            )
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # The service port itself answers no plaintext at all.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_an_allowed_certificate_is_the_service_principal_and_others_are_denied(
    server: tuple[int, int, _Internal], identities: dict[str, Identity]
) -> None:
    port, _, servicer = server
    target = f"127.0.0.1:{port}"
    allowed = service_channel(target, tls=identities["payments"].mesh_tls(), server_name="auth")
    other = service_channel(target, tls=identities["edge"].mesh_tls(), server_name="auth")
    try:
        await auth_pb2_grpc.AuthInternalServiceStub(allowed).ListRevokedTokens(
            auth_pb2.ListRevokedTokensRequest()
        )
        assert [p.kind for p in servicer.principals] == ["service"]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await auth_pb2_grpc.AuthInternalServiceStub(other).ListRevokedTokens(
                auth_pb2.ListRevokedTokensRequest()
            )
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "edge may not call" in (raised.value.details() or "")
        assert len(servicer.principals) == 1  # the servicer never saw the denied call
    finally:
        await allowed.close()
        await other.close()


async def test_a_channel_refuses_a_server_that_is_not_the_service_it_meant(
    server: tuple[int, int, _Internal], identities: dict[str, Identity]
) -> None:
    port, _, _ = server
    channel = service_channel(
        f"127.0.0.1:{port}", tls=identities["payments"].mesh_tls(), server_name="transactions"
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await auth_pb2_grpc.AuthInternalServiceStub(channel).ListRevokedTokens(
                auth_pb2.ListRevokedTokensRequest(), timeout=3
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close()
