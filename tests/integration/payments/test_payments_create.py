"""The CreatePayment path: first sight of a transaction without a rollback, concurrent
holds decided on a ref read without a lock, replays that need no lookup, a settlement
that finds the payment already settled, and movements appended in multi-row INSERTs.

The use-case tests run on the PostgreSQL and the in-memory unit of work (the same
assertions: a contract the memory fake keeps), with a transaction service double that
counts lookups; the mesh tests use both real services.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from generated.pi.payments.v1 import payments_pb2 as pb
from pi.payments.adapters.processor import SandboxConnector
from pi.payments.app.create_payment import CreatePaymentInput
from pi.payments.app.payment_ledger import TransactionFactsInput
from pi.payments.app.ports import TransactionFacts
from pi.payments.app.use_cases import PaymentUseCases, payment_use_cases
from pi.payments.domain import (
    AuthorizeRequest,
    CaptureMode,
    CardInput,
    ConnectorResult,
    PaymentMethodType,
    PaymentStatus,
    TransactionRef,
    movements_from_deltas,
)
from pi.platform.kernel.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.principal import Principal
from pi.platform.kernel.units import Mode
from pi.platform.ledger import Movement, MovementDelta, MovementKind
from tests.support.round_trips import count_round_trips

M = "mer_create"
MERCHANT = Principal.merchant(M)
EXPIRY = datetime.now(UTC).year + 2


class _Transactions:
    """The transaction service as CreatePayment sees it: lookups only, counted."""

    def __init__(self, known: dict[str, int]) -> None:
        self.known = known
        self.lookups = 0
        # Runs during each lookup, e.g. to push the ref meanwhile as the real service does.
        self.during_lookup: Callable[[str], Awaitable[None]] | None = None

    async def lookup_transaction(self, merchant_id: str, transaction_id: str) -> TransactionFacts:
        self.lookups += 1
        await asyncio.sleep(0.01)  # a round trip, so concurrent first sights overlap
        if self.during_lookup is not None:
            await self.during_lookup(transaction_id)
        if merchant_id != M or transaction_id not in self.known:
            raise NotFound("no such transaction", reason="TRANSACTION_NOT_FOUND")
        return TransactionFacts(transaction_id, M, self.known[transaction_id], "USD", False)


class _Connector:
    """The sandbox, with a hook that runs right after each authorization (before the
    payment service records the outcome)."""

    def __init__(self) -> None:
        self.sandbox = SandboxConnector()
        self.after_authorize: Callable[[str], Awaitable[None]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sandbox, name)

    async def authorize(self, request: AuthorizeRequest) -> ConnectorResult:
        result = await self.sandbox.authorize(request)
        if self.after_authorize is not None:
            await self.after_authorize(request.payment_id)
        return result


@dataclass
class World:
    backend: Any  # conftest Backend
    transactions: _Transactions
    connector: _Connector
    service: PaymentUseCases

    async def pay(
        self, transaction_id: str, amount: int, *, key: str | None = None, manual: bool = False
    ) -> Any:
        return await self.service.create_payment(
            MERCHANT,
            CreatePaymentInput(
                transaction_id=transaction_id,
                amount=amount,
                method=PaymentMethodType.CARD,
                capture_mode=CaptureMode.MANUAL if manual else CaptureMode.AUTOMATIC,
                card=CardInput("4242424242424242", 1, EXPIRY, "123"),
            ),
            idempotency_key=key,
        )

    async def count(self, table: str, **where: Any) -> int:
        return int(await self.backend.count(table, **where))

    async def ref(self, transaction_id: str) -> Any:
        ref = await self.backend.ref(transaction_id)
        assert ref is not None
        return ref


@pytest.fixture
async def world(backend: Any) -> AsyncIterator[World]:
    transactions = _Transactions({"txn_1": 10_000, "txn_2": 10_000})
    connector = _Connector()
    service = payment_use_cases(
        backend.units,
        connector,  # type: ignore[arg-type]  # a Connector, by delegation
        transactions,  # type: ignore[arg-type]  # CreatePayment only looks up
        card_key=secrets.token_bytes(32),
        request_key=secrets.token_bytes(32),
        page_tokens=PageToken(secrets.token_bytes(32)),
    )
    yield World(backend, transactions, connector, service)


@pytest.mark.parametrize("seen_before", [False, True], ids=["first-sight", "known"])
async def test_concurrent_payments_on_one_transaction_hold_within_its_amount(
    world: World, seen_before: bool
) -> None:
    # 30 payments of 400 on a transaction of 10 000, each with its own key: exactly 25
    # fit. First sight: the requests race to insert the ref, then to take their hold.
    # Known: they all read the same ref and race to update it from what they read.
    earlier = 1 if seen_before else 0
    if seen_before:
        await world.pay("txn_1", 400, key="k-first", manual=True)
    results = await asyncio.gather(
        *(world.pay("txn_1", 400, key=f"k{i}", manual=True) for i in range(30 - earlier)),
        return_exceptions=True,
    )
    held = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(held) == 25 - earlier, refused
    assert all(p.status is PaymentStatus.REQUIRES_CAPTURE for p in held)
    assert len(refused) == 5
    for error in refused:
        assert isinstance(error, FailedPrecondition), error
        assert error.reason == "AMOUNT_EXCEEDS_REMAINING"
        assert error.metadata["remaining"] == "0"
    ref = await world.ref("txn_1")
    assert (ref.held_amount, ref.captured_amount) == (10_000, 0)
    assert await world.count("payments") == 25
    # A refused payment's claim went with its rollback: only the held ones keep a key.
    assert await world.count("idempotency_keys") == 25
    lookups = world.transactions.lookups
    assert (lookups == 1) if seen_before else (1 <= lookups <= 30)
    with pytest.raises(FailedPrecondition):
        await world.pay("txn_1", 1, key="late")
    assert world.transactions.lookups == lookups


async def test_a_replay_and_a_known_transaction_need_no_lookup(world: World) -> None:
    first = await world.pay("txn_1", 400, key="k")
    assert first.status is PaymentStatus.SUCCEEDED
    assert world.transactions.lookups == 1
    assert await world.pay("txn_1", 400, key="k") == first
    second = await world.pay("txn_1", 300, key="k2")
    third = await world.pay("txn_1", 300)
    assert len({first.id, second.id, third.id}) == 3
    assert world.transactions.lookups == 1
    ref = await world.ref("txn_1")
    assert (ref.held_amount, ref.captured_amount) == (0, 1000)
    assert await world.count("outbox") == 6  # AUTHORIZATION + CAPTURE for each


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # pipelines: PostgreSQL's
async def test_on_postgres_each_of_t1_and_t2_is_two_round_trips(world: World) -> None:
    await world.pay("txn_1", 400, key="first")  # the ref known from now on
    for attempt in range(6):  # prepared on the first run: the same count after
        before_t2 = 0

        async def between(payment_id: str) -> None:
            nonlocal before_t2
            before_t2 = trips.count

        world.connector.after_authorize = between
        with count_round_trips() as trips:
            payment = await world.pay("txn_1", 400, key=f"k{attempt}")
        # The ref read, then T1: BEGIN + claim + ref update + payment insert, COMMIT.
        assert before_t2 == 1 + 2
        # T2: BEGIN + key + movements + ref + payment, COMMIT.
        assert trips.count - before_t2 == 2
        assert payment.status is PaymentStatus.SUCCEEDED
    world.connector.after_authorize = None
    # AUTHORIZATION + CAPTURE per payment, numbered in order with no gap.
    seqs = [row.seq for row in await world.backend.outbox_rows()]
    assert seqs == list(range(1, 15))
    ref = await world.ref("txn_1")
    assert (ref.held_amount, ref.captured_amount, ref.movement_count) == (0, 2800, 14)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # pipelines: PostgreSQL's
async def test_on_postgres_first_sight_racing_a_pushed_ref_is_not_rolled_back(
    world: World,
) -> None:
    # The transaction service pushes the ref (holding nothing) while CreatePayment looks
    # the transaction up: T1 still takes its hold in its one batch, without a rollback.
    push_trips = 0

    async def push(transaction_id: str) -> None:
        nonlocal push_trips
        before = trips.count
        facts = TransactionFactsInput(transaction_id, M, 1_000, "USD")
        pushed = await world.service.register_transactions(Principal.service(), [facts])
        assert pushed.registered_count == 1
        push_trips += trips.count - before

    world.transactions.during_lookup = push
    for attempt in range(6):  # prepared on the first run: the same count after
        transaction_id = f"txn_race_{attempt}"
        world.transactions.known[transaction_id] = 1_000
        push_trips = before_t2 = 0

        async def between(payment_id: str) -> None:
            nonlocal before_t2
            before_t2 = trips.count

        world.connector.after_authorize = between
        with count_round_trips() as trips:
            payment = await world.pay(transaction_id, 400, manual=True)
        assert push_trips > 0
        # The ref read (a miss), then T1: BEGIN + claim + ref insert (a no-op) + hold +
        # payment insert, COMMIT. No rollback, no locked retry.
        assert before_t2 - push_trips == 1 + 2
        assert payment.status is PaymentStatus.REQUIRES_CAPTURE
        ref = await world.ref(transaction_id)
        assert (ref.amount, ref.held_amount, ref.captured_amount, ref.movement_count) == (
            1_000,
            400,
            0,
            1,
        )
    world.connector.after_authorize = None
    world.transactions.during_lookup = None
    assert await world.count("payments") == 6


async def test_first_sight_racing_a_push_holds_once_and_changed_refs_are_decided_again(
    world: World,
) -> None:
    service = Principal.service()
    world.transactions.known.update(txn_fresh=1_000, txn_held=1_000, txn_other=1_000)

    async def during_lookup(transaction_id: str) -> None:
        # Fresh: only the push. Held: the push, then another payment's hold on it.
        # Other: a push whose facts differ from the lookup's (never overwritten).
        facts = (
            TransactionFactsInput(transaction_id, M, 900, "USD")
            if transaction_id == "txn_other"
            else TransactionFactsInput(transaction_id, M, 1_000, "USD")
        )
        await world.service.register_transactions(service, [facts])
        if transaction_id == "txn_held":
            await world.pay(transaction_id, 700, manual=True)  # known now: no lookup

    world.transactions.during_lookup = during_lookup
    fresh = await world.pay("txn_fresh", 600, manual=True)
    assert fresh.status is PaymentStatus.REQUIRES_CAPTURE
    ref = await world.ref("txn_fresh")
    assert (ref.held_amount, ref.captured_amount, ref.movement_count) == (600, 0, 1)

    # The other payment's hold makes T1's check stale: decided again under the lock.
    with pytest.raises(FailedPrecondition) as refused:
        await world.pay("txn_held", 400, manual=True)
    assert refused.value.reason == "AMOUNT_EXCEEDS_REMAINING"
    held = await world.pay("txn_held", 300, manual=True)
    assert held.status is PaymentStatus.REQUIRES_CAPTURE
    ref = await world.ref("txn_held")
    assert (ref.held_amount, ref.movement_count) == (1_000, 2)

    # Facts differing from the lookup's: the stored ref decides, under its lock.
    with pytest.raises(FailedPrecondition):
        await world.pay("txn_other", 950, manual=True)
    other = await world.pay("txn_other", 500, manual=True)
    assert other.status is PaymentStatus.REQUIRES_CAPTURE
    ref = await world.ref("txn_other")
    assert (ref.amount, ref.held_amount, ref.movement_count) == (900, 500, 1)
    assert await world.count("payments") == 4
    world.transactions.during_lookup = None


async def test_a_reused_key_is_reported_before_an_unknown_transaction(world: World) -> None:
    await world.pay("txn_1", 400, key="k")
    with pytest.raises(AlreadyExists) as reused:
        await world.pay("txn_unknown", 400, key="k")
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    with pytest.raises(NotFound) as unknown:
        await world.pay("txn_unknown", 400, key="fresh")
    assert unknown.value.reason == "TRANSACTION_NOT_FOUND"
    assert await world.count("payments") == 1
    assert await world.count("idempotency_keys") == 1


@pytest.mark.parametrize("other_hold", [0, 1000], ids=["alone", "beside-another-hold"])
async def test_a_payment_settled_by_the_reconciler_meanwhile_is_settled_once(
    world: World, other_hold: int
) -> None:
    # The reconciler settles the payment between the authorization and the request's
    # own settlement, which then must find it settled (alone: the hold it would release
    # is gone from the ref; beside another hold: only the payment row tells).
    if other_hold:
        await world.pay("txn_1", other_hold, manual=True)

    async def reconcile(payment_id: str) -> None:
        found = await world.service.get_payment(MERCHANT, payment_id)
        assert found.status is PaymentStatus.PROCESSING
        reconciled = await world.service.reconcile_payment(found)
        assert reconciled.status is PaymentStatus.SUCCEEDED

    world.connector.after_authorize = reconcile
    payment = await world.pay("txn_1", 400, key="k")
    world.connector.after_authorize = None
    assert payment.status is PaymentStatus.SUCCEEDED
    assert payment.captured_amount == 400
    assert await world.pay("txn_1", 400, key="k") == payment
    ref = await world.ref("txn_1")
    movements = 2 + (1 if other_hold else 0)
    assert (ref.held_amount, ref.captured_amount, ref.movement_count) == (
        other_hold,
        400,
        movements,
    )
    assert await world.count("outbox", transaction_id="txn_1") == movements


async def test_movements_are_appended_in_order_whatever_their_number(world: World) -> None:
    # Movements go to the outbox in multi-row INSERTs, in chunks past a few hundred.
    now = datetime.now(UTC)
    ref = TransactionRef("txn_many", M, 10_000, "USD")

    def failures(count: int) -> list[Movement]:
        deltas = tuple(MovementDelta(MovementKind.FAILURE, f"pay_{i}") for i in range(count))
        return movements_from_deltas(deltas, merchant_id=M, transaction_id="txn_many", now=now)

    made = failures(600) + failures(3)
    assert await world.backend.ref("txn_many") is None
    async with world.backend.units(Mode.LOCKED) as unit:
        assert await unit.refs.add(ref, now=now) == ref
        assert await unit.refs.add_all([ref], now=now) == set()  # there already
        await unit.refs.update(ref, ref, made[:600], now=now)
        await unit.refs.update(ref, ref, made[600:], now=now)
        await unit.commit()
    rows = await world.backend.outbox_rows()
    assert [(r.id, r.seq) for r in rows] == [(m.id, seq) for seq, m in enumerate(made, 1)]
    assert (await world.ref("txn_many")).movement_count == 603


async def test_registered_transactions_are_paid_without_a_lookup_and_never_overwritten(
    world: World,
) -> None:
    service = Principal.service()
    first = await world.service.register_transactions(
        service,
        [
            TransactionFactsInput("txn_pushed", M, 900, "USD"),
            TransactionFactsInput("txn_1", M, 10_000, "USD"),
        ],
    )
    assert (first.registered_count, first.conflicting_transaction_ids) == (2, ())
    paid = await world.pay("txn_pushed", 300)
    assert paid.status is PaymentStatus.SUCCEEDED
    assert world.transactions.lookups == 0
    again = await world.service.register_transactions(
        service,
        [
            TransactionFactsInput("txn_pushed", M, 900, "USD"),
            TransactionFactsInput("txn_1", M, 5, "EUR"),
            TransactionFactsInput("txn_2", M, 10_000, "USD"),
        ],
    )
    assert (again.registered_count, again.conflicting_transaction_ids) == (1, ("txn_1",))
    pushed, known = await world.ref("txn_pushed"), await world.ref("txn_1")
    assert (pushed.amount, pushed.captured_amount, pushed.movement_count) == (900, 300, 2)
    assert (known.amount, known.currency) == (10_000, "USD")
    with pytest.raises(PermissionDenied):
        await world.service.register_transactions(
            MERCHANT, [TransactionFactsInput("txn_3", M, 1, "USD")]
        )
    assert await world.count("transaction_refs") == 3


# -- both real services --------------------------------------------------------------------


async def test_concurrent_first_sights_through_both_services(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 10_000)
    md = mesh.merchant(M)

    async def pay(i: int) -> Any:
        request = pb.CreatePaymentRequest(
            payment=mesh.card_payment(txn.id, amount=500), request_id=f"first-sight-{i}"
        )
        try:
            return (await mesh.payments.CreatePayment(request, metadata=md)).payment
        except grpc.aio.AioRpcError as exc:
            return mesh.rpc_error(exc)

    results = await asyncio.gather(*(pay(i) for i in range(25)))
    paid = [r for r in results if isinstance(r, pb.Payment)]
    refused = [r for r in results if not isinstance(r, pb.Payment)]
    assert len(paid) == 20, refused
    assert all(p.status == pb.PAYMENT_STATUS_SUCCEEDED for p in paid)
    assert {(e.code, e.reason) for e in refused} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "AMOUNT_EXCEEDS_REMAINING")
    }
    await mesh.drain()
    after = await mesh.assert_transaction_matches_payments(M, txn.id)
    assert after.captured_amount == 10_000


async def test_replays_need_no_transaction_service(mesh: Any) -> None:
    seen = await mesh.create_transaction(M, 1000)
    unseen = await mesh.create_transaction(M, 1000)
    first = await mesh.pay(M, seen.id, amount=100, request_id="k")
    await mesh.stop_transactions()
    # The ref is known: a replay and a new payment do without the lookup.
    assert await mesh.pay(M, seen.id, amount=100, request_id="k") == first
    second = await mesh.pay(M, seen.id, amount=100, request_id="k2")
    assert second.status == pb.PAYMENT_STATUS_SUCCEEDED
    # A key reused on a transaction the lookup cannot reach is still a reused key.
    reused = await mesh.call_error(mesh.pay(M, unseen.id, amount=100, request_id="k"))
    assert (reused.code, reused.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    down = await mesh.call_error(mesh.pay(M, unseen.id, amount=100, request_id="k3"))
    assert (down.code, down.reason) == (grpc.StatusCode.UNAVAILABLE, "TRANSACTIONS_UNAVAILABLE")
    assert (await mesh.count_rows())["payments"] == 2
