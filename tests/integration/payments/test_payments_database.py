"""The money rules as database rules: constraints and the status trigger refuse bad rows
even when the code is bypassed. Plus: the migration matches the tables."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from pi.payments import main as payments_main
from pi.payments.tables import metadata, payments, transaction_refs
from pi.platform.config import Settings
from pi.platform.db import migrations

NOW = datetime.now(UTC)


@pytest.fixture
async def engine(
    settings_factory: Callable[..., Settings], make_engine: Callable[..., AsyncEngine]
) -> AsyncEngine:
    settings = settings_factory("payments")
    await asyncio.to_thread(
        migrations.upgrade, settings, settings.db_schema, payments_main.MIGRATIONS
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
    with pytest.raises((IntegrityError, DBAPIError)):
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
            {"status": "SUCCEEDED", "captured_amount": 300},
            {"refunded_amount": 100},
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
