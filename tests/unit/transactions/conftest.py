"""Fixtures of the transaction service's unit tier: the use cases on the in-memory unit of
work (`units`), a fake payment service (`payments`) and an adjustable `clock`; no
database, no network. `rows(name)` counts what the store holds.

Tests import nothing from here (pytest runs in importlib mode): they take fixtures.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest

from pi.platform.kernel.pages import PageToken
from pi.transactions.adapters.memory import MemoryUnits
from pi.transactions.app.use_cases import TransactionUseCases
from tests.unit.transactions.fakes import Clock, FakePaymentLedger, RecordingFacts


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def payments() -> FakePaymentLedger:
    return FakePaymentLedger()


@pytest.fixture
def facts() -> RecordingFacts:
    return RecordingFacts(waits=False)


@pytest.fixture
def units(clock: Clock) -> MemoryUnits:
    return MemoryUnits(clock=clock)


@pytest.fixture
def page_tokens() -> PageToken:
    return PageToken(secrets.token_bytes(32))


@pytest.fixture
def service(
    units: MemoryUnits,
    payments: FakePaymentLedger,
    page_tokens: PageToken,
    clock: Clock,
    facts: RecordingFacts,
) -> TransactionUseCases:
    return TransactionUseCases.wire(units, payments, page_tokens, clock=clock, facts=facts)


@pytest.fixture
def rows(units: MemoryUnits) -> Callable[[str], int]:
    """`rows("transactions")`, `rows("applied_movements")`, `rows("idempotency_keys")`."""
    tables = {
        "transactions": "transactions",
        "applied_movements": "movements",
        "idempotency_keys": "keys",
    }

    def count(table: str) -> int:
        return len(getattr(units.state, tables[table]))

    return count
