"""The transaction service over gRPC: generated stubs, real interceptors, real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from generated.pi.payments.v1 import payments_pb2, payments_pb2_grpc
from generated.pi.transactions.v1 import transactions_pb2 as pb
from pi.platform.kernel.errors import DomainError, FailedPrecondition, InvalidArgument
from pi.platform.runtime.clients import service_channel
from pi.platform.runtime.server import create_server
from pi.platform.runtime.status import error_from_rpc_error
from pi.transactions.adapters.payments_grpc import GrpcPaymentLedger
from pi.transactions.settings import TransactionsSettings


@dataclass(frozen=True)
class Failure:
    """What a failed call reported: code, ErrorInfo reason, BadRequest field paths."""

    code: grpc.StatusCode
    reason: str | None
    fields: list[str]


def rpc_error(exc: grpc.aio.AioRpcError) -> Failure:
    error = error_from_rpc_error(exc)
    violations = getattr(error, "violations", ())
    reason = error.reason if error is not None else None
    return Failure(exc.code(), reason, [v.field for v in violations])


USD_ORDER = pb.Transaction(amount=1999, currency="USD", description="Order 7", metadata={"o": "7"})


async def create(rpc: Any, merchant: str = "mer_alice", **kwargs: Any) -> Any:
    request = pb.CreateTransactionRequest(
        transaction=kwargs.pop("transaction", USD_ORDER), **kwargs
    )
    response = await rpc.transactions.CreateTransaction(request, metadata=rpc.merchant(merchant))
    return response.transaction


# Merchant API -----------------------------------------------------------------------------


async def test_create_get_list_cancel_over_grpc(rpc: Any) -> None:
    created = await create(rpc)
    assert created.id.startswith("txn_")
    assert created.status == pb.TRANSACTION_STATUS_PENDING
    assert (created.amount, created.currency, dict(created.metadata)) == (1999, "USD", {"o": "7"})
    assert created.create_time.ToDatetime() == created.update_time.ToDatetime()

    alice = rpc.merchant("mer_alice")
    got = await rpc.transactions.GetTransaction(
        pb.GetTransactionRequest(id=created.id), metadata=alice
    )
    assert got.transaction == created

    listed = await rpc.transactions.ListTransactions(pb.ListTransactionsRequest(), metadata=alice)
    assert [t.id for t in listed.transactions] == [created.id]
    assert listed.next_page_token == ""

    cancelled = await rpc.transactions.CancelTransaction(
        pb.CancelTransactionRequest(id=created.id), metadata=alice
    )
    assert cancelled.transaction.status == pb.TRANSACTION_STATUS_CANCELLED
    only_cancelled = await rpc.transactions.ListTransactions(
        pb.ListTransactionsRequest(status=pb.TRANSACTION_STATUS_CANCELLED), metadata=alice
    )
    assert [t.id for t in only_cancelled.transactions] == [created.id]


async def test_calls_without_a_valid_merchant_token_are_refused(count_rows: Any, rpc: Any) -> None:
    request = pb.CreateTransactionRequest(transaction=USD_ORDER)
    cases = [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer not-a-jwt"),), grpc.StatusCode.UNAUTHENTICATED),
        (rpc.admin, grpc.StatusCode.PERMISSION_DENIED),
        (rpc.service, grpc.StatusCode.PERMISSION_DENIED),
    ]
    for metadata, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rpc.transactions.CreateTransaction(request, metadata=metadata)
        assert caught.value.code() == code
    assert await count_rows("transactions") == 0


async def test_bad_input_reports_every_field_violation_and_writes_nothing(
    count_rows: Any,
    rpc: Any,
) -> None:
    bad = pb.Transaction(
        amount=-1,
        currency="usd",
        description="tab\tok but bell \x07 is not",
        metadata={**{f"k{i}": "v" for i in range(50)}, "x" * 41: "y" * 501},
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(rpc, transaction=bad, request_id="bad-1")
    error = rpc_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    assert set(error.fields) == {
        "transaction.amount",
        "transaction.currency",
        "transaction.description",
        "transaction.metadata",
    }
    missing = pb.CreateTransactionRequest()  # no transaction at all
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc.transactions.CreateTransaction(missing, metadata=rpc.merchant("mer_alice"))
    assert set(rpc_error(caught.value).fields) == {"transaction.amount", "transaction.currency"}
    assert await count_rows("transactions") == 0
    assert await count_rows("idempotency_keys") == 0


async def test_another_merchants_transaction_is_not_found_over_grpc(rpc: Any) -> None:
    created = await create(rpc, "mer_alice")
    bob = rpc.merchant("mer_bob")
    calls = [
        rpc.transactions.GetTransaction(pb.GetTransactionRequest(id=created.id), metadata=bob),
        rpc.transactions.CancelTransaction(
            pb.CancelTransactionRequest(id=created.id), metadata=bob
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        error = rpc_error(caught.value)
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "TRANSACTION_NOT_FOUND")
    listed = await rpc.transactions.ListTransactions(pb.ListTransactionsRequest(), metadata=bob)
    assert list(listed.transactions) == []


async def test_idempotent_create_over_grpc(count_rows: Any, rpc: Any) -> None:
    alice = rpc.merchant("mer_alice")
    request = pb.CreateTransactionRequest(transaction=USD_ORDER, request_id="order-7")
    first = await rpc.transactions.CreateTransaction(request, metadata=alice)
    # The Idempotency-Key header is the same key.
    by_header = await rpc.transactions.CreateTransaction(
        pb.CreateTransactionRequest(transaction=USD_ORDER),
        metadata=(*alice, ("idempotency-key", "order-7")),
    )
    assert by_header.SerializeToString() == first.SerializeToString()

    changed = pb.CreateTransactionRequest(
        transaction=pb.Transaction(amount=2000, currency="USD"), request_id="order-7"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc.transactions.CreateTransaction(changed, metadata=alice)
    error = rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc.transactions.CreateTransaction(
            request, metadata=(*alice, ("idempotency-key", "something-else"))
        )
    assert rpc_error(caught.value).fields == ["request_id"]
    assert await count_rows("transactions") == 1


async def test_fifty_concurrent_duplicate_creates_make_one_transaction(
    count_rows: Any,
    rpc: Any,
) -> None:
    alice = rpc.merchant("mer_alice")
    request = pb.CreateTransactionRequest(transaction=USD_ORDER, request_id="burst-1")
    responses = await asyncio.gather(
        *(rpc.transactions.CreateTransaction(request, metadata=alice) for _ in range(50))
    )
    assert len({r.SerializeToString() for r in responses}) == 1
    assert await count_rows("transactions") == 1


def _ts(value: datetime) -> Timestamp:
    timestamp = Timestamp()
    timestamp.FromDatetime(value)
    return timestamp


async def test_list_over_grpc_pages_filters_and_validates(rpc: Any) -> None:
    alice = rpc.merchant("mer_alice")
    made = [await create(rpc) for _ in range(5)]
    newest_first = [t.id for t in reversed(made)]
    ids: list[str] = []
    token = ""
    while True:
        page = await rpc.transactions.ListTransactions(
            pb.ListTransactionsRequest(page_size=2, page_token=token), metadata=alice
        )
        ids += [t.id for t in page.transactions]
        token = page.next_page_token
        if not token:
            break
    assert ids == newest_first

    since_third = await rpc.transactions.ListTransactions(
        pb.ListTransactionsRequest(create_time_start=made[2].create_time), metadata=alice
    )
    assert [t.id for t in since_third.transactions] == newest_first[:3]
    before_third = await rpc.transactions.ListTransactions(
        pb.ListTransactionsRequest(create_time_end=made[2].create_time), metadata=alice
    )
    assert [t.id for t in before_third.transactions] == newest_first[3:]

    first_page = await rpc.transactions.ListTransactions(
        pb.ListTransactionsRequest(page_size=1), metadata=alice
    )
    invalid = [
        (pb.ListTransactionsRequest(status=99), "status"),  # type: ignore[arg-type]
        (pb.ListTransactionsRequest(page_size=-3), "page_size"),
        (
            pb.ListTransactionsRequest(
                page_token=first_page.next_page_token, status=pb.TRANSACTION_STATUS_PENDING
            ),
            "page_token",
        ),
        (
            pb.ListTransactionsRequest(
                create_time_start=_ts(datetime(2031, 1, 1, tzinfo=UTC)),
                create_time_end=_ts(datetime(2030, 1, 1, tzinfo=UTC)),
            ),
            "create_time_end",
        ),
        (
            pb.ListTransactionsRequest(create_time_start=Timestamp(seconds=10**12)),
            "create_time_start",
        ),
    ]
    for request, field_path in invalid:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rpc.transactions.ListTransactions(request, metadata=alice)
        error = rpc_error(caught.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.fields == [field_path]


# Ledger API -------------------------------------------------------------------------------


def _movement(transaction: Any, kind: int, id: str, **deltas: int) -> pb.Movement:
    return pb.Movement(
        id=id,
        merchant_id=transaction.merchant_id,
        transaction_id=transaction.id,
        payment_id="pay_1",
        kind=kind,  # type: ignore[arg-type]
        occur_time=_ts(datetime.now(UTC)),
        **deltas,
    )


async def test_ledger_is_for_the_service_credential_only(count_rows: Any, rpc: Any) -> None:
    created = await create(rpc)
    lookup = pb.LookupTransactionRequest(merchant_id="mer_alice", transaction_id=created.id)
    apply = pb.ApplyMovementRequest(
        movement=_movement(created, pb.MOVEMENT_KIND_AUTHORIZATION, "mov_1", authorized_delta=5)
    )
    for metadata in (rpc.merchant("mer_alice"), rpc.admin):
        for call in (
            rpc.ledger.LookupTransaction(lookup, metadata=metadata),
            rpc.ledger.ApplyMovement(apply, metadata=metadata),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc.ledger.LookupTransaction(lookup)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    found = await rpc.ledger.LookupTransaction(lookup, metadata=rpc.service)
    assert found.transaction == created
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc.ledger.LookupTransaction(
            pb.LookupTransactionRequest(merchant_id="mer_bob", transaction_id=created.id),
            metadata=rpc.service,
        )
    assert rpc_error(caught.value).reason == "TRANSACTION_NOT_FOUND"
    assert await count_rows("applied_movements") == 0


async def test_apply_movement_over_grpc_is_idempotent_and_checked(
    count_rows: Any, rpc: Any
) -> None:
    created = await create(rpc)
    auth = pb.ApplyMovementRequest(
        movement=_movement(created, pb.MOVEMENT_KIND_AUTHORIZATION, "mov_1", authorized_delta=1999)
    )
    first = await rpc.ledger.ApplyMovement(auth, metadata=rpc.service)
    again = await rpc.ledger.ApplyMovement(auth, metadata=rpc.service)
    assert first.transaction.status == pb.TRANSACTION_STATUS_AUTHORIZED
    assert again.transaction == first.transaction
    assert first.transaction.authorized_amount == 1999

    over = pb.ApplyMovementRequest(
        movement=_movement(created, pb.MOVEMENT_KIND_AUTHORIZATION, "mov_2", authorized_delta=1)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc.ledger.ApplyMovement(over, metadata=rpc.service)
    error = rpc_error(caught.value)
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "LEDGER_INVARIANT_VIOLATED",
    )

    malformed = pb.ApplyMovementRequest(movement=pb.Movement(id="mov_3"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc.ledger.ApplyMovement(malformed, metadata=rpc.service)
    error = rpc_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.fields) == {"movement.kind", "movement.occur_time"}
    assert await count_rows("applied_movements") == 1


# Cancel through the gRPC payment ledger adapter -------------------------------------------


@dataclass
class FakePaymentLedgerServicer(payments_pb2_grpc.PaymentLedgerServiceServicer):
    """A payment service that answers CloseTransaction as told and records the calls."""

    error: DomainError | None = None
    delay: float = 0.0
    calls: list[tuple[payments_pb2.CloseTransactionRequest, str | None, float | None]] = field(
        default_factory=list
    )

    async def CloseTransaction(
        self, request: payments_pb2.CloseTransactionRequest, context: Any
    ) -> payments_pb2.CloseTransactionResponse:
        authorization = dict(context.invocation_metadata()).get("authorization")
        self.calls.append((request, authorization, context.time_remaining()))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return payments_pb2.CloseTransactionResponse(
            movement_id=f"mov_cancel_{request.transaction_id}", voided_payment_ids=["pay_9"]
        )


@dataclass
class PaymentsServer:
    servicer: FakePaymentLedgerServicer
    server: grpc.aio.Server
    target: str


@pytest.fixture
async def payments_server() -> AsyncIterator[PaymentsServer]:
    servicer = FakePaymentLedgerServicer()
    server = create_server()
    payments_pb2_grpc.add_PaymentLedgerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield PaymentsServer(servicer, server, f"127.0.0.1:{port}")
    await server.stop(None)


@pytest.fixture
async def wired(
    migrated: TransactionsSettings, serve_app: Any, payments_server: PaymentsServer
) -> AsyncIterator[Any]:
    """The service with its real gRPC payment ledger adapter, pointed at the fake server."""
    channel = service_channel(payments_server.target, service_token=migrated.service_token)
    yield await serve_app(GrpcPaymentLedger(channel, timeout=0.5))
    await channel.close()


async def _cancel(rpc: Any, transaction_id: str) -> Any:
    return await rpc.transactions.CancelTransaction(
        pb.CancelTransactionRequest(id=transaction_id), metadata=rpc.merchant("mer_alice")
    )


async def test_cancel_calls_close_transaction_with_the_service_token_and_a_deadline(
    count_rows: Any, wired: Any, payments_server: PaymentsServer
) -> None:
    created = await create(wired, transaction=pb.Transaction(amount=300, currency="KWD"))
    cancelled = await _cancel(wired, created.id)
    assert cancelled.transaction.status == pb.TRANSACTION_STATUS_CANCELLED
    [(request, authorization, remaining)] = payments_server.servicer.calls
    assert (request.merchant_id, request.transaction_id, request.amount, request.currency) == (
        "mer_alice",
        created.id,
        300,
        "KWD",
    )
    assert authorization == f"Bearer {wired.app.settings.service_token}"
    # grpc-timeout travels in whole units and the server re-derives its deadline, so
    # the remaining time can read a hair above the 0.5 s the client set.
    assert remaining is not None and 0 < remaining <= 0.55
    assert await count_rows("applied_movements", id=f"mov_cancel_{created.id}") == 1


async def test_the_payment_services_refusal_reaches_the_merchant_with_its_reason(
    wired: Any, payments_server: PaymentsServer
) -> None:
    created = await create(wired)
    payments_server.servicer.error = FailedPrecondition(
        "Money was captured.", reason="TRANSACTION_CAPTURED"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _cancel(wired, created.id)
    error = rpc_error(caught.value)
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TRANSACTION_CAPTURED",
    )


async def test_cancel_is_unavailable_and_changes_nothing_while_payments_is_down(
    count_rows: Any, wired: Any, payments_server: PaymentsServer
) -> None:
    created = await create(wired)
    await payments_server.server.stop(None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _cancel(wired, created.id)
    error = rpc_error(caught.value)
    assert (error.code, error.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "PAYMENT_SERVICE_UNAVAILABLE",
    )
    got = await wired.transactions.GetTransaction(
        pb.GetTransactionRequest(id=created.id), metadata=wired.merchant("mer_alice")
    )
    assert got.transaction == created
    assert await count_rows("applied_movements") == 0


async def test_a_slow_payment_service_hits_the_deadline(
    count_rows: Any, wired: Any, payments_server: PaymentsServer
) -> None:
    created = await create(wired)
    payments_server.servicer.delay = 2.0
    started = asyncio.get_running_loop().time()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _cancel(wired, created.id)
    assert asyncio.get_running_loop().time() - started < 1.5
    assert rpc_error(caught.value).code == grpc.StatusCode.UNAVAILABLE
    assert await count_rows("applied_movements") == 0


async def test_an_unexpected_payment_service_answer_is_internal_without_details(
    wired: Any, payments_server: PaymentsServer
) -> None:
    created = await create(wired)
    payments_server.servicer.error = InvalidArgument.field("amount", "secret internals")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _cancel(wired, created.id)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internals" not in (caught.value.details() or "")
