"""New transactions pushed to the payment service (`FactsPublisher`): batched while a
call is in flight, bounded, and never in the way of CreateTransaction, even while the
payment service is down or hangs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from generated.pi.payments.v1 import payments_pb2, payments_pb2_grpc
from generated.pi.transactions.v1 import transactions_pb2 as pb
from pi.platform.kernel.errors import Unavailable
from pi.platform.kernel.principal import Principal
from pi.platform.runtime.clients import service_channel
from pi.platform.runtime.server import create_server
from pi.transactions.adapters.payments_grpc import GrpcPaymentLedger
from pi.transactions.app.ports import TransactionFacts
from pi.transactions.entrypoints.workers import FactsPublisher
from pi.transactions.settings import TransactionsSettings
from tests.support.ledgers import GatedLedger
from tests.support.processes import unreachable

M = "mer_facts"


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition()` until it is true; TimeoutError if it does not become so."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(publisher: FactsPublisher) -> AsyncIterator[asyncio.Task[None]]:
    """The publisher's loop as a task, started; on exit it must stop within a second."""
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: publisher.healthy)
        yield task
    finally:
        task.cancel()
        async with asyncio.timeout(1):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def timed(rpc: Any, **request: Any) -> tuple[pb.Transaction, float]:
    """A create over gRPC and how many seconds it took."""
    start = time.monotonic()
    made = await create(rpc, **request)
    return made, time.monotonic() - start


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


async def test_creates_succeed_while_the_payment_service_is_down_and_the_publisher_backs_off(
    migrated: TransactionsSettings, serve_app: Callable[[Any], Awaitable[Any]]
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
    migrated: TransactionsSettings,
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


# CreateTransaction waits, bounded, for its facts to reach the payment service ---------------

LONG_WAIT = 5.0
"""A cap far longer than any of these tests should take: hitting it means a create waited
when it should not have."""


async def test_a_create_answers_once_the_payment_service_acknowledged_its_facts(
    serve_app: Callable[..., Awaitable[Any]],
) -> None:
    ledger = GatedLedger()
    rpc = await serve_app(ledger, facts_wait=LONG_WAIT)
    publisher = rpc.app.facts
    async with running(publisher):
        made, took = await timed(rpc)
        assert ledger.registered == [made.id]  # before the create answered
        assert publisher.stats.sent == 1 and took < LONG_WAIT

        ledger.gate.clear()
        pending = asyncio.create_task(create(rpc))
        await eventually(lambda: len(ledger.batches) == 2)
        await asyncio.sleep(0)
        assert not pending.done()  # the call carrying its facts is in flight
        ledger.gate.set()
        async with asyncio.timeout(LONG_WAIT / 2):
            second = await pending
        assert ledger.registered == [made.id, second.id] and publisher.stats.sent == 2
    assert publisher.waiting == 0


async def test_a_slow_payment_service_delays_a_create_by_the_cap_at_most(
    serve_app: Callable[..., Awaitable[Any]],
) -> None:
    cap = 0.2
    ledger = GatedLedger()
    ledger.gate.clear()
    rpc = await serve_app(ledger, facts_wait=cap)
    publisher = rpc.app.facts
    async with running(publisher):
        made, took = await timed(rpc)
        assert cap <= took < cap + 1.0
        assert ledger.registered == [made.id] and publisher.stats.sent == 0  # still in flight
        assert publisher.waiting == 0  # the timed-out waiter gave its future up
        ledger.gate.set()
        await eventually(lambda: publisher.stats.sent == 1)
    stats_add_up(publisher)


async def test_while_the_payment_service_fails_creates_do_not_wait_at_all(
    serve_app: Callable[..., Awaitable[Any]],
) -> None:
    ledger = GatedLedger()
    ledger.error = Unavailable("down", reason="PAYMENT_SERVICE_UNAVAILABLE")
    rpc = await serve_app(ledger, facts_wait=LONG_WAIT)
    publisher = rpc.app.facts
    async with running(publisher):
        assert publisher.healthy
        _, took = await timed(rpc)  # waits only for the call to fail
        assert took < LONG_WAIT and publisher.stats.failed_calls == 1
        assert not publisher.healthy

        # From now on every call hangs: a create that waited would take LONG_WAIT.
        ledger.error = None
        ledger.gate.clear()
        for _ in range(3):
            _, took = await timed(rpc)
            assert took < 1.0
        await eventually(lambda: len(ledger.batches) >= 2)  # after the backoff: it hangs
        _, took = await timed(rpc)
        assert took < 1.0
        assert publisher.waiting == 0 and not publisher.healthy

        ledger.gate.set()
        await eventually(lambda: publisher.healthy and publisher.queued == 0)
        made, _ = await timed(rpc)
        assert ledger.registered[-1] == made.id  # healthy again: it waited for the ack
    stats_add_up(publisher)


async def test_a_cap_of_zero_never_waits(serve_app: Callable[..., Awaitable[Any]]) -> None:
    ledger = GatedLedger()
    ledger.gate.clear()
    rpc = await serve_app(ledger, facts_wait=0)
    publisher = rpc.app.facts
    async with running(publisher):
        made, took = await timed(rpc)
        assert took < 1.0
        await eventually(lambda: ledger.registered == [made.id])
        assert publisher.stats.sent == 0  # answered while the call is in flight
        ledger.gate.set()
        await eventually(lambda: publisher.stats.sent == 1)
    assert publisher.waiting == 0


async def test_a_replayed_create_neither_publishes_nor_waits(
    serve_app: Callable[..., Awaitable[Any]],
) -> None:
    ledger = GatedLedger()
    rpc = await serve_app(ledger, facts_wait=LONG_WAIT)
    publisher = rpc.app.facts
    async with running(publisher):
        first = await create(rpc, request_id="k1")
        ledger.gate.clear()  # a create that waited now would take LONG_WAIT
        replay, took = await timed(rpc, request_id="k1")
        assert replay == first and took < 1.0
        assert publisher.stats.published == 1 and ledger.registered == [first.id]


async def test_a_create_whose_request_is_cancelled_leaves_the_publisher_working(
    serve_app: Callable[..., Awaitable[Any]],
) -> None:
    ledger = GatedLedger()
    ledger.gate.clear()
    rpc = await serve_app(ledger, facts_wait=LONG_WAIT)
    publisher = rpc.app.facts
    service = rpc.app.transactions

    async def create_directly() -> Any:
        return await service.create_transaction(
            Principal.merchant(M), amount=10, currency="USD", description="", metadata={}
        )

    async with running(publisher) as loop:
        gone = asyncio.create_task(create_directly())
        await eventually(lambda: len(ledger.batches) == 1 and publisher.waiting == 1)
        gone.cancel()  # the client went away while its create waited
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert publisher.waiting == 0 and not loop.done()
        ledger.gate.set()
        await eventually(lambda: publisher.stats.sent == 1)
        made = await create_directly()  # acknowledged as usual
        assert ledger.registered[-1] == made.id and publisher.stats.sent == 2
    stats_add_up(publisher)
