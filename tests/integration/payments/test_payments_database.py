"""The money rules as database rules: constraints and the status trigger refuse bad rows
even when the code is bypassed. Plus: the migration matches the tables, and the use
cases run the same on the PostgreSQL and the in-memory unit of work."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import DBAPIError as DatabaseError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from pi.payments import bootstrap as payments_bootstrap
from pi.payments.adapters.postgres.tables import metadata, payments, transaction_refs
from pi.payments.adapters.processor import SandboxConnector
from pi.payments.app.create_payment import CreatePaymentInput
from pi.payments.app.ports import MovementOutcome, TransactionFacts
from pi.payments.app.use_cases import payment_use_cases
from pi.payments.domain import CardInput, PaymentMethodType, PaymentStatus
from pi.payments.settings import PaymentsSettings
from pi.platform.db import migrations
from pi.platform.kernel.errors import NotFound
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.principal import Principal
from pi.platform.ledger import Movement

NOW = datetime.now(UTC)


@pytest.fixture
async def engine(
    settings_factory: Callable[..., PaymentsSettings], make_engine: Callable[..., AsyncEngine]
) -> AsyncEngine:
    settings = settings_factory("payments")
    await asyncio.to_thread(
        migrations.upgrade, settings, settings.db_schema, payments_bootstrap.MIGRATIONS
    )
    engine = make_engine(settings.db_schema)
    async with engine.begin() as conn:
        await conn.execute(
            transaction_refs.insert().values(
                transaction_id="txn_1",
                merchant_id="mer_1",
                amount=1000,
                currency="USD",
                closed=False,
                held_amount=0,
                captured_amount=0,
                refunded_amount=0,
                movement_count=0,
                create_time=NOW,
                update_time=NOW,
            )
        )
    return engine


def _payment(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": "pay_1",
        "merchant_id": "mer_1",
        "transaction_id": "txn_1",
        "amount": 500,
        "currency": "USD",
        "method": "CARD",
        "capture_mode": "MANUAL",
        "status": "REQUIRES_CAPTURE",
        "failure_reason": None,
        "captured_amount": 0,
        "refunded_amount": 0,
        "card_brand": "VISA",
        "card_last4": "4242",
        "card_fingerprint": "f" * 32,
        "card_exp_month": 12,
        "card_exp_year": 2030,
        "create_time": NOW,
        "update_time": NOW,
    }
    values.update(overrides)
    return values


async def _refused(engine: AsyncEngine, statement: Any) -> None:
    with pytest.raises((IntegrityError, DatabaseError)):
        async with engine.begin() as conn:
            await conn.execute(statement)


async def test_a_payments_currency_must_be_its_transactions(engine: AsyncEngine) -> None:
    await _refused(engine, payments.insert().values(**_payment(currency="EUR")))
    async with engine.begin() as conn:
        await conn.execute(payments.insert().values(**_payment()))


@pytest.mark.parametrize(
    "overrides",
    [
        {"amount": 0},
        {"amount": -5},
        {"status": "SUCCEEDED", "captured_amount": 600},
        {"status": "SUCCEEDED", "captured_amount": 100, "refunded_amount": 101},
        {"status": "SUCCEEDED", "captured_amount": 0},
        {"status": "REQUIRES_CAPTURE", "captured_amount": 10},
        {"status": "FAILED"},
        {"status": "PROCESSING", "failure_reason": "CARD_DECLINED"},
        {"status": "PAID"},
        {"method": "CASH"},
        {"status": "CANCELLED"},
        {"status": "CAPTURING", "capturing_amount": 100},
        {"status": "REQUIRES_CAPTURE", "capturing_amount": 100},
        {"status": "SUCCEEDED", "captured_amount": 100, "refunding_amount": 101},
        {"status": "SUCCEEDED", "captured_amount": 100, "refunding_amount": -1},
    ],
)
async def test_payment_rows_that_break_a_rule_are_refused(
    engine: AsyncEngine, overrides: dict[str, Any]
) -> None:
    await _refused(engine, payments.insert().values(**_payment(**overrides)))


@pytest.mark.parametrize(
    ("start", "change"),
    [
        ({"status": "FAILED", "failure_reason": "CARD_DECLINED"}, {"status": "PROCESSING"}),
        (
            {"status": "FAILED", "failure_reason": "CARD_DECLINED"},
            {"status": "SUCCEEDED", "failure_reason": None, "captured_amount": 500},
        ),
        ({"status": "REQUIRES_CAPTURE"}, {"status": "PROCESSING"}),
        (
            {"status": "SUCCEEDED", "captured_amount": 500},
            {"status": "CANCELLED", "captured_amount": 0},
        ),
        ({"status": "SUCCEEDED", "captured_amount": 500}, {"captured_amount": 400}),
        (
            {"status": "SUCCEEDED", "captured_amount": 500, "refunded_amount": 0},
            {"amount": 900},
        ),
        ({"status": "REQUIRES_CAPTURE"}, {"merchant_id": "mer_2"}),
        # A capture or void is recorded before it is settled: never in one step.
        ({"status": "REQUIRES_CAPTURE"}, {"status": "SUCCEEDED", "captured_amount": 500}),
        ({"status": "REQUIRES_CAPTURE"}, {"status": "CANCELLED"}),
        (
            {"status": "REQUIRES_CAPTURE"},
            {"status": "CAPTURING", "capturing_amount": 501},
        ),
    ],
)
async def test_status_and_identity_changes_outside_the_state_machine_are_refused(
    engine: AsyncEngine, start: dict[str, Any], change: dict[str, Any]
) -> None:
    async with engine.begin() as conn:
        await conn.execute(payments.insert().values(**_payment(**start)))
    await _refused(engine, payments.update().where(payments.c.id == "pay_1").values(**change))


async def test_refunds_never_shrink_and_allowed_transitions_pass(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(payments.insert().values(**_payment(status="PROCESSING")))
        for change in (
            {"status": "REQUIRES_CAPTURE"},
            {"status": "CAPTURING", "capturing_amount": 300},
            {"status": "SUCCEEDED", "captured_amount": 300, "capturing_amount": 0},
            {"refunding_amount": 100},
            {"refunded_amount": 100, "refunding_amount": 0},
            {"refunded_amount": 300},
        ):
            await conn.execute(payments.update().where(payments.c.id == "pay_1").values(**change))
    await _refused(
        engine, payments.update().where(payments.c.id == "pay_1").values(refunded_amount=200)
    )


@pytest.mark.parametrize(
    "values",
    [
        {"held_amount": 600, "captured_amount": 500},
        {"captured_amount": 100, "refunded_amount": 101},
        {"held_amount": -1},
    ],
)
async def test_transaction_ref_budget_is_a_constraint(
    engine: AsyncEngine, values: dict[str, Any]
) -> None:
    await _refused(
        engine,
        transaction_refs.update()
        .where(transaction_refs.c.transaction_id == "txn_1")
        .values(**values),
    )


async def test_the_migration_builds_exactly_the_declared_tables(engine: AsyncEngine) -> None:
    def diff(conn: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(conn)
        return list(compare_metadata(context, metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []


class _Ledger:
    """A transaction service that knows one transaction and records movements."""

    def __init__(self) -> None:
        self.movements: list[Movement] = []

    async def lookup_transaction(self, merchant_id: str, transaction_id: str) -> TransactionFacts:
        if (merchant_id, transaction_id) != ("mer_1", "txn_embedded"):
            raise NotFound("no such transaction", reason="TRANSACTION_NOT_FOUND")
        return TransactionFacts(transaction_id, merchant_id, 1000, "JPY", cancelled=False)

    async def apply_movements(self, movements: Sequence[Movement]) -> list[MovementOutcome]:
        self.movements.extend(movements)
        return [MovementOutcome(movement.id) for movement in movements]


async def test_the_use_cases_run_alike_on_either_unit_of_work(backend: Any) -> None:
    ledger = _Ledger()
    service = payment_use_cases(
        backend.units,
        SandboxConnector(),
        ledger,
        card_key=secrets.token_bytes(32),
        request_key=secrets.token_bytes(32),
        page_tokens=PageToken(secrets.token_bytes(32)),
    )
    merchant = Principal.merchant("mer_1")
    request = CreatePaymentInput(
        transaction_id="txn_embedded",
        amount=400,
        method=PaymentMethodType.CARD,
        card=CardInput(number="4242424242424242", exp_month=1, exp_year=NOW.year + 2, cvc="123"),
    )
    results = await asyncio.gather(
        *(service.create_payment(merchant, request, idempotency_key="same") for _ in range(5))
    )
    assert len({r.id for r in results}) == 1
    assert results[0].status is PaymentStatus.SUCCEEDED
    assert results[0].currency == "JPY"
    refund = await service.refund_payment(merchant, results[0].id, amount=100)
    assert refund.payment.refunded_amount == 100
    page = await service.list_payments(merchant)
    assert [p.id for p in page.payments] == [results[0].id]
    assert [m.kind.value for m in ledger.movements] == []
    outbox_kinds = [row.kind for row in await backend.outbox_rows()]
    assert outbox_kinds == ["AUTHORIZATION", "CAPTURE", "REFUND"]
