"""CreateTransaction on the in-memory store: validation, idempotency, the facts it hands on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from pi.platform.kernel.errors import (
    AlreadyExists,
    DomainError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from pi.platform.kernel.money import INT64_MAX, MAX_AMOUNT
from pi.platform.kernel.principal import Principal
from pi.transactions.adapters.memory import MemoryUnits
from pi.transactions.app.create_transaction import CreateTransaction
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.domain import TransactionStatus
from tests.unit.transactions.fakes import Clock, RecordingFacts

ALICE = Principal.merchant("mer_alice")
BOB = Principal.merchant("mer_bob")
SERVICE = Principal.service()

Rows = Callable[[str], int]


def violation_fields(error: DomainError) -> list[str]:
    assert isinstance(error, InvalidArgument)
    return [v.field for v in error.violations]


async def create(service: TransactionUseCases, principal: Principal = ALICE, **fields: Any) -> Any:
    values: dict[str, Any] = {
        "amount": 10_000,
        "currency": "USD",
        "description": "Order #1",
        "metadata": {"order": "1"},
    }
    values.update(fields)
    return await service.create_transaction(principal, **values)


async def test_create_transaction_starts_pending_and_can_be_read_back(
    service: TransactionUseCases, rows: Rows
) -> None:
    created = await create(service, metadata={"order": "1", "emoji": "🧾"})
    assert created.id.startswith("txn_")
    assert created.merchant_id == "mer_alice"
    assert created.status is TransactionStatus.PENDING
    assert (created.authorized_amount, created.captured_amount, created.refunded_amount) == (
        0,
        0,
        0,
    )
    assert created.create_time == created.update_time
    fetched = await service.get_transaction(ALICE, created.id)
    assert fetched == created
    assert dict(fetched.metadata) == {"order": "1", "emoji": "🧾"}
    assert rows("transactions") == 1


async def test_only_merchants_create(service: TransactionUseCases, rows: Rows) -> None:
    for principal in (SERVICE, Principal.admin()):
        with pytest.raises(PermissionDenied):
            await create(service, principal)
    assert rows("transactions") == 0


BAD_INPUT = [
    pytest.param({"amount": 0}, ["transaction.amount"], id="zero amount"),
    pytest.param({"amount": -1}, ["transaction.amount"], id="negative amount"),
    pytest.param({"amount": MAX_AMOUNT + 1}, ["transaction.amount"], id="above max amount"),
    pytest.param({"amount": INT64_MAX}, ["transaction.amount"], id="int64 max amount"),
    pytest.param({"currency": ""}, ["transaction.currency"], id="missing currency"),
    pytest.param({"currency": "usd"}, ["transaction.currency"], id="lowercase currency"),
    pytest.param({"currency": "ABC"}, ["transaction.currency"], id="unknown currency"),
    pytest.param({"currency": "US"}, ["transaction.currency"], id="short currency"),
    pytest.param({"currency": "XAU"}, ["transaction.currency"], id="not money currency"),
    pytest.param(
        {"metadata": {f"k{i}": "v" for i in range(51)}},
        ["transaction.metadata"],
        id="too many metadata keys",
    ),
    pytest.param({"metadata": {"k" * 41: "v"}}, ["transaction.metadata"], id="long key"),
    pytest.param({"metadata": {"": "v"}}, ["transaction.metadata"], id="empty key"),
    pytest.param({"metadata": {"k": "v" * 501}}, ["transaction.metadata"], id="long value"),
    pytest.param({"metadata": {"k": "a\x00b"}}, ["transaction.metadata"], id="NUL in value"),
    pytest.param({"metadata": {"k\n": "v"}}, ["transaction.metadata"], id="newline in key"),
    pytest.param({"metadata": {"k": "\x1b[31m"}}, ["transaction.metadata"], id="escape in value"),
    pytest.param({"description": "d" * 1001}, ["transaction.description"], id="long description"),
    pytest.param({"description": "a\x07b"}, ["transaction.description"], id="bell in description"),
]


@pytest.mark.parametrize(("fields", "expected"), BAD_INPUT)
async def test_bad_input_is_invalid_argument_with_field_violations_and_writes_nothing(
    service: TransactionUseCases,
    rows: Rows,
    facts: RecordingFacts,
    fields: dict[str, Any],
    expected: list[str],
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await create(service, idempotency_key="key-1", fingerprint="fp", **fields)
    assert sorted(set(violation_fields(caught.value))) == expected
    assert rows("transactions") == 0
    assert rows("idempotency_keys") == 0
    assert facts.published == []


async def test_every_invalid_field_is_reported_at_once(
    service: TransactionUseCases, rows: Rows
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await create(
            service,
            amount=-5,
            currency="usd",
            description="\x00",
            metadata={f"k{i}": "v" * 501 for i in range(51)},
        )
    fields = violation_fields(caught.value)
    assert set(fields) == {
        "transaction.amount",
        "transaction.currency",
        "transaction.description",
        "transaction.metadata",
    }
    assert fields.count("transaction.metadata") > 1  # the key count and each long value
    assert caught.value.message == "The transaction has invalid fields."
    assert rows("transactions") == 0


async def test_limits_themselves_are_accepted(service: TransactionUseCases) -> None:
    created = await create(
        service,
        amount=MAX_AMOUNT,
        currency="KWD",
        description="d" * 1000,
        metadata={f"{i:02d}" + "k" * 38: "v" * 500 for i in range(50)},
    )
    assert created.amount == MAX_AMOUNT
    assert len(created.metadata) == 50


# Idempotent create ------------------------------------------------------------------------


async def test_same_key_and_request_replays_the_first_transaction(
    service: TransactionUseCases, rows: Rows, clock: Clock
) -> None:
    first = await create(service, idempotency_key="order-1", fingerprint="fp-a")
    clock.advance(timedelta(minutes=5))
    again = await create(service, idempotency_key="order-1", fingerprint="fp-a")
    assert again == first
    assert rows("transactions") == 1
    assert rows("idempotency_keys") == 1


async def test_same_key_with_another_request_is_refused(
    service: TransactionUseCases, rows: Rows
) -> None:
    await create(service, idempotency_key="order-1", fingerprint="fp-a")
    with pytest.raises(AlreadyExists) as caught:
        await create(service, amount=1, idempotency_key="order-1", fingerprint="fp-b")
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert caught.value.metadata == {"idempotency_key": "order-1"}
    assert rows("transactions") == 1


async def test_idempotency_keys_are_scoped_per_merchant(
    service: TransactionUseCases, rows: Rows
) -> None:
    a = await create(service, ALICE, idempotency_key="k", fingerprint="fp")
    b = await create(service, BOB, idempotency_key="k", fingerprint="fp")
    assert a.id != b.id
    assert rows("transactions") == 2
    with pytest.raises(NotFound):
        await service.get_transaction(BOB, a.id)


async def test_without_a_key_every_call_creates(service: TransactionUseCases, rows: Rows) -> None:
    first, second = await create(service), await create(service)
    assert first.id != second.id
    assert (rows("transactions"), rows("idempotency_keys")) == (2, 0)


async def test_concurrent_duplicates_create_exactly_one_transaction(
    service: TransactionUseCases, rows: Rows
) -> None:
    results = await asyncio.gather(
        *(create(service, idempotency_key="burst", fingerprint="fp") for _ in range(20))
    )
    assert len({r.id for r in results}) == 1
    assert rows("transactions") == 1


# The facts handed to the payment service ---------------------------------------------------


async def test_a_new_transaction_is_published_once_and_a_replay_is_not(
    service: TransactionUseCases, facts: RecordingFacts
) -> None:
    first = await create(service, idempotency_key="k1", fingerprint="fp")
    await create(service, idempotency_key="k1", fingerprint="fp")
    second = await create(service)
    assert facts.published == [first, second]


def _create_use_case(units: MemoryUnits, clock: Clock, facts: RecordingFacts, wait: float) -> Any:
    return CreateTransaction(units, clock, facts=facts, facts_wait=wait)


async def test_a_create_waits_for_its_facts_to_be_acknowledged(
    units: MemoryUnits, clock: Clock
) -> None:
    facts = RecordingFacts()
    create_transaction = _create_use_case(units, clock, facts, wait=5.0)
    pending = asyncio.create_task(
        create_transaction(ALICE, amount=5, currency="USD", description="", metadata={})
    )
    while not facts.futures:
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert not pending.done()  # committed, waiting for the acknowledgement
    facts.acknowledge()
    async with asyncio.timeout(1):
        made = await pending
    assert facts.published == [made]


async def test_a_create_waits_for_its_facts_no_longer_than_the_cap(
    units: MemoryUnits, clock: Clock
) -> None:
    facts = RecordingFacts()
    create_transaction = _create_use_case(units, clock, facts, wait=0.02)
    async with asyncio.timeout(1):
        made = await create_transaction(
            ALICE, amount=5, currency="USD", description="", metadata={}
        )
    assert facts.published == [made]
    assert facts.futures[0].cancelled()  # given up by the waiter, not by the publisher


async def test_a_cap_of_zero_or_no_future_never_waits(units: MemoryUnits, clock: Clock) -> None:
    for facts, wait in ((RecordingFacts(), 0.0), (RecordingFacts(waits=False), 5.0)):
        create_transaction = _create_use_case(units, clock, facts, wait=wait)
        async with asyncio.timeout(1):
            await create_transaction(ALICE, amount=5, currency="USD", description="", metadata={})
        assert len(facts.published) == 1


def test_a_negative_cap_is_refused(units: MemoryUnits, clock: Clock) -> None:
    with pytest.raises(ValueError, match="facts_wait"):
        CreateTransaction(units, clock, facts_wait=-1)
