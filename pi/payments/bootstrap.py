"""The composition root of the payment service: settings → database → units of work →
use cases → servicers → server, with the background workers (outbox dispatcher and
reconciler, on the replica holding the workers' lease; housekeeping) and the platform's
authentication tasks (JWKS refresh, revocation polling).

Nothing is built at import time. `run()` serves (`python -m pi.payments`), `migrate()`
applies the Alembic migrations (`python -m pi.payments migrate`). Tests build the same
graph with `build(settings, ...)`, replacing the ports they need to (ledger, keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from generated.pi.payments.v1 import payments_pb2, payments_pb2_grpc
from pi.payments.adapters.ledger_grpc import GrpcTransactionLedger
from pi.payments.adapters.postgres.backlog import sample_backlog
from pi.payments.adapters.postgres.lease import PostgresLease
from pi.payments.adapters.postgres.outbox import PostgresOutbox
from pi.payments.adapters.postgres.uow import PostgresUnits
from pi.payments.adapters.processor import SandboxConnector
from pi.payments.adapters.processor.book import MemoryBook, SandboxBook, open_postgres_book
from pi.payments.adapters.processor.faults import SandboxFaults
from pi.payments.adapters.processor.observed import ObservedConnector
from pi.payments.app.dead_letters import DeadLetters
from pi.payments.app.ports import Connector, Outbox, TransactionLedger, UnitsOfWork
from pi.payments.app.use_cases import PaymentUseCases, payment_use_cases
from pi.payments.entrypoints.grpc import PaymentLedgerServicer, PaymentServicer
from pi.payments.entrypoints.leader import Leadership
from pi.payments.entrypoints.workers import OutboxDispatcher, Reconciler
from pi.payments.settings import PaymentsSettings
from pi.platform.db.database import Database, open_database
from pi.platform.kernel.pages import PageToken
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

MIGRATIONS = Path(__file__).parent / "migrations"
PAYMENT_SERVICE = payments_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name
PAYMENT_LEDGER_SERVICE = payments_pb2.DESCRIPTOR.services_by_name["PaymentLedgerService"].full_name
SERVICE_NAMES = (PAYMENT_SERVICE, PAYMENT_LEDGER_SERVICE)

#: HKDF purposes. Both are pinned to the oldest master key version so that card
#: fingerprints and stored request fingerprints stay comparable across key rotations;
#: PI_CARD_FINGERPRINT_KEY, when set, replaces the card one (a lineage of its own, so the
#: master keys can retire).
CARD_FINGERPRINT_PURPOSE = "card-fingerprint"
REQUEST_FINGERPRINT_PURPOSE = "payments-request-fingerprint"

#: Delivered outbox rows are kept this long (for audits), idempotency keys 24 hours.
DELIVERED_RETENTION = timedelta(days=7)
HOUSEKEEPING_SECONDS = 600.0
#: How often the outbox and reconciler backlog gauges are sampled from the database.
BACKLOG_SAMPLE_SECONDS = 5.0


@dataclass
class PaymentsApp:
    """The payment service's object graph, ready to register on a gRPC server."""

    settings: PaymentsSettings
    database: Database
    units: UnitsOfWork
    outbox: Outbox
    connector: Connector
    ledger: TransactionLedger
    use_cases: PaymentUseCases
    dispatcher: OutboxDispatcher
    reconciler: Reconciler
    dead_letters: DeadLetters
    leadership: Leadership
    authentication: Authentication
    background: list[BackgroundTask] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def interceptor(self) -> AuthInterceptor:
        return self.authentication.interceptor

    @property
    def interceptors(self) -> tuple[grpc.aio.ServerInterceptor, ...]:
        """What the server installs: auth, then the per-merchant rate limit."""
        return self.authentication.interceptors

    async def sample_backlog(self) -> None:
        """Set the outbox and reconciler backlog gauges (`pi_outbox_*`, `pi_reconciler_*`)."""
        await sample_backlog(self.database, datetime.now(UTC))

    async def housekeeping(self) -> None:
        """One housekeeping pass: forget old delivered movements and expired idempotency keys."""
        await self.outbox.purge(delivered_before=datetime.now(UTC) - DELIVERED_RETENTION)

    def register(self, grpc_server: grpc.aio.Server) -> None:
        payments_pb2_grpc.add_PaymentServiceServicer_to_server(
            PaymentServicer(self.use_cases), grpc_server
        )
        payments_pb2_grpc.add_PaymentLedgerServiceServicer_to_server(
            PaymentLedgerServicer(self.use_cases, self.dead_letters), grpc_server
        )

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        close = getattr(self.connector, "close", None)
        if close is not None:
            await close()
        await self.authentication.close()
        await self.database.close()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def derive_keys(
    master_keys: MasterKeys, card_fingerprint_key: bytes | None = None
) -> tuple[bytes, bytes]:
    """(card fingerprint key, request fingerprint key)."""
    oldest = master_keys.versions[0]
    card = card_fingerprint_key or master_keys.derive_key(CARD_FINGERPRINT_PURPOSE, version=oldest)
    return (card, master_keys.derive_key(REQUEST_FINGERPRINT_PURPOSE, version=oldest))


