"""Health probes the supervisor polls: gRPC health for services, /ready for Envoy."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pi.edge.identities import Identity
from pi.launcher.supervisor import Probe


def mesh_channel(target: str, identity: Identity | None, server: str) -> grpc.aio.Channel:
    """A channel to a service of the mesh, as `identity` (plaintext without one)."""
    if identity is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(
        target,
        identity.mesh_tls().channel_credentials(),
        options=[("grpc.ssl_target_name_override", server)],
    )


class GrpcHealthProbe:
    """grpc.health.v1 Check(service="") on one replica, over one reused channel."""

    def __init__(self, target: str, identity: Identity | None = None, server: str = "") -> None:
        """With `identity`, over mutual TLS to a server that proves it is `server`."""
        self._target = target
        self._identity = identity
        self._server = server
        self._channel: grpc.aio.Channel | None = None

    async def __call__(self) -> bool:
        if self._channel is None:
            self._channel = mesh_channel(self._target, self._identity, self._server)
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.5)
        except grpc.aio.AioRpcError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def envoy_ready_probe(admin_port: int) -> Probe:
    """Envoy's admin `/ready` answers 200 `LIVE` once listeners and clusters are up."""

    async def probe() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", admin_port)
        try:
            writer.write(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            await writer.drain()
            response = await reader.read(4096)
        finally:
            writer.close()
        status_line = response.split(b"\r\n", 1)[0]
        return status_line.split(b" ")[1:2] == [b"200"]

    return probe
