"""PaymentLedgerService.RegisterTransactions: transaction facts pushed ahead of the first
payment, so that CreatePayment needs no LookupTransaction; the lookup stays the fallback."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from generated.pi.payments.v1 import payments_pb2 as pb
from generated.pi.transactions.v1 import transactions_pb2 as tpb

M = "mer_register"


def facts(
    transaction_id: str, merchant_id: str = M, amount: int = 1000, currency: str = "USD"
) -> pb.TransactionFacts:
    return pb.TransactionFacts(
        transaction_id=transaction_id, merchant_id=merchant_id, amount=amount, currency=currency
    )


async def register(
    mesh: Any, *transactions: pb.TransactionFacts
) -> pb.RegisterTransactionsResponse:
    return await mesh.payment_ledger.RegisterTransactions(
        pb.RegisterTransactionsRequest(transactions=transactions), metadata=mesh.service
    )


async def eventually(condition: Any, timeout: float = 10.0) -> None:
    """Poll `condition()` (a coroutine function) until it is true; TimeoutError if not."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.01)


async def test_register_transactions_requires_the_service_credential(mesh: Any) -> None:
    request = pb.RegisterTransactionsRequest(transactions=[facts("txn_a")])
    as_merchant = await mesh.call_error(
        mesh.payment_ledger.RegisterTransactions(request, metadata=mesh.merchant(M))
    )
    assert as_merchant.code == grpc.StatusCode.PERMISSION_DENIED
    anonymous = await mesh.call_error(mesh.payment_ledger.RegisterTransactions(request))
    assert anonymous.code == grpc.StatusCode.UNAUTHENTICATED
    assert (await mesh.count_rows())["transaction_refs"] == 0


async def test_register_transactions_reports_every_invalid_field_and_writes_nothing(
    mesh: Any,
) -> None:
    checks = [
        ([], ["transactions"]),
        ([facts(f"txn_{i}") for i in range(1001)], ["transactions"]),
        (
            [
                facts("txn_ok"),
                facts("", merchant_id="", amount=0, currency="usd"),
                facts("txn ws", amount=-1, currency="XXX"),
                facts("txn_ok"),
                facts("x" * 65, merchant_id="m" * 65, amount=10**15 + 1),
            ],
            [
                "transactions[1].transaction_id",
                "transactions[1].merchant_id",
                "transactions[1].amount",
                "transactions[1].currency",
                "transactions[2].transaction_id",
                "transactions[2].amount",
                "transactions[2].currency",
                "transactions[3].transaction_id",
                "transactions[4].transaction_id",
                "transactions[4].merchant_id",
                "transactions[4].amount",
            ],
        ),
    ]
    for transactions, fields in checks:
        error = await mesh.call_error(register(mesh, *transactions))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert sorted(error.fields) == sorted(fields)
    assert (await mesh.count_rows())["transaction_refs"] == 0

    full = await register(mesh, *(facts(f"txn_{i}") for i in range(1000)))
    assert full.registered_count == 1000


async def test_registering_known_transactions_again_changes_nothing(mesh: Any) -> None:
    first = await register(mesh, facts("txn_1"), facts("txn_2", amount=5, currency="JPY"))
    assert (first.registered_count, list(first.conflicting_transaction_ids)) == (2, [])
    before = await mesh.ref("txn_1")

    again = await register(mesh, facts("txn_2", amount=5, currency="JPY"), facts("txn_3"))
    assert (again.registered_count, list(again.conflicting_transaction_ids)) == (1, [])
    assert await mesh.ref("txn_1") == before
    assert (await mesh.count_rows())["transaction_refs"] == 3


