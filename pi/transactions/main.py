"""Composition root of the transaction service: settings → engine → store → use cases → server.

Nothing is built at import time. `run()` serves (`python -m pi.transactions`),
`migrate()` applies the Alembic migrations. Tests build the same object graph with
`build(settings, key_source=..., payment_ledger=...)` and serve it in-process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from generated.pi.transactions.v1 import transactions_pb2, transactions_pb2_grpc
from pi.platform import migrations, server
from pi.platform.cache import Cache, create_cache
from pi.platform.clients import service_channel
from pi.platform.config import Settings
from pi.platform.crypto import MasterKeys
from pi.platform.db import create_engine
from pi.platform.interceptors import AuthInterceptor
from pi.platform.logging import configure as configure_logging
from pi.platform.tokens import (
    KeySource,
    RemoteJwks,
    RevocationList,
    RevocationPoller,
    TokenVerifier,
    listen_for_revocations,
)
from pi.platform.validation import PageToken
from pi.transactions.clients import GrpcPaymentLedger, PaymentLedger
from pi.transactions.service import TransactionService
from pi.transactions.servicer import TransactionLedgerServicer, TransactionServicer
from pi.transactions.store import TransactionStore

_log = logging.getLogger(__name__)

SERVICE = "transactions"
MIGRATIONS = Path(__file__).parent / "migrations"
TRANSACTION_SERVICE = transactions_pb2.DESCRIPTOR.services_by_name["TransactionService"].full_name
TRANSACTION_LEDGER_SERVICE = transactions_pb2.DESCRIPTOR.services_by_name[
    "TransactionLedgerService"
].full_name
SERVICE_NAMES = (TRANSACTION_SERVICE, TRANSACTION_LEDGER_SERVICE)
HOUSEKEEPING_SECONDS = 3600.0


@dataclass
class TransactionsApp:
    """The transaction service's object graph, ready to register on a gRPC server."""

    settings: Settings
    engine: AsyncEngine
    store: TransactionStore
    transactions: TransactionService
    revocations: RevocationList
    interceptor: AuthInterceptor
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    cache: Cache | None = None

    def register(self, grpc_server: grpc.aio.Server) -> None:
        transactions_pb2_grpc.add_TransactionServiceServicer_to_server(
            TransactionServicer(self.transactions), grpc_server
        )
        transactions_pb2_grpc.add_TransactionLedgerServiceServicer_to_server(
            TransactionLedgerServicer(self.transactions), grpc_server
        )

    async def housekeeping(self) -> None:
        """Background task: forget idempotency keys older than the 24 h retention."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                async with self.store.begin() as conn:
                    await self.store.idempotency.purge(conn)
            except Exception:
                _log.exception("transactions housekeeping failed")

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        if self.cache is not None:
            await self.cache.close()
        await self.engine.dispose()


async def build(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    key_source: KeySource | None = None,
    payment_ledger: PaymentLedger | None = None,
) -> TransactionsApp:
    """Wire the service. Call inside the event loop (gRPC channels bind to it).

    By default merchant tokens are verified with the auth service's JWKS and its
    revocations (pulled, and pushed over Redis when REDIS_URL is set), and cancellations
    go to the payment service. Tests pass a static `key_source` and a `payment_ledger`.
    """
    engine = engine or create_engine(settings)
    master_keys = MasterKeys(settings.master_keys)
    channels: list[grpc.aio.Channel] = []
    background: list[Callable[[], Awaitable[None]]] = []
    revocations = RevocationList()

    if key_source is None:
        auth_channel = service_channel(settings.auth_target, service_token=settings.service_token)
        channels.append(auth_channel)
        jwks = RemoteJwks(auth_channel)
        poller = RevocationPoller(
            auth_channel,
            revocations,
            interval=settings.revocation_poll_seconds,
            service_token=settings.service_token,
        )
        key_source = jwks
        background += [jwks.run, poller.run]
    cache: Cache | None = None
    if settings.redis_url:
        cache = subscriber = create_cache(settings)
        background.append(lambda: listen_for_revocations(subscriber, revocations))

    if payment_ledger is None:
        payments_channel = service_channel(
            settings.payments_target, service_token=settings.service_token
        )
        channels.append(payments_channel)
        payment_ledger = GrpcPaymentLedger(payments_channel)

    store = TransactionStore(engine)
    transactions = TransactionService(
        store, payment_ledger, PageToken.from_master_keys(master_keys)
    )
    verifier = TokenVerifier(key_source, revocations, settings.jwt_issuer, settings.jwt_audience)
    interceptor = AuthInterceptor(verifier, settings.admin_token, settings.service_token)
    app = TransactionsApp(
        settings=settings,
        engine=engine,
        store=store,
        transactions=transactions,
        revocations=revocations,
        interceptor=interceptor,
        background=background,
        channels=channels,
        cache=cache,
    )
    app.background.append(app.housekeeping)
    return app


def check_migrated(settings: Settings) -> None:
    """Refuse to start on a database that `migrate` has not brought to head."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    current = migrations.current(settings, settings.db_schema, MIGRATIONS)
    if current != head:
        raise SystemExit(
            f"The transactions database is at revision {current or 'none'}, not {head}: "
            "run `python -m pi.transactions migrate` first."
        )


async def _serve() -> None:
    settings = Settings.from_env(SERVICE)
    configure_logging(settings)
    await asyncio.to_thread(check_migrated, settings)
    app = await build(settings)
    try:
        await server.serve(
            settings,
            register=app.register,
            service_names=SERVICE_NAMES,
            interceptors=[app.interceptor],
            background=app.background,
        )
    finally:
        await app.close()


def run() -> None:
    """`python -m pi.transactions`: serve until SIGTERM/SIGINT."""
    server.run(_serve)


def migrate() -> None:
    """`python -m pi.transactions migrate`: apply the migrations and exit."""
    settings = Settings.from_env(SERVICE)
    configure_logging(settings)
    migrations.upgrade(settings, settings.db_schema, MIGRATIONS)
    _log.info("transactions database migrated", extra={"schema": settings.db_schema})