async def build(
    settings: PaymentsSettings,
    *,
    database: Database | None = None,
    connector: Connector | None = None,
    ledger: TransactionLedger | None = None,
    key_source: KeySource | None = None,
) -> PaymentsApp:
    """Wire the service. Without `ledger` it calls the transaction service at
    `settings.transactions_target`; without `key_source` it fetches the JWKS from and
    polls revocations at `settings.auth_target` (see `runtime.wiring.authentication`).
    Without `database` it opens the one `settings` name (and closes it with the app)."""
    database = database or await open_database(settings)
    units = PostgresUnits(database)
    outbox = PostgresOutbox(database, units.idempotency)
    master_keys = MasterKeys(settings.master_keys)
    connector = ObservedConnector(connector or await sandbox_connector(settings))
    channels: list[grpc.aio.Channel] = []
    if ledger is None:
        transactions_channel = peer_channel(settings, "transactions", settings.transactions_target)
        channels.append(transactions_channel)
        ledger = GrpcTransactionLedger(transactions_channel)
    dispatcher = OutboxDispatcher(outbox, ledger)
    card_key, request_key = derive_keys(master_keys, settings.card_fingerprint_key)
    use_cases = payment_use_cases(
        units,
        connector,
        ledger,
        card_key=card_key,
        request_key=request_key,
        page_tokens=PageToken(master_keys.derive_key("page-token")),
        notify=dispatcher.nudge,
    )
    reconciler = Reconciler(use_cases.reconcile_payment)
    dead_letters = DeadLetters(
        outbox,
        PageToken(master_keys.derive_key("dead-letter-page-token")),
        clock=_utc_now,
        notify=dispatcher.nudge,
    )
    callers = authentication(settings, keys=key_source)
    app = PaymentsApp(
        settings=settings,
        database=database,
        units=units,
        outbox=outbox,
        connector=connector,
        ledger=ledger,
        use_cases=use_cases,
        dispatcher=dispatcher,
        reconciler=reconciler,
        dead_letters=dead_letters,
        leadership=Leadership(
            PostgresLease(database, f"{settings.db_schema}.workers"),
            [dispatcher.run, reconciler.run],
        ),
        authentication=callers,
        channels=channels,
    )
    app.background = [
        # One replica at a time runs the dispatcher and the reconciler.
        app.leadership.run,
        *callers.background,
        periodic(HOUSEKEEPING_SECONDS, app.housekeeping, name="payments housekeeping"),
        periodic(BACKLOG_SAMPLE_SECONDS, app.sample_backlog, name="payments backlog sample"),
    ]
    return app


async def sandbox_connector(settings: PaymentsSettings) -> SandboxConnector:
    """The built-in sandbox processor, with the ledger and faults the settings ask for."""
    book: SandboxBook = MemoryBook()
    if settings.sandbox_ledger == "postgres":
        book = await open_postgres_book(settings.database_url)
    faults = SandboxFaults(
        unknown_percent=settings.sandbox_unknown_percent,
        crash_percent=settings.sandbox_crash_percent,
    )
    return SandboxConnector(book=book, faults=faults)


def run() -> None:
    """`python -m pi.payments`: serve until SIGTERM/SIGINT."""
    run_service(PaymentsSettings, build, SERVICE_NAMES, MIGRATIONS)


def migrate() -> None:
    """`python -m pi.payments migrate`: apply the payment migrations and exit."""
    migrate_service(PaymentsSettings, MIGRATIONS)
