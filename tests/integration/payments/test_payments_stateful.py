"""A hypothesis state machine over the payment use cases on real PostgreSQL.

Random sequences of create (every sandbox outcome, manual or automatic capture),
capture, cancel, refund, reconcile and transaction cancellation run against the real
payment store and the real transaction service's use cases and store (in-process, no
gRPC). After every step:

- every payment: 0 <= refunded <= captured <= amount;
- the ref: held + captured <= amount, and held / captured / refunded are the sums over
  the transaction's payments;
- after draining the outbox into the transaction store, the transaction's authorized /
  captured / refunded amounts equal the sums over its payments, and it is CANCELLED
  exactly when the ref is closed.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from pi.payments import bootstrap as payments_bootstrap
from pi.payments.adapters.postgres.outbox import PostgresOutbox
from pi.payments.adapters.postgres.tables import payments, transaction_refs
from pi.payments.adapters.postgres.uow import PostgresUnits
from pi.payments.adapters.processor import SandboxConnector
from pi.payments.app.create_payment import CreatePaymentInput
from pi.payments.app.ports import LedgerError, MovementOutcome, TransactionFacts
from pi.payments.app.use_cases import PaymentUseCases, payment_use_cases
from pi.payments.domain import CaptureMode, CardInput, PaymentMethodType, PaymentStatus
from pi.payments.entrypoints.workers import OutboxDispatcher, Reconciler
from pi.payments.settings import PaymentsSettings
from pi.platform.config import ServiceSettings
from pi.platform.db import migrations
from pi.platform.db.database import Database, open_database_for
from pi.platform.kernel.errors import FailedPrecondition
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.principal import Principal
from pi.platform.kernel.units import Mode
from pi.platform.ledger import Movement
from pi.transactions import bootstrap as transactions_main
from pi.transactions.adapters.postgres.uow import PostgresUnits as TransactionUnits
from pi.transactions.app.ports import ClosedTransaction
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.domain import TransactionStatus
from pi.transactions.settings import TransactionsSettings
from tests.support.engines import create_engine_for

T = TypeVar("T")
MERCHANT = Principal.merchant("mer_stateful")
SERVICE = Principal.service()
APPROVED = "4242424242424242"
CARDS = (
    APPROVED,
    APPROVED,
    APPROVED,
    "5555555555554444",  # approved (Mastercard)
    "4000000000000002",  # declined
    "4000000000009995",  # insufficient funds
    "4000000000000119",  # processor timeout
)
EXPIRY_YEAR = datetime.now(UTC).year + 2


class _Ledger:
    """The payment service's `TransactionLedger`, calling the transaction use cases."""

    def __init__(self) -> None:
        self.transactions: TransactionUseCases | None = None

    async def lookup_transaction(self, merchant_id: str, transaction_id: str) -> TransactionFacts:
        assert self.transactions is not None
        txn = await self.transactions.lookup_transaction(SERVICE, merchant_id, transaction_id)
        return TransactionFacts(
            transaction_id=txn.id,
            merchant_id=txn.merchant_id,
            amount=txn.amount,
            currency=txn.currency,
            cancelled=txn.status is TransactionStatus.CANCELLED,
        )

    async def apply_movements(self, movements: Sequence[Movement]) -> list[MovementOutcome]:
        assert self.transactions is not None
        results = await self.transactions.apply_movements(SERVICE, movements)
        return [
            MovementOutcome(
                r.movement_id,
                None if r.error is None else LedgerError(type(r.error).__name__, str(r.error)),
            )
            for r in results
        ]


class _PaymentLedger:
    """The transaction service's `PaymentLedger`, calling the payment use cases."""

    def __init__(self) -> None:
        self.payments: PaymentUseCases | None = None

    async def close_transaction(
        self, *, merchant_id: str, transaction_id: str, amount: int, currency: str
    ) -> ClosedTransaction:
        assert self.payments is not None
        result = await self.payments.close_transaction(
            SERVICE,
            merchant_id=merchant_id,
            transaction_id=transaction_id,
            amount=amount,
            currency=currency,
        )
        return ClosedTransaction(result.movement_id, result.voided_payment_ids)


