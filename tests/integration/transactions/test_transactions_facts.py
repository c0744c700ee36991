"""New transactions pushed to the payment service (`pi.transactions.facts`): batched while a
call is in flight, bounded, and never in the way of CreateTransaction, even while the
payment service is down or hangs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from generated.pi.payments.v1 import payments_pb2, payments_pb2_grpc
from generated.pi.transactions.v1 import transactions_pb2 as pb
from pi.platform.clients import service_channel
from pi.platform.config import Settings
from pi.platform.errors import Unavailable
from pi.platform.principal import Principal
from pi.platform.server import create_server
from pi.transactions.clients import ClosedTransaction, GrpcPaymentLedger, TransactionFacts
from pi.transactions.facts import FactsPublisher
from tests.support.processes import unreachable

M = "mer_facts"


class GatedLedger:
    """A payment ledger whose RegisterTransactions calls wait for `gate` (open unless
    closed) and are recorded, batch by batch."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.batches: list[list[TransactionFacts]] = []

    async def close_transaction(self, **_: Any) -> ClosedTransaction:
        raise AssertionError("not used")

    async def register_transactions(self, transactions: Sequence[TransactionFacts]) -> int:
        self.batches.append(list(transactions))
        await self.gate.wait()
        return len(transactions)

    @property
    def registered(self) -> list[str]:
        return [facts.transaction_id for batch in self.batches for facts in batch]


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition()` until it is true; TimeoutError if it does not become so."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(publisher: FactsPublisher) -> AsyncIterator[asyncio.Task[None]]:
    """The publisher's loop as a task; on exit it must stop within a second."""
    task = asyncio.create_task(publisher.run())
    try:
        yield task
    finally:
        task.cancel()
        async with asyncio.timeout(1):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def create(rpc: Any, amount: int = 1000, **request: Any) -> pb.Transaction:
    response = await rpc.transactions.CreateTransaction(
        pb.CreateTransactionRequest(
            transaction=pb.Transaction(amount=amount, currency="USD"), **request
        ),
        metadata=rpc.merchant(M),
    )
    return response.transaction


def stats_add_up(publisher: FactsPublisher) -> None:
    s = publisher.stats
    assert s.published == s.sent + s.lost + s.dropped + publisher.queued, s


async def test_new_transactions_are_pushed_with_their_facts_and_replays_are_not(
    serve_app: Callable[[Any], Awaitable[Any]],
) -> None:
    ledger = GatedLedger()
    rpc = await serve_app(ledger)
    publisher = rpc.app.facts
    first = await create(rpc, 1500, request_id="k1")
    assert await create(rpc, 1500, request_id="k1") == first  # a replay
    with pytest.raises(grpc.aio.AioRpcError):
        await create(rpc, 0)  # invalid: nothing committed
    assert (publisher.stats.published, publisher.queued) == (1, 1)

    async with running(publisher):
        await eventually(lambda: publisher.stats.sent == 1)
    assert ledger.batches == [[TransactionFacts(first.id, M, 1500, "USD")]]
    stats_add_up(publisher)


async def test_creates_made_while_a_call_is_in_flight_go_in_the_next_call(
    serve_app: Callable[[Any], Awaitable[Any]],
) -> None:
    ledger = GatedLedger()
    rpc = await serve_app(ledger)
    publisher = rpc.app.facts
    async with running(publisher):
        ledger.gate.clear()
        first = await create(rpc)
        await eventually(lambda: len(ledger.batches) == 1)
        rest = await asyncio.gather(*(create(rpc) for _ in range(30)))
        assert len(ledger.batches) == 1  # the next call waits for the one in flight
        ledger.gate.set()
        await eventually(lambda: publisher.stats.sent == 31)
    assert [len(batch) for batch in ledger.batches] == [1, 30]
    assert ledger.registered[0] == first.id
    assert sorted(ledger.registered[1:]) == sorted(t.id for t in rest)
    assert publisher.stats.calls == 2
    stats_add_up(publisher)


async def test_a_call_carries_at_most_per_call_transactions_and_a_full_queue_drops_the_oldest(
    serve_app: Callable[[Any], Awaitable[Any]],
) -> None:
    rpc = await serve_app(GatedLedger())
    ledger = GatedLedger()
    publisher = FactsPublisher(ledger, capacity=20, per_call=8)
    made = [
        await rpc.app.transactions.create_transaction(
            Principal.merchant(M), amount=i + 1, currency="USD", description="", metadata={}
        )
        for i in range(25)
    ]
    for transaction in made:
        publisher.publish(transaction)
    assert (publisher.stats.dropped, publisher.queued) == (5, 20)

    async with running(publisher):
        await eventually(lambda: publisher.queued == 0 and publisher.stats.sent == 20)
    assert [len(batch) for batch in ledger.batches] == [8, 8, 4]
    assert ledger.registered == [t.id for t in made[5:]]  # oldest first, the first 5 dropped
    stats_add_up(publisher)


async def test_creates_succeed_while_the_payment_service_is_down_and_the_publisher_backs_off(
    migrated: Settings, serve_app: Callable[[Any], Awaitable[Any]]
) -> None:
    channel = service_channel(unreachable(), service_token=migrated.service_token)
    try:
        rpc = await serve_app(GrpcPaymentLedger(channel))
        publisher = rpc.app.facts
        async with running(publisher):
            async with asyncio.timeout(10):
                made = await asyncio.gather(*(create(rpc) for _ in range(40)))
            assert len({t.id for t in made}) == 40
            await eventually(lambda: publisher.stats.failed_calls >= 2)
            more = await create(rpc)
            got = await rpc.transactions.GetTransaction(
                pb.GetTransactionRequest(id=more.id), metadata=rpc.merchant(M)
            )
            assert got.transaction == more
        stats = publisher.stats
        assert stats.sent == 0 and stats.lost >= 1
        # Backing off: far fewer calls than transactions, whatever the timing.
        assert stats.failed_calls < stats.published / 2
        stats_add_up(publisher)
    finally:
        await channel.close()


async def test_the_publisher_recovers_when_the_payment_service_comes_back(
    serve_app: Callable[[Any], Awaitable[Any]], payments: Any
) -> None:
    payments.error = Unavailable("down", reason="PAYMENT_SERVICE_UNAVAILABLE")
    rpc = await serve_app(payments)
    publisher = rpc.app.facts
    async with running(publisher):
        lost = await create(rpc)
        await eventually(lambda: publisher.stats.failed_calls == 1)
        payments.error = None
        kept = await create(rpc)
        await eventually(lambda: publisher.stats.sent == 1)
    assert publisher.stats.lost == 1
    assert [[f.transaction_id for f in batch] for batch in payments.registered] == [
        [lost.id],
        [kept.id],
    ]


# The real gRPC adapter against a payment service that hangs ---------------------------------


@dataclass
class HangingPayments(payments_pb2_grpc.PaymentLedgerServiceServicer):
    """A payment service that never answers RegisterTransactions; records the calls."""

    calls: list[tuple[payments_pb2.RegisterTransactionsRequest, str | None]] = field(
        default_factory=list
    )

    async def RegisterTransactions(
        self, request: payments_pb2.RegisterTransactionsRequest, context: Any
    ) -> payments_pb2.RegisterTransactionsResponse:
        self.calls.append((request, dict(context.invocation_metadata()).get("authorization")))
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.fixture
async def hanging() -> AsyncIterator[tuple[HangingPayments, str]]:
    servicer = HangingPayments()
    server = create_server()
    payments_pb2_grpc.add_PaymentLedgerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_a_hanging_payment_service_costs_a_deadline_and_never_blocks_a_create(
    migrated: Settings,
    serve_app: Callable[[Any], Awaitable[Any]],
    hanging: tuple[HangingPayments, str],
) -> None:
    servicer, target = hanging
    channel = service_channel(target, service_token=migrated.service_token)
    try:
        ledger = GrpcPaymentLedger(channel, register_timeout=0.2)
        with pytest.raises(Unavailable):
            await ledger.register_transactions([TransactionFacts("txn_x", M, 5, "JPY")])
        [(request, authorization)] = servicer.calls
        assert [
            (f.transaction_id, f.merchant_id, f.amount, f.currency) for f in request.transactions
        ] == [("txn_x", M, 5, "JPY")]
        assert authorization == f"Bearer {migrated.service_token}"

        rpc = await serve_app(ledger)
        publisher = rpc.app.facts
        async with running(publisher):
            first = await create(rpc)
            await eventually(lambda: len(servicer.calls) == 2)  # the publisher's call hangs
            async with asyncio.timeout(5):
                await asyncio.gather(*(create(rpc) for _ in range(10)))
            await eventually(lambda: publisher.stats.failed_calls == 1)
            # Leaving `running` cancels the loop, possibly mid-call: it stops at once.
        assert publisher.stats.lost >= 1
        assert servicer.calls[1][0].transactions[0].transaction_id == first.id
    finally:
        await channel.close()
