"""Transaction use cases on real PostgreSQL, with a fake payment ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pi.platform.kernel.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from pi.platform.kernel.money import INT64_MAX, MAX_AMOUNT
from pi.platform.kernel.principal import Principal
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.domain import Movement, MovementKind, TransactionStatus
from tests.support.round_trips import count_round_trips

ALICE = Principal.merchant("mer_alice")
BOB = Principal.merchant("mer_bob")
SERVICE = Principal.service()

Count = Callable[..., Awaitable[int]]


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


def movement(
    transaction: Any,
    kind: MovementKind,
    *,
    id: str,
    authorized: int = 0,
    captured: int = 0,
    refunded: int = 0,
    merchant_id: str | None = None,
) -> Movement:
    return Movement(
        id=id,
        merchant_id=transaction.merchant_id if merchant_id is None else merchant_id,
        transaction_id=transaction.id,
        payment_id="pay_test",
        kind=kind,
        authorized_delta=authorized,
        captured_delta=captured,
        refunded_delta=refunded,
        occur_time=datetime.now(UTC),
    )


# Create and get ---------------------------------------------------------------------------


async def test_create_transaction_starts_pending_and_can_be_read_back(
    service: TransactionUseCases, count_rows: Count
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
    fetched = await service.get_transaction(ALICE, created.id)
    assert fetched == created
    assert dict(fetched.metadata) == {"order": "1", "emoji": "🧾"}
    assert await count_rows("transactions") == 1


async def test_another_merchants_transaction_is_not_found(service: TransactionUseCases) -> None:
    created = await create(service)
    with pytest.raises(NotFound) as caught:
        await service.get_transaction(BOB, created.id)
    assert caught.value.reason == "TRANSACTION_NOT_FOUND"
    with pytest.raises(NotFound) as unknown:
        await service.get_transaction(ALICE, "txn_01JD0000000000000000000000")
    assert unknown.value.reason == "TRANSACTION_NOT_FOUND"
    # Same answer for a malformed id: no existence oracle, no database work.
    with pytest.raises(NotFound):
        await service.get_transaction(ALICE, "x" * 500)
    with pytest.raises(InvalidArgument):
        await service.get_transaction(ALICE, "")


async def test_only_merchants_use_the_merchant_operations(service: TransactionUseCases) -> None:
    for principal in (SERVICE, Principal.admin()):
        with pytest.raises(PermissionDenied):
            await create(service, principal)
        with pytest.raises(PermissionDenied):
            await service.list_transactions(principal)


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
    count_rows: Count,
    fields: dict[str, Any],
    expected: list[str],
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await create(service, idempotency_key="key-1", fingerprint="fp", **fields)
    assert sorted(set(violation_fields(caught.value))) == expected
    assert await count_rows("transactions") == 0
    assert await count_rows("idempotency_keys") == 0


async def test_every_invalid_field_is_reported_at_once(
    service: TransactionUseCases, count_rows: Count
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
    assert await count_rows("transactions") == 0


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
    service: TransactionUseCases, count_rows: Count, clock: Any
) -> None:
    first = await create(service, idempotency_key="order-1", fingerprint="fp-a")
    clock.advance(timedelta(minutes=5))
    again = await create(service, idempotency_key="order-1", fingerprint="fp-a")
    assert again == first
    assert await count_rows("transactions") == 1


async def test_create_is_two_round_trips_and_a_replay_still_replays(
    service: TransactionUseCases, count_rows: Count
) -> None:
    for attempt in range(6):  # prepared on the first run: two after too
        with count_round_trips() as trips:
            first = await create(service, idempotency_key=f"order-{attempt}", fingerprint="fp")
        assert trips.count == 2  # BEGIN + claim + insert, then COMMIT
    # A replay finds the key taken: rolled back, then claimed the ordinary way.
    assert await create(service, idempotency_key="order-5", fingerprint="fp") == first
    with pytest.raises(AlreadyExists):
        await create(service, idempotency_key="order-5", fingerprint="other")
    assert await count_rows("transactions") == 6


async def test_same_key_with_another_request_is_refused(
    service: TransactionUseCases, count_rows: Count
) -> None:
    await create(service, idempotency_key="order-1", fingerprint="fp-a")
    with pytest.raises(AlreadyExists) as caught:
        await create(service, amount=1, idempotency_key="order-1", fingerprint="fp-b")
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await count_rows("transactions") == 1


async def test_idempotency_keys_are_scoped_per_merchant(
    service: TransactionUseCases, count_rows: Count
) -> None:
    a = await create(service, ALICE, idempotency_key="k", fingerprint="fp")
    b = await create(service, BOB, idempotency_key="k", fingerprint="fp")
    assert a.id != b.id
    assert await count_rows("transactions") == 2


async def test_concurrent_duplicates_create_exactly_one_transaction(
    service: TransactionUseCases, count_rows: Count
) -> None:
    results = await asyncio.gather(
        *(create(service, idempotency_key="burst", fingerprint="fp") for _ in range(50))
    )
    assert len({r.id for r in results}) == 1
    assert await count_rows("transactions") == 1


# List -------------------------------------------------------------------------------------


async def list_all(
    service: TransactionUseCases, principal: Principal = ALICE, **filters: Any
) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await service.list_transactions(principal, page_token=token, **filters)
        ids += [t.id for t in page.transactions]
        token = page.next_page_token
        if not token:
            return ids


async def test_list_is_newest_first_with_default_and_maximum_page_sizes(
    service: TransactionUseCases, clock: Any
) -> None:
    created = []
    for _ in range(105):
        created.append((await create(service)).id)
        clock.advance(timedelta(milliseconds=1))
    await create(service, BOB)
    newest_first = list(reversed(created))

    page = await service.list_transactions(ALICE)
    assert [t.id for t in page.transactions] == newest_first[:20]
    assert page.next_page_token

    big = await service.list_transactions(ALICE, page_size=1000)
    assert [t.id for t in big.transactions] == newest_first[:100]
    rest = await service.list_transactions(ALICE, page_size=1000, page_token=big.next_page_token)
    assert [t.id for t in rest.transactions] == newest_first[100:]
    assert rest.next_page_token == ""

    with pytest.raises(InvalidArgument) as caught:
        await service.list_transactions(ALICE, page_size=-1)
    assert violation_fields(caught.value) == ["page_size"]


async def test_pages_neither_repeat_nor_skip_while_new_transactions_arrive(
    service: TransactionUseCases, clock: Any
) -> None:
    original = []
    for _ in range(25):
        original.append((await create(service)).id)
        clock.advance(timedelta(milliseconds=1))
    seen: list[str] = []
    token = ""
    while True:
        page = await service.list_transactions(ALICE, page_size=7, page_token=token)
        seen += [t.id for t in page.transactions]
        for _ in range(3):  # new rows between pages, newer than everything listed
            await create(service)
            clock.advance(timedelta(milliseconds=1))
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(original))


async def test_pagination_breaks_ties_on_equal_creation_times_by_id(
    service: TransactionUseCases, clock: Any
) -> None:
    clock.freeze()
    ids = [(await create(service)).id for _ in range(13)]
    listed = []
    token = ""
    while True:
        page = await service.list_transactions(ALICE, page_size=4, page_token=token)
        listed += [t.id for t in page.transactions]
        token = page.next_page_token
        if not token:
            break
    assert listed == sorted(ids, reverse=True)


async def test_list_filters_by_status_and_creation_time(
    service: TransactionUseCases, clock: Any
) -> None:
    start = clock.freeze(datetime(2030, 1, 1, tzinfo=UTC))
    made = []
    for _ in range(6):
        made.append(await create(service))
        clock.advance(timedelta(hours=1))
    await service.cancel_transaction(ALICE, made[1].id)
    await service.apply_movement(
        SERVICE, movement(made[2], MovementKind.AUTHORIZATION, id="mov_a", authorized=100)
    )
    newest_first = [t.id for t in reversed(made)]

    assert await list_all(service, status=TransactionStatus.CANCELLED) == [made[1].id]
    assert await list_all(service, status=TransactionStatus.AUTHORIZED) == [made[2].id]
    pending = await list_all(service, status=TransactionStatus.PENDING)
    assert pending == [i for i in newest_first if i not in (made[1].id, made[2].id)]
    # Start is inclusive, end exclusive.
    window = await list_all(
        service,
        create_time_start=start + timedelta(hours=1),
        create_time_end=start + timedelta(hours=4),
    )
    assert window == [made[3].id, made[2].id, made[1].id]
    assert await list_all(service, create_time_start=start + timedelta(hours=5)) == [made[5].id]
    assert await list_all(service, create_time_end=start) == []
    with pytest.raises(InvalidArgument) as caught:
        await service.list_transactions(
            ALICE, create_time_start=start, create_time_end=start - timedelta(seconds=1)
        )
    assert violation_fields(caught.value) == ["create_time_end"]


async def test_page_token_must_come_with_the_same_filters_and_merchant(
    service: TransactionUseCases,
) -> None:
    for _ in range(3):
        await create(service)
    page = await service.list_transactions(ALICE, page_size=1, status=TransactionStatus.PENDING)
    token = page.next_page_token
    assert token
    attempts: list[dict[str, Any]] = [
        {"principal": ALICE},
        {"principal": ALICE, "status": TransactionStatus.CANCELLED},
        {
            "principal": ALICE,
            "status": TransactionStatus.PENDING,
            "create_time_start": page.transactions[0].create_time,
        },
        {"principal": BOB, "status": TransactionStatus.PENDING},
    ]
    for attempt in attempts:
        principal = attempt.pop("principal")
        with pytest.raises(InvalidArgument) as caught:
            await service.list_transactions(principal, page_token=token, page_size=1, **attempt)
        assert violation_fields(caught.value) == ["page_token"]
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for bad in (forged, "not-a-token", "a.b", "x" * 5000):
        with pytest.raises(InvalidArgument):
            await service.list_transactions(ALICE, page_token=bad, status=TransactionStatus.PENDING)
    # With the same filters the page size may change between pages.
    next_page = await service.list_transactions(
        ALICE, page_token=token, page_size=5, status=TransactionStatus.PENDING
    )
    assert len(next_page.transactions) == 2


# Cancel -----------------------------------------------------------------------------------


async def test_cancel_closes_at_the_payment_service_then_shows_cancelled(
    service: TransactionUseCases, payments: Any, count_rows: Count
) -> None:
    created = await create(service, amount=2500, currency="JPY")
    cancelled = await service.cancel_transaction(ALICE, created.id)
    assert cancelled.status is TransactionStatus.CANCELLED
    assert payments.calls == [
        {
            "merchant_id": "mer_alice",
            "transaction_id": created.id,
            "amount": 2500,
            "currency": "JPY",
        }
    ]
    assert await count_rows("applied_movements", id=f"mov_cancel_{created.id}") == 1
    assert (await service.get_transaction(ALICE, created.id)).status is TransactionStatus.CANCELLED
    # Cancelling again returns it as it is and asks nobody.
    again = await service.cancel_transaction(ALICE, created.id)
    assert again == cancelled
    assert len(payments.calls) == 1


async def test_cancel_is_refused_when_money_was_captured(
    service: TransactionUseCases, payments: Any
) -> None:
    created = await create(service, amount=1000)
    await service.apply_movement(
        SERVICE, movement(created, MovementKind.AUTHORIZATION, id="m1", authorized=1000)
    )
    await service.apply_movement(
        SERVICE, movement(created, MovementKind.CAPTURE, id="m2", captured=400, authorized=-600)
    )
    with pytest.raises(FailedPrecondition) as caught:
        await service.cancel_transaction(ALICE, created.id)
    assert caught.value.reason == "TRANSACTION_CAPTURED"
    assert payments.calls == []


async def test_cancel_passes_on_the_payment_services_refusal(
    service: TransactionUseCases, payments: Any, count_rows: Count
) -> None:
    created = await create(service)
    payments.error = FailedPrecondition("captured", reason="TRANSACTION_CAPTURED")
    with pytest.raises(FailedPrecondition) as caught:
        await service.cancel_transaction(ALICE, created.id, idempotency_key="c1", fingerprint="f")
    assert caught.value.reason == "TRANSACTION_CAPTURED"
    assert (await service.get_transaction(ALICE, created.id)).status is TransactionStatus.PENDING
    assert await count_rows("idempotency_keys") == 0


async def test_cancel_while_the_payment_service_is_down_changes_nothing(
    service: TransactionUseCases, payments: Any, count_rows: Count
) -> None:
    created = await create(service)
    payments.error = Unavailable("down", reason="PAYMENT_SERVICE_UNAVAILABLE")
    with pytest.raises(Unavailable):
        await service.cancel_transaction(ALICE, created.id, idempotency_key="c1", fingerprint="f")
    assert await service.get_transaction(ALICE, created.id) == created
    assert await count_rows("applied_movements") == 0
    assert await count_rows("idempotency_keys") == 0
    # The retry with the same key works once the payment service is back.
    payments.error = None
    cancelled = await service.cancel_transaction(
        ALICE, created.id, idempotency_key="c1", fingerprint="f"
    )
    assert cancelled.status is TransactionStatus.CANCELLED


async def test_cancel_of_another_merchants_transaction_is_not_found(
    service: TransactionUseCases, payments: Any
) -> None:
    created = await create(service)
    with pytest.raises(NotFound) as caught:
        await service.cancel_transaction(BOB, created.id)
    assert caught.value.reason == "TRANSACTION_NOT_FOUND"
    assert payments.calls == []
    assert (await service.get_transaction(ALICE, created.id)).status is TransactionStatus.PENDING


async def test_cancel_with_a_key_replays_and_never_closes_another_transaction(
    service: TransactionUseCases, payments: Any
) -> None:
    first = await create(service)
    second = await create(service)
    cancelled = await service.cancel_transaction(
        ALICE, first.id, idempotency_key="cancel-1", fingerprint="fp-first"
    )
    replay = await service.cancel_transaction(
        ALICE, first.id, idempotency_key="cancel-1", fingerprint="fp-first"
    )
    assert replay == cancelled
    with pytest.raises(AlreadyExists) as caught:
        await service.cancel_transaction(
            ALICE, second.id, idempotency_key="cancel-1", fingerprint="fp-second"
        )
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert [call["transaction_id"] for call in payments.calls] == [first.id]
    assert (await service.get_transaction(ALICE, second.id)).status is TransactionStatus.PENDING


async def test_cancel_after_the_outbox_delivered_the_cancellation_applies_it_once(
    service: TransactionUseCases, count_rows: Count
) -> None:
    created = await create(service)
    await service.apply_movement(
        SERVICE, movement(created, MovementKind.CANCELLATION, id=f"mov_cancel_{created.id}")
    )
    cancelled = await service.cancel_transaction(ALICE, created.id)
    assert cancelled.status is TransactionStatus.CANCELLED
    assert await count_rows("applied_movements") == 1


async def test_concurrent_cancels_apply_the_cancellation_once(
    service: TransactionUseCases, count_rows: Count
) -> None:
    created = await create(service)
    results = await asyncio.gather(
        *(service.cancel_transaction(ALICE, created.id) for _ in range(10))
    )
    assert {r.status for r in results} == {TransactionStatus.CANCELLED}
    assert await count_rows("applied_movements") == 1


# Ledger: lookup and movements -------------------------------------------------------------


async def test_lookup_is_scoped_by_merchant_and_for_the_service_only(
    service: TransactionUseCases,
) -> None:
    created = await create(service)
    assert await service.lookup_transaction(SERVICE, "mer_alice", created.id) == created
    with pytest.raises(NotFound) as caught:
        await service.lookup_transaction(SERVICE, "mer_bob", created.id)
    assert caught.value.reason == "TRANSACTION_NOT_FOUND"
    with pytest.raises(PermissionDenied):
        await service.lookup_transaction(ALICE, "mer_alice", created.id)
    with pytest.raises(InvalidArgument) as invalid:
        await service.lookup_transaction(SERVICE, "", "")
    assert violation_fields(invalid.value) == ["merchant_id", "transaction_id"]


async def test_movements_drive_the_amounts_and_the_status(service: TransactionUseCases) -> None:
    created = await create(service, amount=1000)
    steps: list[tuple[MovementKind, dict[str, Any], TransactionStatus, tuple[int, int, int]]] = [
        (MovementKind.FAILURE, {}, TransactionStatus.FAILED, (0, 0, 0)),
        (
            MovementKind.AUTHORIZATION,
            {"authorized": 1000},
            TransactionStatus.AUTHORIZED,
            (1000, 0, 0),
        ),
        (
            MovementKind.CAPTURE,
            {"captured": 700, "authorized": -300},
            TransactionStatus.COMPLETED,
            (700, 700, 0),
        ),
        (
            MovementKind.REFUND,
            {"refunded": 200},
            TransactionStatus.PARTIALLY_REFUNDED,
            (700, 700, 200),
        ),
        (MovementKind.REFUND, {"refunded": 500}, TransactionStatus.REFUNDED, (700, 700, 700)),
    ]
    for number, (kind, deltas, status, amounts) in enumerate(steps):
        after = await service.apply_movement(
            SERVICE, movement(created, kind, id=f"mov_{number}", **deltas)
        )
        assert after.status is status
        assert (after.authorized_amount, after.captured_amount, after.refunded_amount) == amounts
    assert await service.get_transaction(ALICE, created.id) == after


async def test_the_same_movement_twice_is_applied_once(
    service: TransactionUseCases, count_rows: Count
) -> None:
    created = await create(service, amount=1000)
    auth = movement(created, MovementKind.AUTHORIZATION, id="mov_auth", authorized=600)
    first = await service.apply_movement(SERVICE, auth)
    second = await service.apply_movement(SERVICE, auth)
    assert first == second
    assert second.authorized_amount == 600
    assert await count_rows("applied_movements") == 1
    changed = movement(created, MovementKind.AUTHORIZATION, id="mov_auth", authorized=1)
    with pytest.raises(AlreadyExists) as caught:
        await service.apply_movement(SERVICE, changed)
    assert caught.value.reason == "MOVEMENT_ID_REUSED"


async def test_a_movement_of_another_merchant_is_not_found_and_writes_nothing(
    service: TransactionUseCases, count_rows: Count
) -> None:
    created = await create(service)
    foreign = movement(
        created, MovementKind.AUTHORIZATION, id="mov_x", authorized=1, merchant_id="mer_bob"
    )
    with pytest.raises(NotFound):
        await service.apply_movement(SERVICE, foreign)
    assert await count_rows("applied_movements") == 0
    assert (await service.get_transaction(ALICE, created.id)).authorized_amount == 0


async def test_a_movement_breaking_an_invariant_is_refused_and_writes_nothing(
    service: TransactionUseCases, count_rows: Count
) -> None:
    created = await create(service, amount=1000)
    with pytest.raises(FailedPrecondition) as caught:
        await service.apply_movement(
            SERVICE, movement(created, MovementKind.AUTHORIZATION, id="too_much", authorized=1001)
        )
    assert caught.value.reason == "LEDGER_INVARIANT_VIOLATED"
    with pytest.raises(FailedPrecondition):
        await service.apply_movement(
            SERVICE, movement(created, MovementKind.REFUND, id="refund_nothing", refunded=1)
        )
    assert await count_rows("applied_movements") == 0
    assert await service.get_transaction(ALICE, created.id) == created


async def test_malformed_movements_are_invalid_argument(service: TransactionUseCases) -> None:
    created = await create(service)
    bad = movement(created, MovementKind.VOID, id="", authorized=5, merchant_id="")
    with pytest.raises(InvalidArgument) as caught:
        await service.apply_movement(SERVICE, bad)
    assert set(violation_fields(caught.value)) == {
        "movement.id",
        "movement.merchant_id",
        "movement.authorized_delta",
    }
    with pytest.raises(PermissionDenied):
        await service.apply_movement(ALICE, movement(created, MovementKind.FAILURE, id="m"))


async def test_fifty_concurrent_movements_on_one_transaction_sum_exactly(
    service: TransactionUseCases, count_rows: Count
) -> None:
    created = await create(service, amount=10_000)
    auths = [
        movement(created, MovementKind.AUTHORIZATION, id=f"auth_{i}", authorized=100 + i)
        for i in range(50)
    ]
    # Every movement delivered twice, all at once: each must count exactly once.
    await asyncio.gather(*(service.apply_movement(SERVICE, m) for m in auths + auths))
    after = await service.get_transaction(ALICE, created.id)
    assert after.authorized_amount == sum(100 + i for i in range(50))
    assert after.status is TransactionStatus.AUTHORIZED
    assert await count_rows("applied_movements") == 50


async def test_concurrent_movements_never_exceed_the_amount(
    service: TransactionUseCases, count_rows: Count
) -> None:
    created = await create(service, amount=1000)
    auths = [
        movement(created, MovementKind.AUTHORIZATION, id=f"auth_{i}", authorized=20)
        for i in range(60)
    ]
    results = await asyncio.gather(
        *(service.apply_movement(SERVICE, m) for m in auths), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 10
    assert all(
        isinstance(r, FailedPrecondition) and r.reason == "LEDGER_INVARIANT_VIOLATED"
        for r in refused
    )
    after = await service.get_transaction(ALICE, created.id)
    assert after.authorized_amount == 1000
    assert await count_rows("applied_movements") == 50
