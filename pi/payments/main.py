"""Composition root of the payment service.

settings → engine → store → connector (sandbox) → ledger client (transaction service)
→ use cases → servicers → platform server with the auth interceptor and the background
tasks (outbox dispatcher, reconciler, JWKS refresh, revocation polling).

Nothing is built at import time. `run()` serves (`python -m pi.payments`), `migrate()`
applies the Alembic migrations (`python -m pi.payments migrate`). Tests build the same
graph with `build(settings, ...)`, replacing the ports they need to (ledger, keys).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from generated.pi.payments.v1 import payments_pb2, payments_pb2_grpc
from pi.payments.connectors.base import Connector
from pi.payments.connectors.sandbox import SandboxConnector
from pi.payments.ledger_client import GrpcTransactionLedger, TransactionLedger
from pi.payments.outbox import OutboxDispatcher
from pi.payments.reconciler import Reconciler
from pi.payments.service import PaymentService
from pi.payments.servicer import PaymentLedgerServicer, PaymentServicer
from pi.payments.store import PaymentStore
from pi.payments.tables import idempotency_keys
from pi.platform import migrations, server
from pi.platform.cache import create_cache
from pi.platform.clients import service_channel
from pi.platform.config import Settings
from pi.platform.crypto import MasterKeys
from pi.platform.db import create_engine
from pi.platform.idempotency import Idempotency
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

_log = logging.getLogger(__name__)

SERVICE = "payments"
MIGRATIONS = Path(__file__).parent / "migrations"
PAYMENT_SERVICE = payments_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name
PAYMENT_LEDGER_SERVICE = payments_pb2.DESCRIPTOR.services_by_name["PaymentLedgerService"].full_name

#: HKDF purposes. Both are pinned to the oldest master key version so that card
#: fingerprints and stored request fingerprints stay comparable across key rotations.
CARD_FINGERPRINT_PURPOSE = "card-fingerprint"
REQUEST_FINGERPRINT_PURPOSE = "payments-request-fingerprint"

#: Delivered outbox rows are kept this long (for audits), idempotency keys 24 hours.
DELIVERED_RETENTION = timedelta(days=7)
HOUSEKEEPING_SECONDS = 600.0

Task = Callable[[], Awaitable[None]]


@dataclass
class PaymentsApp:
    """The payment service's object graph, ready to register on a gRPC server."""

    settings: Settings
    engine: AsyncEngine
    store: PaymentStore
    connector: Connector
    ledger: TransactionLedger
    payments: PaymentService
    dispatcher: OutboxDispatcher
    reconciler: Reconciler
    revocations: RevocationList
    verifier: TokenVerifier
    interceptor: AuthInterceptor
    idempotency: Idempotency
    background: list[Task] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def housekeeping(self) -> None:
        """Background task: forget old delivered movements and expired idempotency keys."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                await self.store.purge(
                    delivered_before=datetime.now(UTC) - DELIVERED_RETENTION,
                    idempotency=self.idempotency,
                )
            except Exception:
                _log.exception("payments housekeeping failed")

    def register(self, grpc_server: grpc.aio.Server) -> None:
        payments_pb2_grpc.add_PaymentServiceServicer_to_server(
            PaymentServicer(self.payments), grpc_server
        )
        payments_pb2_grpc.add_PaymentLedgerServiceServicer_to_server(
            PaymentLedgerServicer(self.payments), grpc_server
        )

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.engine.dispose()


def derive_keys(master_keys: MasterKeys) -> tuple[bytes, bytes]:
    """(card fingerprint key, request fingerprint key)."""
    oldest = master_keys.versions[0]
    return (
        master_keys.derive_key(CARD_FINGERPRINT_PURPOSE, version=oldest),
        master_keys.derive_key(REQUEST_FINGERPRINT_PURPOSE, version=oldest),
    )


async def build(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    connector: Connector | None = None,
    ledger: TransactionLedger | None = None,
    key_source: KeySource | None = None,
) -> PaymentsApp:
    """Wire the service. Without `ledger` it calls the transaction service at
    `settings.transactions_target`; without `key_source` it fetches the JWKS from and
    polls revocations at `settings.auth_target`."""
    engine = engine or create_engine(settings)
    store = PaymentStore(engine)
    master_keys = MasterKeys(settings.master_keys)
    connector = connector or SandboxConnector()
    channels: list[grpc.aio.Channel] = []
    if ledger is None:
        transactions_channel = service_channel(
            settings.transactions_target, service_token=settings.service_token
        )
        channels.append(transactions_channel)
        ledger = GrpcTransactionLedger(transactions_channel)
    dispatcher = OutboxDispatcher(store, ledger)
    card_key, request_key = derive_keys(master_keys)
    idempotency = Idempotency(idempotency_keys)
    payments = PaymentService(
        store,
        connector,
        ledger,
        idempotency=idempotency,
        fingerprint_key=card_key,
        request_key=request_key,
        page_tokens=PageToken.from_master_keys(master_keys),
        notify=dispatcher.nudge,
    )
    reconciler = Reconciler(store, payments)
    revocations = RevocationList()
    background: list[Task] = [dispatcher.run, reconciler.run]
    if key_source is None:
        auth_channel = service_channel(settings.auth_target, service_token=settings.service_token)
        channels.append(auth_channel)
        jwks = RemoteJwks(auth_channel)
        key_source = jwks
        poller = RevocationPoller(
            auth_channel,
            revocations,
            interval=settings.revocation_poll_seconds,
            service_token=settings.service_token,
        )
        background += [jwks.run, poller.run]
        if settings.redis_url:
            cache = create_cache(settings)
            background.append(lambda: listen_for_revocations(cache, revocations))
    verifier = TokenVerifier(key_source, revocations, settings.jwt_issuer, settings.jwt_audience)
    interceptor = AuthInterceptor(verifier, settings.admin_token, settings.service_token)
    app = PaymentsApp(
        settings=settings,
        engine=engine,
        store=store,
        connector=connector,
        ledger=ledger,
        payments=payments,
        dispatcher=dispatcher,
        reconciler=reconciler,
        revocations=revocations,
        verifier=verifier,
        interceptor=interceptor,
        idempotency=idempotency,
        background=background,
        channels=channels,
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
            f"The payments database is at revision {current or 'none'}, not {head}: "
            "run `python -m pi.payments migrate` first."
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
            service_names=[PAYMENT_SERVICE, PAYMENT_LEDGER_SERVICE],
            interceptors=[app.interceptor],
            background=app.background,
        )
    finally:
        await app.close()


def run() -> None:
    """`python -m pi.payments`: serve until SIGTERM/SIGINT."""
    server.run(_serve)


def migrate() -> None:
    """`python -m pi.payments migrate`: apply the payment migrations and exit."""
    settings = Settings.from_env(SERVICE)
    configure_logging(settings)
    migrations.upgrade(settings, settings.db_schema, MIGRATIONS)
    _log.info("payments database migrated", extra={"schema": settings.db_schema})
