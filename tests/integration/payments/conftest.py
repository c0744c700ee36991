"""Fixtures for the payment service: the real payment and transaction services, in-process.

Tests import nothing from here (pytest runs in importlib mode): they take fixtures.

`mesh` migrates two fresh schemas (payments, transactions), builds both object graphs
with `pi.payments.bootstrap.build` / `pi.transactions.bootstrap.build` (merchant tokens verified
with a static ES256 key, the shared service token between them) and serves both on
grpc.aio servers on 127.0.0.1. The payment service's outbox dispatcher runs in the
background; the reconciler is driven by the tests (`run_once`). The transaction service's
facts publisher (new transactions pushed to RegisterTransactions) runs only once a test
calls `mesh.start_facts_publisher()`: without it every first payment looks its
transaction up, as the tests of that path expect. `mesh.count_lookups()` counts the
LookupTransaction calls the transaction service answers from then on. After each test
the payments schema is scanned for card and account data (`card_data_report` collects
the scans and every log record of the session).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

import grpc
import psycopg
import pytest
import sqlalchemy as sa
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy.ext.asyncio import AsyncEngine

from generated.pi.payments.v1 import payments_pb2, payments_pb2_grpc
from generated.pi.transactions.v1 import transactions_pb2, transactions_pb2_grpc
from pi.payments import bootstrap as payments_bootstrap
from pi.payments.adapters.postgres.tables import metadata as payments_metadata
from pi.payments.bootstrap import PaymentsApp
from pi.payments.settings import PaymentsSettings
from pi.platform.config import ServiceSettings
from pi.platform.db import migrations
from pi.platform.runtime.clients import service_channel
from pi.platform.runtime.server import create_server
from pi.platform.security.tokens import StaticKeySource
from pi.transactions import bootstrap as transactions_main
from pi.transactions.adapters.payments_grpc import GrpcPaymentLedger
from pi.transactions.app.ports import ClosedTransaction, PaymentLedger, TransactionFacts
from pi.transactions.bootstrap import TransactionsApp
from pi.transactions.settings import TransactionsSettings

APPROVE_CARD = "4242424242424242"
DECLINE_CARD = "4000000000000002"
INSUFFICIENT_FUNDS_CARD = "4000000000009995"
TIMEOUT_CARD = "4000000000000119"
MASTERCARD = "5555555555554444"
TEST_CARDS = (APPROVE_CARD, DECLINE_CARD, INSUFFICIENT_FUNDS_CARD, TIMEOUT_CARD, MASTERCARD)
BANK_ACCOUNT = "DE89370400440532013000"
WALLET_TOKEN = "wallet-token-SECRET-9f8e7d"
SECRETS = (*TEST_CARDS, BANK_ACCOUNT, WALLET_TOKEN)

PAYMENT_TABLES = tuple(payments_metadata.tables)
EXP_YEAR = datetime.now(UTC).year + 3


class LogCapture(logging.Handler):
    """Keeps every record's raw text (message, extras, exception): nothing redacted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        parts = [record.getMessage()]
        parts.extend(repr(value) for value in vars(record).values())
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
        self.texts.append("\n".join(parts))


@dataclass
class CardDataScan:
    """What the scans of the payments schemas found, collected over the whole session."""

    schemas_scanned: int = 0
    findings: list[str] = field(default_factory=list)


CARD_DATA = CardDataScan()
LOGS = LogCapture()


def scan_schema_for_secrets(pg_url: str, schema: str) -> list[str]:
    """Every (table, secret) where a secret appears in any column of the schema's tables."""
    found: list[str] = []
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            )
        ]
        for table in tables:
            rows = conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
            for row in rows:
                for value in row:
                    if value is None:
                        continue
                    blob = bytes(value) if isinstance(value, bytes | memoryview) else None
                    text = str(value)
                    for secret in SECRETS:
                        if secret in text or (blob is not None and secret.encode() in blob):
                            found.append(f"{schema}.{table}: {secret[-4:]}")
    return found


class LateBoundPaymentLedger:
    """The transaction service's `PaymentLedger`, pointed at the payment server once it
    is listening (the two services need each other's address)."""

    def __init__(self) -> None:
        self.target: PaymentLedger | None = None

    async def close_transaction(
        self, *, merchant_id: str, transaction_id: str, amount: int, currency: str
    ) -> ClosedTransaction:
        assert self.target is not None
        return await self.target.close_transaction(
            merchant_id=merchant_id, transaction_id=transaction_id, amount=amount, currency=currency
        )

    async def register_transactions(self, transactions: Sequence[TransactionFacts]) -> int:
        assert self.target is not None
        return await self.target.register_transactions(transactions)