@dataclass
class _World:
    loop: asyncio.AbstractEventLoop
    databases: list[Database]
    payment_engine: AsyncEngine
    payments: PaymentUseCases
    transactions: TransactionUseCases
    transaction_units: TransactionUnits
    dispatcher: OutboxDispatcher
    reconciler: Reconciler

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)


def _build_world(pay: PaymentsSettings, txn: TransactionsSettings) -> _World:
    loop = asyncio.new_event_loop()
    pay_engine = create_engine_for(pay.database_url, pay.db_schema)
    pay_database = loop.run_until_complete(
        open_database_for(pay.database_url, pay.db_schema, pool_size=4)
    )
    txn_database = loop.run_until_complete(
        open_database_for(txn.database_url, txn.db_schema, pool_size=4)
    )
    ledger = _Ledger()
    payment_ledger = _PaymentLedger()
    units = PostgresUnits(pay_database)
    payment_service = payment_use_cases(
        units,
        SandboxConnector(),
        ledger,
        card_key=secrets.token_bytes(32),
        request_key=secrets.token_bytes(32),
        page_tokens=PageToken(secrets.token_bytes(32)),
    )
    transaction_units = TransactionUnits(txn_database)
    transaction_service = TransactionUseCases.wire(
        transaction_units, payment_ledger, PageToken(secrets.token_bytes(32))
    )
    ledger.transactions = transaction_service
    payment_ledger.payments = payment_service
    return _World(
        loop=loop,
        databases=[pay_database, txn_database],
        payment_engine=pay_engine,
        payments=payment_service,
        transactions=transaction_service,
        transaction_units=transaction_units,
        dispatcher=OutboxDispatcher(PostgresOutbox(pay_database, units.idempotency), ledger),
        reconciler=Reconciler(payment_service.reconcile_payment),
    )