async def test_a_mismatching_registration_is_reported_and_never_overwrites_the_ref(
    mesh: Any,
) -> None:
    txn = await mesh.create_transaction(M, 1000)
    paid = await mesh.pay(M, txn.id, amount=400)  # the ref now holds captured money
    assert paid.status == pb.PAYMENT_STATUS_SUCCEEDED
    before = await mesh.ref(txn.id)
    assert before is not None and before["captured_amount"] == 400

    same = await register(mesh, facts(txn.id, amount=1000))
    assert (same.registered_count, list(same.conflicting_transaction_ids)) == (0, [])
    other = await register(
        mesh,
        facts(txn.id, amount=5000),
        facts("txn_new"),
        facts(txn.id.replace("txn", "txx"), merchant_id="mer_other"),
    )
    assert other.registered_count == 2
    assert list(other.conflicting_transaction_ids) == [txn.id]
    for changed in (
        facts(txn.id, merchant_id="mer_other"),
        facts(txn.id, currency="EUR"),
    ):
        response = await register(mesh, changed)
        assert list(response.conflicting_transaction_ids) == [txn.id]
    assert await mesh.ref(txn.id) == before

    # The payment service still holds the transaction's real facts.
    rest = await mesh.pay(M, txn.id)
    assert (rest.amount, rest.currency) == (600, "USD")
    over = await mesh.call_error(mesh.pay(M, txn.id, amount=1))
    assert over.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_registered_transaction_is_paid_without_a_lookup(
    mesh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = mesh.count_lookups(monkeypatch)
    pushed = await mesh.create_transaction(M, 2500, "EUR")
    not_pushed = await mesh.create_transaction(M, 700)
    registered = await register(mesh, facts(pushed.id, amount=2500, currency="EUR"))
    assert registered.registered_count == 1

    payment = await mesh.pay(M, pushed.id)
    assert (payment.status, payment.amount, payment.currency) == (
        pb.PAYMENT_STATUS_SUCCEEDED,
        2500,
        "EUR",
    )
    assert lookups == []
    # Another merchant still learns nothing of it.
    foreign = await mesh.call_error(mesh.pay("mer_thief", pushed.id))
    assert foreign.code == grpc.StatusCode.NOT_FOUND

    # The fallback: a transaction the payment service was not told about is looked up.
    fallback = await mesh.pay(M, not_pushed.id)
    assert fallback.status == pb.PAYMENT_STATUS_SUCCEEDED
    assert lookups == [not_pushed.id]

    await mesh.drain()
    for txn in (pushed, not_pushed):
        after = await mesh.assert_transaction_matches_payments(M, txn.id)
        assert after.status == tpb.TRANSACTION_STATUS_COMPLETED


async def test_registration_racing_first_payments_leaves_one_ref_per_transaction(
    mesh: Any,
) -> None:
    transactions = [await mesh.create_transaction(M, 900) for _ in range(8)]
    registration = register(mesh, *(facts(t.id, amount=900) for t in transactions))
    results = await asyncio.gather(
        registration, *(mesh.pay(M, t.id, amount=300) for t in transactions)
    )
    registered, payments = results[0], results[1:]
    assert list(registered.conflicting_transaction_ids) == []
    assert all(p.status == pb.PAYMENT_STATUS_SUCCEEDED for p in payments)
    assert (await mesh.count_rows())["transaction_refs"] == len(transactions)
    for txn in transactions:
        ref = await mesh.ref(txn.id)
        assert ref is not None and (ref["amount"], ref["captured_amount"]) == (900, 300)


async def test_new_transactions_are_pushed_so_their_first_payment_needs_no_lookup(
    mesh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = mesh.count_lookups(monkeypatch)
    mesh.start_facts_publisher()
    publisher = mesh.transactions_app.facts
    transactions = [await mesh.create_transaction(M, 1200, "GBP") for _ in range(5)]

    async def all_pushed() -> bool:
        return all([await mesh.ref(t.id) is not None for t in transactions])

    await eventually(all_pushed)
    assert publisher.stats.sent == 5 and publisher.stats.failed_calls == 0
    for txn in transactions:
        payment = await mesh.pay(M, txn.id)
        assert (payment.status, payment.amount) == (pb.PAYMENT_STATUS_SUCCEEDED, 1200)
    assert lookups == []
    await mesh.drain()
    for txn in transactions:
        await mesh.assert_transaction_matches_payments(M, txn.id)


async def test_a_cancelled_transaction_stays_closed_whether_pushed_before_or_after(
    mesh: Any,
) -> None:
    txn = await mesh.create_transaction(M, 800)
    await mesh.transactions.CancelTransaction(
        tpb.CancelTransactionRequest(id=txn.id), metadata=mesh.merchant(M)
    )
    late = await register(mesh, facts(txn.id, amount=800))  # a push that arrives late
    assert late.registered_count == 0
    ref = await mesh.ref(txn.id)
    assert ref is not None and ref["closed"] is True
    refused = await mesh.call_error(mesh.pay(M, txn.id))
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