@dataclass(frozen=True)
class RpcError:
    code: grpc.StatusCode
    message: str
    reason: str | None
    metadata: dict[str, str]
    fields: list[str]


def rpc_error(exc: grpc.aio.AioRpcError) -> RpcError:
    status = rpc_status.from_call(exc)
    reason, metadata, fields = None, {}, []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return RpcError(exc.code(), exc.details() or "", reason, metadata, fields)


async def call_error(call: Any) -> RpcError:
    """Await a call that must fail; its error details."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return rpc_error(exc)
    raise AssertionError("the call succeeded")


def card(number: str = APPROVE_CARD, **overrides: Any) -> payments_pb2.Card:
    values: dict[str, Any] = {"number": number, "exp_month": 12, "exp_year": EXP_YEAR, "cvc": "123"}
    values.update(overrides)
    return payments_pb2.Card(**values)


def card_payment(
    transaction_id: str,
    number: str = APPROVE_CARD,
    *,
    amount: int = 0,
    manual: bool = False,
) -> payments_pb2.Payment:
    return payments_pb2.Payment(
        transaction_id=transaction_id,
        amount=amount,
        method=payments_pb2.PAYMENT_METHOD_TYPE_CARD,
        card=card(number),
        capture_mode=(
            payments_pb2.CAPTURE_MODE_MANUAL if manual else payments_pb2.CAPTURE_MODE_AUTOMATIC
        ),
    )


@dataclass
class Mesh:
    """Both services in-process, with stubs and helpers for the tests."""

    APPROVE_CARD: ClassVar[str] = APPROVE_CARD
    DECLINE_CARD: ClassVar[str] = DECLINE_CARD
    INSUFFICIENT_FUNDS_CARD: ClassVar[str] = INSUFFICIENT_FUNDS_CARD
    TIMEOUT_CARD: ClassVar[str] = TIMEOUT_CARD
    MASTERCARD: ClassVar[str] = MASTERCARD
    BANK_ACCOUNT: ClassVar[str] = BANK_ACCOUNT
    WALLET_TOKEN: ClassVar[str] = WALLET_TOKEN
    EXP_YEAR: ClassVar[int] = EXP_YEAR

    payments_app: PaymentsApp
    transactions_app: TransactionsApp
    payments_engine: AsyncEngine
    transactions_engine: AsyncEngine
    payments_schema: str
    transactions_schema: str
    signer: Any  # conftest Es256Signer
    payments: payments_pb2_grpc.PaymentServiceAsyncStub
    payment_ledger: payments_pb2_grpc.PaymentLedgerServiceAsyncStub
    transactions: transactions_pb2_grpc.TransactionServiceAsyncStub
    transactions_port: int
    transactions_server: grpc.aio.Server | None
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def merchant(self, merchant_id: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.signer.sign(merchant_id)}"),)

    @property
    def service(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.payments_app.settings.service_token}"),)

    async def create_transaction(
        self, merchant_id: str, amount: int, currency: str = "USD"
    ) -> transactions_pb2.Transaction:
        response = await self.transactions.CreateTransaction(
            transactions_pb2.CreateTransactionRequest(
                transaction=transactions_pb2.Transaction(amount=amount, currency=currency)
            ),
            metadata=self.merchant(merchant_id),
        )
        return response.transaction

    async def get_transaction(
        self, merchant_id: str, transaction_id: str
    ) -> transactions_pb2.Transaction:
        response = await self.transactions.GetTransaction(
            transactions_pb2.GetTransactionRequest(id=transaction_id),
            metadata=self.merchant(merchant_id),
        )
        return response.transaction

    async def pay(
        self,
        merchant_id: str,
        transaction_id: str,
        number: str = APPROVE_CARD,
        *,
        amount: int = 0,
        manual: bool = False,
        request_id: str = "",
    ) -> payments_pb2.Payment:
        response = await self.payments.CreatePayment(
            payments_pb2.CreatePaymentRequest(
                payment=card_payment(transaction_id, number, amount=amount, manual=manual),
                request_id=request_id,
            ),
            metadata=self.merchant(merchant_id),
        )
        return response.payment

    async def capture(
        self, merchant_id: str, payment_id: str, amount: int = 0, request_id: str = ""
    ) -> payments_pb2.Payment:
        response = await self.payments.CapturePayment(
            payments_pb2.CapturePaymentRequest(id=payment_id, amount=amount, request_id=request_id),
            metadata=self.merchant(merchant_id),
        )
        return response.payment

    async def cancel(self, merchant_id: str, payment_id: str) -> payments_pb2.Payment:
        response = await self.payments.CancelPayment(
            payments_pb2.CancelPaymentRequest(id=payment_id), metadata=self.merchant(merchant_id)
        )
        return response.payment

    async def refund(
        self, merchant_id: str, payment_id: str, amount: int = 0, request_id: str = ""
    ) -> payments_pb2.RefundPaymentResponse:
        return await self.payments.RefundPayment(
            payments_pb2.RefundPaymentRequest(id=payment_id, amount=amount, request_id=request_id),
            metadata=self.merchant(merchant_id),
        )

    async def drain(self, timeout: float = 20.0) -> None:
        await self.payments_app.dispatcher.drain(timeout)

    def start_facts_publisher(self) -> None:
        """Run the transaction service's facts publisher, as in production."""
        self.tasks.append(asyncio.create_task(self.transactions_app.facts.run()))

    def count_lookups(self, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        """The ids of the transactions LookupTransaction is asked for from now on."""
        use_cases = self.transactions_app.transactions
        lookup = use_cases.lookup_transaction
        asked: list[str] = []

        async def counted(principal: Any, merchant_id: str, transaction_id: str) -> Any:
            asked.append(transaction_id)
            return await lookup(principal, merchant_id, transaction_id)

        monkeypatch.setattr(use_cases, "lookup_transaction", counted)
        return asked

    async def ref(self, transaction_id: str) -> dict[str, Any] | None:
        """The payment service's ref row of a transaction, or None."""
        table = payments_metadata.tables["transaction_refs"]
        async with self.payments_engine.connect() as conn:
            row = (
                await conn.execute(sa.select(table).where(table.c.transaction_id == transaction_id))
            ).first()
        return None if row is None else dict(row._mapping)

    async def stop_transactions(self) -> None:
        assert self.transactions_server is not None
        await self.transactions_server.stop(None)
        self.transactions_server = None

    async def start_transactions(self) -> None:
        assert self.transactions_server is None
        server = create_server([self.transactions_app.interceptor])
        self.transactions_app.register(server)
        port = server.add_insecure_port(f"127.0.0.1:{self.transactions_port}")
        assert port == self.transactions_port
        await server.start()
        self.transactions_server = server

    async def count_rows(self) -> dict[str, int]:
        counts = {}
        async with self.payments_engine.connect() as conn:
            for name, table in payments_metadata.tables.items():
                query = sa.select(sa.func.count()).select_from(table)
                counts[name] = int((await conn.execute(query)).scalar_one())
        return counts

    async def assert_transaction_matches_payments(
        self, merchant_id: str, transaction_id: str
    ) -> transactions_pb2.Transaction:
        """After the outbox drained: the transaction's amounts are the sums over its
        payments (authorized = held by REQUIRES_CAPTURE + captured by SUCCEEDED)."""
        txn = await self.get_transaction(merchant_id, transaction_id)
        listed = await self.payments.ListPayments(
            payments_pb2.ListPaymentsRequest(transaction_id=transaction_id, page_size=100),
            metadata=self.merchant(merchant_id),
        )
        authorized = captured = refunded = 0
        for p in listed.payments:
            if p.status == payments_pb2.PAYMENT_STATUS_REQUIRES_CAPTURE:
                authorized += p.amount
            captured += p.captured_amount
            refunded += p.refunded_amount
        authorized += captured
        assert (txn.authorized_amount, txn.captured_amount, txn.refunded_amount) == (
            authorized,
            captured,
            refunded,
        ), f"transaction {txn} vs payments {list(listed.payments)}"
        return txn

    call_error = staticmethod(call_error)
    rpc_error = staticmethod(rpc_error)
    scan_schema_for_secrets = staticmethod(scan_schema_for_secrets)
    card = staticmethod(card)
    card_payment = staticmethod(card_payment)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()
        if self.transactions_server is not None:
            await self.transactions_server.stop(None)


@pytest.fixture(scope="session", autouse=True)
def _capture_logs() -> Iterator[None]:
    """Every log record of the payment tests, raw, for the card-data check."""
    root = logging.getLogger()
    pi_logger = logging.getLogger("pi")
    previous = pi_logger.level
    root.addHandler(LOGS)
    pi_logger.setLevel(logging.DEBUG)
    yield
    pi_logger.setLevel(previous)
    root.removeHandler(LOGS)


@pytest.fixture
def txn_schema(_pg_admin: Callable[[str], None]) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    _pg_admin(f'CREATE SCHEMA "{schema}"')
    yield schema
    _pg_admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
async def pay_settings(settings_factory: Callable[..., ServiceSettings]) -> PaymentsSettings:
    settings = settings_factory("payments")
    await asyncio.to_thread(
        migrations.upgrade, settings, settings.db_schema, payments_bootstrap.MIGRATIONS
    )
    return settings


@pytest.fixture
async def txn_settings(
    settings_factory: Callable[..., ServiceSettings],
    pay_settings: PaymentsSettings,
    txn_schema: str,
) -> TransactionsSettings:
    settings = settings_factory(
        "transactions",
        db_schema=txn_schema,
        service_token=pay_settings.service_token,
        admin_token=pay_settings.admin_token,
    )
    await asyncio.to_thread(
        migrations.upgrade, settings, settings.db_schema, transactions_main.MIGRATIONS
    )
    return settings


@pytest.fixture
async def mesh(
    pay_settings: PaymentsSettings,
    txn_settings: TransactionsSettings,
    make_engine: Callable[..., Any],
    es256_signer: Any,
    pg_url: str,
) -> AsyncIterator[Mesh]:
    keys = StaticKeySource({es256_signer.kid: es256_signer.public_key})
    late_ledger = LateBoundPaymentLedger()
    txn_app = await transactions_main.build(
        txn_settings, key_source=keys, payment_ledger=late_ledger
    )
    txn_server = create_server([txn_app.interceptor])
    txn_app.register(txn_server)
    txn_port = txn_server.add_insecure_port("127.0.0.1:0")
    await txn_server.start()

    settings = dataclasses.replace(pay_settings, transactions_target=f"127.0.0.1:{txn_port}")
    pay_engine = make_engine(settings.db_schema)
    pay_app = await payments_bootstrap.build(settings, key_source=keys)
    pay_server = create_server([pay_app.interceptor])
    pay_app.register(pay_server)
    pay_port = pay_server.add_insecure_port("127.0.0.1:0")
    await pay_server.start()

    ledger_channel = service_channel(f"127.0.0.1:{pay_port}", service_token=settings.service_token)
    late_ledger.target = GrpcPaymentLedger(ledger_channel)
    pay_channel = grpc.aio.insecure_channel(f"127.0.0.1:{pay_port}")
    txn_channel = grpc.aio.insecure_channel(f"127.0.0.1:{txn_port}")
    dispatcher = asyncio.create_task(pay_app.dispatcher.run())
    mesh = Mesh(
        payments_app=pay_app,
        transactions_app=txn_app,
        payments_engine=pay_engine,
        transactions_engine=make_engine(txn_settings.db_schema),
        payments_schema=settings.db_schema,
        transactions_schema=txn_settings.db_schema,
        signer=es256_signer,
        payments=payments_pb2_grpc.PaymentServiceStub(pay_channel),
        payment_ledger=payments_pb2_grpc.PaymentLedgerServiceStub(pay_channel),
        transactions=transactions_pb2_grpc.TransactionServiceStub(txn_channel),
        transactions_port=txn_port,
        transactions_server=txn_server,
        channels=[pay_channel, txn_channel, ledger_channel],
    )
    try:
        yield mesh
    finally:
        dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dispatcher
        await mesh.close()
        await pay_server.stop(None)
        await pay_app.close()
        await txn_app.close()
        findings = await asyncio.to_thread(scan_schema_for_secrets, pg_url, settings.db_schema)
        CARD_DATA.schemas_scanned += 1
        CARD_DATA.findings.extend(findings)
        assert not findings, f"card or account data stored: {findings}"


@dataclass
class CardDataReport:
    """The session's card-data evidence: payments schema scans and raw log records."""

    scans: CardDataScan
    logs: LogCapture
    secrets: tuple[str, ...]


@pytest.fixture(scope="session")
def card_data_report() -> CardDataReport:
    return CardDataReport(scans=CARD_DATA, logs=LOGS, secrets=SECRETS)


# -- the unit of work on PostgreSQL and in memory ---------------------------------------------


@dataclass
class Backend:
    """The payment service's units of work and outbox queue on one store, and what the
    tests read of that store directly: on PostgreSQL (a fresh migrated schema) or in
    memory (`pi.payments.adapters.memory`), for contract tests run on both."""

    name: str
    units: Any  # pi.payments.app.ports.UnitsOfWork
    outbox: Any  # pi.payments.app.ports.Outbox
    violation: tuple[type[Exception], ...]
    engine: AsyncEngine | None = None
    state: Any = None  # the MemoryState

    async def ref(self, transaction_id: str) -> Any:
        """The ref row (attributes as the table's columns), or None."""
        if self.engine is None:
            stored = self.state.refs.get(transaction_id)
            if stored is None:
                return None
            return _Row(
                **dataclasses.asdict(stored.ref),
                movement_count=stored.movement_count,
                create_time=stored.create_time,
                update_time=stored.update_time,
            )
        table = payments_metadata.tables["transaction_refs"]
        async with self.engine.connect() as conn:
            return (
                await conn.execute(sa.select(table).where(table.c.transaction_id == transaction_id))
            ).first()

    async def count(self, table: str, **where: Any) -> int:
        """Rows of `table` ("payments", "outbox", ...) whose columns equal `where`."""
        if self.engine is None:
            rows = {
                "transaction_refs": [s.ref for s in self.state.refs.values()],
                "payments": list(self.state.payments.values()),
                "refunds": list(self.state.refunds.values()),
                "outbox": list(self.state.outbox.values()),
                "idempotency_keys": list(self.state.keys.values()),
            }[table]
            return sum(all(getattr(r, k) == v for k, v in where.items()) for r in rows)
        t = payments_metadata.tables[table]
        query = sa.select(sa.func.count()).select_from(t)
        query = query.where(*(t.c[k] == v for k, v in where.items()))
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def outbox_rows(self) -> list[Any]:
        """Every outbox row in seq order: id, transaction_id, seq, kind, attempts,
        last_error, next_attempt_time, delivered_time."""
        if self.engine is None:
            return [
                _Row(
                    id=r.id,
                    transaction_id=r.transaction_id,
                    seq=r.seq,
                    kind=r.movement.kind.value,
                    attempts=r.attempts,
                    last_error=r.last_error,
                    next_attempt_time=r.next_attempt_time,
                    delivered_time=r.delivered_time,
                )
                for r in sorted(self.state.outbox.values(), key=lambda r: r.seq)
            ]
        table = payments_metadata.tables["outbox"]
        async with self.engine.connect() as conn:
            return list((await conn.execute(sa.select(table).order_by(table.c.seq))).all())


class _Row:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


@pytest.fixture
def make_backend(
    settings_factory: Callable[..., ServiceSettings],
    make_engine: Callable[..., AsyncEngine],
    make_database: Callable[..., Any],
) -> Callable[[str], Any]:
    """`await make_backend("postgresql" | "memory")`: a fresh `Backend`."""
    from pi.payments.adapters.memory import IntegrityViolation, MemoryOutbox, MemoryUnits
    from pi.payments.adapters.postgres.outbox import PostgresOutbox
    from pi.payments.adapters.postgres.uow import PostgresUnits
    from pi.platform.db.errors import DatabaseError

    async def make(name: str) -> Backend:
        if name == "memory":
            units = MemoryUnits()
            outbox = MemoryOutbox(units.state, units.lock)
            return Backend(name, units, outbox, (IntegrityViolation,), state=units.state)
        settings = settings_factory("payments")
        await asyncio.to_thread(
            migrations.upgrade, settings, settings.db_schema, payments_bootstrap.MIGRATIONS
        )
        database = await make_database(settings.db_schema)
        pg_units = PostgresUnits(database)
        return Backend(
            name,
            pg_units,
            PostgresOutbox(database, pg_units.idempotency),
            (DatabaseError,),
            engine=make_engine(settings.db_schema),
        )

    return make


@pytest.fixture(params=["postgresql", "memory"])
async def backend(request: pytest.FixtureRequest, make_backend: Callable[[str], Any]) -> Backend:
    """The payment store on PostgreSQL, then in memory: for contract tests."""
    return cast(Backend, await make_backend(request.param))