class PaymentsMachine(RuleBasedStateMachine):
    world: ClassVar[_World]

    payment_ids = Bundle("payment_ids")

    def __init__(self) -> None:
        super().__init__()
        self.transaction_id = ""

    @initialize(
        target=payment_ids,
        amount=st.integers(min_value=300, max_value=2000),
        first=st.integers(min_value=1, max_value=300),
        manual=st.booleans(),
    )
    def create_transaction(self, amount: int, first: int, manual: bool) -> Any:
        txn = self.world.run(
            self.world.transactions.create_transaction(
                MERCHANT, amount=amount, currency="USD", description="", metadata={}
            )
        )
        self.transaction_id = txn.id
        return self.create_payment(APPROVED, first, manual, None)

    @rule(
        target=payment_ids,
        number=st.sampled_from(CARDS),
        amount=st.one_of(st.just(0), st.integers(min_value=1, max_value=700)),
        manual=st.booleans(),
        key=st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
    )
    def create_payment(self, number: str, amount: int, manual: bool, key: str | None) -> Any:
        request = CreatePaymentInput(
            transaction_id=self.transaction_id,
            amount=amount,
            method=PaymentMethodType.CARD,
            capture_mode=CaptureMode.MANUAL if manual else CaptureMode.AUTOMATIC,
            card=CardInput(number=number, exp_month=6, exp_year=EXPIRY_YEAR, cvc="321"),
        )
        # Idempotency keys are per merchant: make them per machine run.
        scoped_key = None if key is None else f"{self.transaction_id}:{key}"
        try:
            payment = self.world.run(
                self.world.payments.create_payment(MERCHANT, request, idempotency_key=scoped_key)
            )
        except FailedPrecondition as error:
            assert error.reason in {"AMOUNT_EXCEEDS_REMAINING", "TRANSACTION_CLOSED"}, error
            return multiple()
        except Exception as error:
            assert getattr(error, "reason", None) == "IDEMPOTENCY_KEY_REUSED", error
            return multiple()
        return payment.id

    @rule(payment_id=payment_ids, amount=st.integers(min_value=0, max_value=700))
    def capture(self, payment_id: str, amount: int) -> None:
        try:
            self.world.run(self.world.payments.capture_payment(MERCHANT, payment_id, amount=amount))
        except FailedPrecondition as error:
            assert error.reason in {
                "PAYMENT_NOT_CAPTURABLE",
                "AMOUNT_EXCEEDS_AUTHORIZED",
                "TRANSACTION_CLOSED",
            }, error

    @rule(payment_id=payment_ids)
    def cancel(self, payment_id: str) -> None:
        try:
            self.world.run(self.world.payments.cancel_payment(MERCHANT, payment_id))
        except FailedPrecondition as error:
            assert error.reason == "PAYMENT_NOT_CANCELLABLE", error

    @rule(payment_id=payment_ids, amount=st.integers(min_value=0, max_value=400))
    def refund(self, payment_id: str, amount: int) -> None:
        try:
            self.world.run(self.world.payments.refund_payment(MERCHANT, payment_id, amount=amount))
        except FailedPrecondition as error:
            assert error.reason in {"PAYMENT_NOT_REFUNDABLE", "AMOUNT_EXCEEDS_REFUNDABLE"}, error

    @rule()
    def reconcile(self) -> None:
        self.world.run(self.world.reconciler.run_once(grace=timedelta(0)))

    @rule(attempt=st.integers(min_value=0, max_value=4))
    def cancel_transaction(self, attempt: int) -> None:
        if attempt != 0:  # rare: a cancelled transaction takes no more payments
            return
        try:
            self.world.run(
                self.world.transactions.cancel_transaction(MERCHANT, self.transaction_id)
            )
        except FailedPrecondition as error:
            assert error.reason in {"TRANSACTION_CAPTURED", "PAYMENT_PROCESSING"}, error

    @invariant()
    def money_adds_up(self) -> None:
        if not self.transaction_id:
            return
        self.world.run(self._check())

    async def _check(self) -> None:
        async with self.world.payment_engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(payments).where(payments.c.transaction_id == self.transaction_id)
                )
            ).all()
            ref = (
                await conn.execute(
                    sa.select(transaction_refs).where(
                        transaction_refs.c.transaction_id == self.transaction_id
                    )
                )
            ).first()
        if ref is None:
            assert rows == []
            return
        held = captured = refunded = authorized = 0
        for row in rows:
            assert 0 <= row.refunded_amount <= row.captured_amount <= row.amount
            assert row.currency == ref.currency
            if row.status in (PaymentStatus.PROCESSING, PaymentStatus.REQUIRES_CAPTURE):
                held += row.amount
            if row.status == PaymentStatus.REQUIRES_CAPTURE:
                authorized += row.amount
            captured += row.captured_amount
            refunded += row.refunded_amount
        authorized += captured
        assert ref.held_amount + ref.captured_amount <= ref.amount
        assert (ref.held_amount, ref.captured_amount, ref.refunded_amount) == (
            held,
            captured,
            refunded,
        )
        await self.world.dispatcher.drain(timeout=10)
        async with self.world.transaction_units(Mode.READ) as unit:
            txn = await unit.transactions.get(MERCHANT.merchant_id or "", self.transaction_id)
        assert txn is not None
        assert (txn.authorized_amount, txn.captured_amount, txn.refunded_amount) == (
            authorized,
            captured,
            refunded,
        )
        assert (txn.status is TransactionStatus.CANCELLED) == bool(ref.closed)


def test_payment_sequences_keep_every_ledger_invariant(
    settings_factory: Callable[..., ServiceSettings],
    _pg_admin: Callable[[str], None],
) -> None:
    pay = settings_factory("payments")
    txn_schema = f"t_{uuid.uuid4().hex[:16]}"
    _pg_admin(f'CREATE SCHEMA "{txn_schema}"')
    try:
        txn = settings_factory("transactions", db_schema=txn_schema)
        migrations.upgrade(pay, pay.db_schema, payments_bootstrap.MIGRATIONS)
        migrations.upgrade(txn, txn.db_schema, transactions_main.MIGRATIONS)
        world = _build_world(pay, txn)
        PaymentsMachine.world = world
        try:
            run_state_machine_as_test(
                PaymentsMachine,
                settings=settings(
                    max_examples=25,
                    stateful_step_count=20,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow],
                ),
            )
        finally:
            for database in world.databases:
                world.run(database.close())
            world.run(world.payment_engine.dispose())
            world.loop.close()
    finally:
        _pg_admin(f'DROP SCHEMA IF EXISTS "{txn_schema}" CASCADE')
