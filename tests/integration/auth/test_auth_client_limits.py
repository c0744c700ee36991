"""Finding 4: the methods that take no token are limited per client address, counted in
Redis across replicas, and the address is the real peer the edge appended last."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator

import grpc
import pytest

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.auth.bootstrap import AuthApp, build
from pi.auth.settings import AuthSettings
from pi.platform.cache import RedisCache
from pi.platform.runtime.server import create_server

LIMIT = 5


@pytest.fixture
def channels() -> list[grpc.aio.Channel]:
    return []


@pytest.fixture
async def replicas(
    migrated: AuthSettings, redis_url: str, redis_prefix: str, channels: list[grpc.aio.Channel]
) -> AsyncIterator[list[auth_pb2_grpc.AuthServiceStub]]:
    """Two auth replicas on one database and one Redis, each with the full interceptor
    chain (per-address limit, auth, per-merchant limit)."""
    settings = dataclasses.replace(migrated, rate_limit_per_client_address=LIMIT)
    apps: list[AuthApp] = []
    servers: list[grpc.aio.Server] = []
    opened = channels
    try:
        for _ in range(2):
            app = await build(settings, cache=RedisCache(redis_url, prefix=redis_prefix))
            apps.append(app)
            server = create_server(list(app.interceptors))
            app.register(server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            servers.append(server)
            opened.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        yield [auth_pb2_grpc.AuthServiceStub(channel) for channel in channels]
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(None)
        for app in apps:
            await app.close()


def _address() -> str:
    return f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(256)}"


async def _issue(stub: auth_pb2_grpc.AuthServiceStub, forwarded_for: str) -> grpc.StatusCode:
    try:
        await stub.IssueToken(
            auth_pb2.IssueTokenRequest(
                api_key_id="key_01JZZZZZZZZZZZZZZZZZZZZZZZ", api_key_secret="sk_wrong"
            ),
            metadata=(("x-forwarded-for", forwarded_for),),
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_unauthenticated_calls_are_limited_per_client_address_across_replicas(
    replicas: list[auth_pb2_grpc.AuthServiceStub],
) -> None:
    client, other = _address(), _address()
    codes = [await _issue(replicas[n % 2], client) for n in range(3 * LIMIT)]
    limited = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    # One window, two replicas, one shared count: at most LIMIT got past the limit...
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) <= 2 * LIMIT  # a window boundary
    assert limited >= LIMIT
    # ...and another address, or a spoofed first entry, is not this client.
    assert await _issue(replicas[0], other) == grpc.StatusCode.UNAUTHENTICATED
    assert await _issue(replicas[1], f"{client}, {other}") == grpc.StatusCode.UNAUTHENTICATED
