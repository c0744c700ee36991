"""The composition root of the transaction service: settings -> database -> units of work
-> use cases -> servicers -> server, plus the background workers.

The background tasks: JWKS refresh and revocation polling, the purge of old idempotency
keys, and the facts publisher that pushes new transactions to the payment service
(`pi.transactions.entrypoints.workers`).

Nothing is built at import time. `run()` serves (`python -m pi.transactions`),
`migrate()` applies the Alembic migrations. Tests build the same object graph with
`build(settings, key_source=..., payment_ledger=...)` and serve it in-process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from generated.pi.transactions.v1 import transactions_pb2, transactions_pb2_grpc
from pi.platform.db.database import Database, open_database
from pi.platform.kernel.pages import PageToken
from pi.platform.observability import metrics
from pi.platform.runtime.interceptors import AuthInterceptor
from pi.platform.runtime.server import BackgroundTask, periodic
from pi.platform.runtime.wiring import (
    Authentication,
    authentication,
    migrate_service,
    peer_channel,
    run_service,
)
from pi.platform.security.crypto import MasterKeys
from pi.platform.security.tokens import KeySource
from pi.transactions.adapters.payments_grpc import GrpcPaymentLedger
from pi.transactions.adapters.postgres.uow import PostgresUnits
from pi.transactions.app.create_transaction import FACTS_WAIT_SECONDS
from pi.transactions.app.ports import PaymentLedger
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.entrypoints.grpc import TransactionLedgerServicer, TransactionServicer
from pi.transactions.entrypoints.workers import FactsPublisher, purge_idempotency_keys
from pi.transactions.settings import TransactionsSettings

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

    settings: TransactionsSettings
    database: Database
    units: PostgresUnits
    transactions: TransactionUseCases
    authentication: Authentication
    facts: FactsPublisher
    background: list[BackgroundTask] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def interceptor(self) -> AuthInterceptor:
        return self.authentication.interceptor

    @property
    def interceptors(self) -> tuple[grpc.aio.ServerInterceptor, ...]:
        """What the server installs: auth, then the per-merchant rate limit."""
        return self.authentication.interceptors

    def register(self, grpc_server: grpc.aio.Server) -> None:
        transactions_pb2_grpc.add_TransactionServiceServicer_to_server(
            TransactionServicer(self.transactions), grpc_server
        )
        transactions_pb2_grpc.add_TransactionLedgerServiceServicer_to_server(
            TransactionLedgerServicer(self.transactions), grpc_server
        )

    async def housekeeping(self) -> None:
        """One housekeeping pass: forget idempotency keys older than the 24 h retention."""
        await purge_idempotency_keys(self.units)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.authentication.close()
        await self.database.close()


async def build(
    settings: TransactionsSettings,
    *,
    key_source: KeySource | None = None,
    payment_ledger: PaymentLedger | None = None,
    facts_wait: float = FACTS_WAIT_SECONDS,
) -> TransactionsApp:
    """Wire the service. Call inside the event loop (gRPC channels bind to it).

    By default merchant tokens are verified with the auth service's JWKS and its
    revocations (pulled, and pushed over Redis when REDIS_URL is set), and cancellations
    go to the payment service. Tests pass a static `key_source` and a `payment_ledger`.
    `facts_wait` caps how long CreateTransaction waits for its facts to reach the payment
    service (0: it does not wait).
    """
    database = await open_database(settings)
    master_keys = MasterKeys(settings.master_keys)
    callers = authentication(settings, keys=key_source)
    channels: list[grpc.aio.Channel] = []
    if payment_ledger is None:
        payments_channel = peer_channel(settings, "payments", settings.payments_target)
        channels.append(payments_channel)
        payment_ledger = GrpcPaymentLedger(payments_channel)

    units = PostgresUnits(database)
    facts = FactsPublisher(payment_ledger)
    metrics.outbox_undelivered.labels("facts").set_function(lambda: facts.queued)
    use_cases = TransactionUseCases.wire(
        units,
        payment_ledger,
        PageToken(master_keys.derive_key("page-token")),
        facts=facts,
        facts_wait=facts_wait,
    )
    app = TransactionsApp(
        settings=settings,
        database=database,
        units=units,
        transactions=use_cases,
        authentication=callers,
        facts=facts,
        channels=channels,
    )
    app.background = [
        facts.run,
        *callers.background,
        periodic(HOUSEKEEPING_SECONDS, app.housekeeping, name="transactions housekeeping"),
    ]
    return app


def run() -> None:
    """`python -m pi.transactions`: serve until SIGTERM/SIGINT."""
    run_service(TransactionsSettings, build, SERVICE_NAMES, MIGRATIONS)


def migrate() -> None:
    """`python -m pi.transactions migrate`: apply the migrations and exit."""
    migrate_service(TransactionsSettings, MIGRATIONS)
