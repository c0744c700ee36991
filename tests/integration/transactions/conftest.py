"""Fixtures for the transaction service on real PostgreSQL.

Every test gets a freshly migrated schema. `units` makes PostgreSQL units of work on it;
`service` is the use cases on them with a fake payment ledger (`payments`) and an
adjustable `clock`; `rpc` serves the whole object graph from
`pi.transactions.bootstrap.build` on an in-process grpc.aio server (127.0.0.1, ephemeral
port), merchant tokens verified with a static ES256 key; `serve_app` serves any other
wiring the same way. `count_rows(table, **where)` counts rows in the schema.

Tests import nothing from here (pytest runs in importlib mode): they take fixtures.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from generated.pi.transactions.v1 import transactions_pb2_grpc
from pi.platform.db import migrations
from pi.platform.db.database import Database
from pi.platform.kernel.pages import PageToken
from pi.platform.runtime.server import create_server
from pi.platform.security.tokens import StaticKeySource
from pi.transactions.adapters.postgres.tables import (
    applied_movements,
    idempotency_keys,
    transactions,
)
from pi.transactions.adapters.postgres.uow import PostgresUnits
from pi.transactions.app.ports import PaymentLedger
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.bootstrap import MIGRATIONS, TransactionsApp, build
from pi.transactions.settings import TransactionsSettings
from tests.unit.transactions.fakes import Clock, FakePaymentLedger

_TABLES = {
    "transactions": transactions,
    "applied_movements": applied_movements,
    "idempotency_keys": idempotency_keys,
}


@dataclass
class TransactionsRpc:
    """Stubs on a channel to an in-process server, plus credential helpers."""

    app: TransactionsApp
    channel: grpc.aio.Channel
    transactions: Any  # TransactionServiceAsyncStub
    ledger: Any  # TransactionLedgerServiceAsyncStub
    signer: Any  # the root conftest's Es256Signer

    def merchant(self, merchant_id: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.signer.sign(merchant_id)}"),)

    @property
    def service(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.app.settings.service_token}"),)

    @property
    def admin(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.app.settings.admin_token}"),)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def txn_settings(settings_factory: Callable[..., TransactionsSettings]) -> TransactionsSettings:
    return settings_factory("transactions")


@pytest.fixture
async def migrated(txn_settings: TransactionsSettings) -> TransactionsSettings:
    await asyncio.to_thread(migrations.upgrade, txn_settings, txn_settings.db_schema, MIGRATIONS)
    return txn_settings


@pytest.fixture
def engine(make_engine: Callable[..., AsyncEngine], migrated: TransactionsSettings) -> AsyncEngine:
    return make_engine(migrated.db_schema)


@pytest.fixture
async def database(
    make_database: Callable[..., Awaitable[Database]], migrated: TransactionsSettings
) -> Database:
    return await make_database(migrated.db_schema)


@pytest.fixture
def count_rows(engine: AsyncEngine) -> Callable[..., Awaitable[int]]:
    """`await count_rows("transactions", status="PENDING")`."""

    async def count(table: str, **where: Any) -> int:
        t = _TABLES[table]
        query = select(func.count()).select_from(t)
        for column, value in where.items():
            query = query.where(t.c[column] == value)
        async with engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    return count


@pytest.fixture
def payments() -> FakePaymentLedger:
    return FakePaymentLedger()


@pytest.fixture
def units(database: Database) -> PostgresUnits:
    return PostgresUnits(database)


@pytest.fixture
def service(units: PostgresUnits, payments: FakePaymentLedger, clock: Clock) -> TransactionUseCases:
    return TransactionUseCases.wire(
        units, payments, PageToken(secrets.token_bytes(32)), clock=clock
    )


@pytest.fixture
async def serve_app(
    migrated: TransactionsSettings, es256_signer: Any
) -> AsyncIterator[Callable[..., Awaitable[TransactionsRpc]]]:
    """`await serve_app(payment_ledger, **wiring)`: the service built and served in-process;
    `wiring` goes to `build` (e.g. `facts_wait=`)."""
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def serve(payment_ledger: PaymentLedger, **wiring: Any) -> TransactionsRpc:
        keys = StaticKeySource({es256_signer.kid: es256_signer.public_key})
        app = await build(migrated, key_source=keys, payment_ledger=payment_ledger, **wiring)
        server = create_server([app.interceptor])
        app.register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

        async def cleanup() -> None:
            await channel.close()
            await server.stop(None)
            await app.close()

        cleanups.append(cleanup)
        return TransactionsRpc(
            app=app,
            channel=channel,
            transactions=transactions_pb2_grpc.TransactionServiceStub(channel),
            ledger=transactions_pb2_grpc.TransactionLedgerServiceStub(channel),
            signer=es256_signer,
        )

    yield serve
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
async def rpc(
    serve_app: Callable[[PaymentLedger], Awaitable[TransactionsRpc]], payments: FakePaymentLedger
) -> TransactionsRpc:
    return await serve_app(payments)
