"""GetTransaction, ListTransactions and LookupTransaction on the in-memory store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pi.platform.kernel.errors import DomainError, InvalidArgument, NotFound, PermissionDenied
from pi.platform.kernel.principal import Principal
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.domain import Movement, MovementKind, TransactionStatus
from tests.unit.transactions.fakes import Clock

ALICE = Principal.merchant("mer_alice")
BOB = Principal.merchant("mer_bob")
SERVICE = Principal.service()


def violation_fields(error: DomainError) -> list[str]:
    assert isinstance(error, InvalidArgument)
    return [v.field for v in error.violations]


async def create(service: TransactionUseCases, principal: Principal = ALICE) -> Any:
    return await service.create_transaction(
        principal, amount=10_000, currency="USD", description="", metadata={}
    )


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


# Get and lookup ---------------------------------------------------------------------------


async def test_another_merchants_transaction_is_not_found(service: TransactionUseCases) -> None:
    created = await create(service)
    with pytest.raises(NotFound) as caught:
        await service.get_transaction(BOB, created.id)
    assert caught.value.reason == "TRANSACTION_NOT_FOUND"
    assert caught.value.metadata == {"transaction_id": created.id}
    with pytest.raises(NotFound) as unknown:
        await service.get_transaction(ALICE, "txn_01JD0000000000000000000000")
    assert unknown.value.reason == "TRANSACTION_NOT_FOUND"
    # Same answer for a malformed id: no existence oracle.
    with pytest.raises(NotFound) as malformed:
        await service.get_transaction(ALICE, "x" * 500)
    assert malformed.value.metadata == {"transaction_id": "x" * 64}
    with pytest.raises(InvalidArgument) as empty:
        await service.get_transaction(ALICE, "")
    assert violation_fields(empty.value) == ["id"]


async def test_only_merchants_get_and_list(service: TransactionUseCases) -> None:
    created = await create(service)
    for principal in (SERVICE, Principal.admin()):
        with pytest.raises(PermissionDenied):
            await service.get_transaction(principal, created.id)
        with pytest.raises(PermissionDenied):
            await service.list_transactions(principal)


async def test_lookup_is_scoped_by_merchant_and_for_the_service_only(
    service: TransactionUseCases,
) -> None:
    created = await create(service)
    assert await service.lookup_transaction(SERVICE, "mer_alice", created.id) == created
    with pytest.raises(NotFound) as caught:
        await service.lookup_transaction(SERVICE, "mer_bob", created.id)
    assert caught.value.reason == "TRANSACTION_NOT_FOUND"
    with pytest.raises(NotFound):
        await service.lookup_transaction(SERVICE, "mer_alice", "not-an-id")
    with pytest.raises(PermissionDenied):
        await service.lookup_transaction(ALICE, "mer_alice", created.id)
    with pytest.raises(InvalidArgument) as invalid:
        await service.lookup_transaction(SERVICE, "", "")
    assert violation_fields(invalid.value) == ["merchant_id", "transaction_id"]


# List -------------------------------------------------------------------------------------


async def test_list_is_newest_first_with_default_and_maximum_page_sizes(
    service: TransactionUseCases, clock: Clock
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


async def test_a_merchant_without_transactions_gets_an_empty_last_page(
    service: TransactionUseCases,
) -> None:
    await create(service, BOB)
    page = await service.list_transactions(ALICE)
    assert (page.transactions, page.next_page_token) == ([], "")


async def test_pages_neither_repeat_nor_skip_while_new_transactions_arrive(
    service: TransactionUseCases, clock: Clock
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
    service: TransactionUseCases, clock: Clock
) -> None:
    clock.freeze()
    ids = [(await create(service)).id for _ in range(13)]
    assert await list_all(service, page_size=4) == sorted(ids, reverse=True)


async def test_list_filters_by_status_and_creation_time(
    service: TransactionUseCases, clock: Clock
) -> None:
    start = clock.freeze(datetime(2030, 1, 1, tzinfo=UTC))
    made = []
    for _ in range(6):
        made.append(await create(service))
        clock.advance(timedelta(hours=1))
    await service.cancel_transaction(ALICE, made[1].id)
    authorization = Movement(
        id="mov_a",
        merchant_id="mer_alice",
        transaction_id=made[2].id,
        payment_id="pay_test",
        kind=MovementKind.AUTHORIZATION,
        authorized_delta=100,
        captured_delta=0,
        refunded_delta=0,
        occur_time=start,
    )
    await service.apply_movement(SERVICE, authorization)
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
