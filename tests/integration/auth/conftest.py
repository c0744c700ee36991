"""Fixtures for the auth service on real PostgreSQL and Redis.

`auth_app` is the whole object graph from `pi.auth.bootstrap.build` on a freshly
migrated schema, with an adjustable clock; `auth_rpc` serves it on an in-process grpc.aio
server (127.0.0.1, ephemeral port) and hands out the generated stubs. `auth_engine` is a
SQLAlchemy engine on the same schema, for what tests look at directly.

`units` is the unit-of-work factory of either adapter (memory, PostgreSQL), for the
contract tests that hold both to the same assertions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.auth.adapters.memory import MemoryUnits
from pi.auth.adapters.postgres.uow import PostgresUnits
from pi.auth.app.ports import UnitsOfWork
from pi.auth.bootstrap import MIGRATIONS, AuthApp, build
from pi.auth.settings import AuthSettings
from pi.platform.cache import RedisCache
from pi.platform.db import migrations
from pi.platform.db.database import open_database_for
from pi.platform.runtime.server import create_server

# Connections per PostgreSQL unit factory: many tests run, each opens its own pool.
POOL_SIZE = 4


class Clock:
    """Real time plus an offset the test can move forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@dataclass
class AuthRpc:
    """Stubs on a channel to the in-process server, plus credential helpers."""

    app: AuthApp
    channel: grpc.aio.Channel
    auth: auth_pb2_grpc.AuthServiceAsyncStub
    internal: auth_pb2_grpc.AuthInternalServiceAsyncStub

    @property
    def admin(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.app.settings.admin_token}"),)

    @property
    def service(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.app.settings.service_token}"),)

    @staticmethod
    def bearer(token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)

    async def create_merchant(self, name: str = "Acme") -> auth_pb2.CreateMerchantResponse:
        response: auth_pb2.CreateMerchantResponse = await self.auth.CreateMerchant(
            auth_pb2.CreateMerchantRequest(display_name=name), metadata=self.admin
        )
        return response

    async def issue(self, key_id: str, secret: str) -> auth_pb2.IssueTokenResponse:
        response: auth_pb2.IssueTokenResponse = await self.auth.IssueToken(
            auth_pb2.IssueTokenRequest(api_key_id=key_id, api_key_secret=secret)
        )
        return response

    async def merchant_with_token(
        self, name: str = "Acme"
    ) -> tuple[auth_pb2.CreateMerchantResponse, str]:
        created = await self.create_merchant(name)
        issued = await self.issue(created.api_key.id, created.api_key_secret)
        return created, issued.access_token


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth_settings(settings_factory: Callable[..., AuthSettings], redis_url: str) -> AuthSettings:
    return settings_factory("auth", redis_url=redis_url)


@pytest.fixture
async def migrated(auth_settings: AuthSettings) -> AuthSettings:
    await asyncio.to_thread(migrations.upgrade, auth_settings, auth_settings.db_schema, MIGRATIONS)
    return auth_settings


@pytest.fixture
async def auth_app(
    migrated: AuthSettings, clock: Clock, redis_url: str, redis_prefix: str
) -> AsyncIterator[AuthApp]:
    app = await build(migrated, clock=clock, cache=RedisCache(redis_url, prefix=redis_prefix))
    yield app
    await app.close()


@pytest.fixture
def auth_engine(migrated: AuthSettings, make_engine: Callable[..., AsyncEngine]) -> AsyncEngine:
    return make_engine(migrated.db_schema)


@pytest.fixture(params=["memory", "postgres"])
async def units(
    request: pytest.FixtureRequest, clock: Clock, settings_factory: Callable[..., AuthSettings]
) -> AsyncIterator[UnitsOfWork]:
    """Units of work of one adapter, on an empty store."""
    if request.param == "memory":
        yield MemoryUnits(clock=clock)
        return
    settings = settings_factory("auth")
    await asyncio.to_thread(migrations.upgrade, settings, settings.db_schema, MIGRATIONS)
    database = await open_database_for(
        settings.database_url, settings.db_schema, pool_size=POOL_SIZE
    )
    try:
        yield PostgresUnits(database)
    finally:
        await database.close()


@pytest.fixture
async def auth_rpc(auth_app: AuthApp) -> AsyncIterator[AuthRpc]:
    server = create_server([auth_app.interceptor])
    auth_app.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield AuthRpc(
            app=auth_app,
            channel=channel,
            auth=auth_pb2_grpc.AuthServiceStub(channel),
            internal=auth_pb2_grpc.AuthInternalServiceStub(channel),
        )
    finally:
        await channel.close()
        await server.stop(None)
