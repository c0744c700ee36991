"""Outbound channels: a target listing several replicas spreads calls across them."""

from typing import Any

import grpc

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.platform.runtime.clients import service_channel


class _Counting(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def GetJwks(self, request: Any, context: Any) -> Any:
        self.calls += 1
        return auth_pb2.GetJwksResponse()


async def test_a_target_listing_replicas_is_balanced_round_robin() -> None:
    servers: list[grpc.aio.Server] = []
    replicas: list[_Counting] = []
    ports: list[int] = []
    for _ in range(2):
        server = grpc.aio.server()
        replica = _Counting()
        auth_pb2_grpc.add_AuthServiceServicer_to_server(replica, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
        replicas.append(replica)
    channel = service_channel("ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports))
    try:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        for _ in range(20):
            await stub.GetJwks(auth_pb2.GetJwksRequest(), wait_for_ready=True)
        assert all(replica.calls > 0 for replica in replicas), [r.calls for r in replicas]
        assert sum(replica.calls for replica in replicas) == 20
    finally:
        await channel.close()
        for server in servers:
            await server.stop(None)
