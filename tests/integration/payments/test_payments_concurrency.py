"""Idempotency and money limits under concurrency, and delivery while the transaction
service is down (real PostgreSQL, both services in-process)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from generated.pi.payments.v1 import payments_pb2 as pb

M = "mer_concurrency"


async def test_one_idempotency_key_on_100_concurrent_creates_makes_one_payment(
    mesh: Any,
) -> None:
    txn = await mesh.create_transaction(M, 10_000)
    request = pb.CreatePaymentRequest(
        payment=mesh.card_payment(txn.id, amount=2500), request_id="create-once"
    )
    md = mesh.merchant(M)
    responses = await asyncio.gather(
        *(mesh.payments.CreatePayment(request, metadata=md) for _ in range(100))
    )
    serialized = {r.SerializeToString(deterministic=True) for r in responses}
    assert len(serialized) == 1
    assert responses[0].payment.status == pb.PAYMENT_STATUS_SUCCEEDED
    counts = await mesh.count_rows()
    assert counts["payments"] == 1
    assert counts["idempotency_keys"] == 1
    await mesh.drain()
    txn_after = await mesh.assert_transaction_matches_payments(M, txn.id)
    assert txn_after.captured_amount == 2500


async def test_concurrent_duplicates_of_a_timed_out_payment_agree(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 1000)
    request = pb.CreatePaymentRequest(
        payment=mesh.card_payment(txn.id, mesh.TIMEOUT_CARD), request_id="unknown-outcome"
    )
    md = mesh.merchant(M)
    responses = await asyncio.gather(
        *(mesh.payments.CreatePayment(request, metadata=md) for _ in range(20))
    )
    assert len({r.SerializeToString(deterministic=True) for r in responses}) == 1
    assert (await mesh.count_rows())["payments"] == 1


async def test_idempotency_key_replays_and_rejects_a_different_request(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 1000)
    md = mesh.merchant(M)
    first = await mesh.pay(M, txn.id, amount=100, request_id="k1")
    replay = await mesh.pay(M, txn.id, amount=100, request_id="k1")
    assert replay == first
    # The header is the same key.
    header = await mesh.payments.CreatePayment(
        pb.CreatePaymentRequest(payment=mesh.card_payment(txn.id, amount=100)),
        metadata=(*md, ("idempotency-key", "k1")),
    )
    assert header.payment == first
    reused = await mesh.call_error(mesh.pay(M, txn.id, amount=200, request_id="k1"))
    assert reused.code == grpc.StatusCode.ALREADY_EXISTS
    assert reused.reason == "IDEMPOTENCY_KEY_REUSED"
    # Finding 8: nothing derived from the CVC is kept with the key (PCI DSS 3.3.1.2), so
    # another CVC is the same request and replays; another card is another request.
    other_cvc = pb.CreatePaymentRequest(
        payment=mesh.card_payment(txn.id, amount=100), request_id="k1"
    )
    other_cvc.payment.card.cvc = "999"
    assert (await mesh.payments.CreatePayment(other_cvc, metadata=md)).payment == first
    other_card = pb.CreatePaymentRequest(
        payment=mesh.card_payment(txn.id, amount=100), request_id="k1"
    )
    other_card.payment.card.number = "5555555555554444"
    error = await mesh.call_error(mesh.payments.CreatePayment(other_card, metadata=md))
    assert error.reason == "IDEMPOTENCY_KEY_REUSED"
    # Keys are per merchant.
    other_txn = await mesh.create_transaction("mer_other", 1000)
    theirs = await mesh.pay("mer_other", other_txn.id, amount=100, request_id="k1")
    assert theirs.id != first.id
    both = await mesh.call_error(
        mesh.payments.CreatePayment(
            pb.CreatePaymentRequest(payment=mesh.card_payment(txn.id), request_id="a"),
            metadata=(*md, ("idempotency-key", "b")),
        )
    )
    assert both.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (await mesh.count_rows())["payments"] == 2


async def test_capture_cancel_and_refund_replay_with_their_key(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 1000)
    a = await mesh.pay(M, txn.id, amount=400, manual=True)
    b = await mesh.pay(M, txn.id, amount=400, manual=True)
    captured = await mesh.capture(M, a.id, amount=300, request_id="cap")
    assert await mesh.capture(M, a.id, amount=300, request_id="cap") == captured
    md = mesh.merchant(M)
    cancel = pb.CancelPaymentRequest(id=b.id, request_id="void")
    cancelled = (await mesh.payments.CancelPayment(cancel, metadata=md)).payment
    assert (await mesh.payments.CancelPayment(cancel, metadata=md)).payment == cancelled
    refund = await mesh.refund(M, a.id, amount=100, request_id="ref")
    assert await mesh.refund(M, a.id, amount=100, request_id="ref") == refund
    reused = await mesh.call_error(mesh.refund(M, a.id, amount=50, request_id="ref"))
    assert reused.reason == "IDEMPOTENCY_KEY_REUSED"
    counts = await mesh.count_rows()
    assert counts["refunds"] == 1
    await mesh.drain()
    txn_after = await mesh.assert_transaction_matches_payments(M, txn.id)
    assert txn_after.refunded_amount == 100


async def test_refunds_never_exceed_captured_amount_under_concurrency(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 10_000)
    payment = await mesh.pay(M, txn.id)
    md = mesh.merchant(M)

    async def refund(i: int) -> Any:
        try:
            return await mesh.payments.RefundPayment(
                pb.RefundPaymentRequest(id=payment.id, amount=300, reason=f"refund {i}"),
                metadata=md,
            )
        except grpc.aio.AioRpcError as exc:
            return mesh.rpc_error(exc)

    results = await asyncio.gather(*(refund(i) for i in range(50)))
    succeeded = [r for r in results if isinstance(r, pb.RefundPaymentResponse)]
    rejected = [r for r in results if not isinstance(r, pb.RefundPaymentResponse)]
    assert len(succeeded) == 33  # 33 * 300 = 9900 <= 10000 < 34 * 300
    assert len(rejected) == 17
    for error in rejected:
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert error.reason == "AMOUNT_EXCEEDS_REFUNDABLE"
        assert error.metadata["refundable"] == "100"
    got = await mesh.payments.GetPayment(pb.GetPaymentRequest(id=payment.id), metadata=md)
    assert got.payment.refunded_amount == 9900
    assert (await mesh.count_rows())["refunds"] == 33
    await mesh.drain()
    txn_after = await mesh.assert_transaction_matches_payments(M, txn.id)
    assert txn_after.refunded_amount == 9900


async def test_movements_made_while_the_transaction_service_is_down_arrive_exactly_once(
    mesh: Any,
) -> None:
    transactions = [await mesh.create_transaction(M, 1000) for _ in range(4)]
    # Learn the refs while the transaction service is up.
    for txn in transactions:
        await mesh.pay(M, txn.id, mesh.DECLINE_CARD, amount=10)
    await mesh.drain()

    await mesh.stop_transactions()
    made: list[Any] = []
    for txn in transactions:
        auto = await mesh.pay(M, txn.id, amount=300)
        manual = await mesh.pay(M, txn.id, amount=400, manual=True)
        voided = await mesh.pay(M, txn.id, amount=100, manual=True)
        await mesh.capture(M, manual.id, amount=250)
        await mesh.cancel(M, voided.id)
        await mesh.refund(M, auto.id, amount=120)
        await mesh.refund(M, auto.id, amount=30)
        await mesh.pay(M, txn.id, mesh.INSUFFICIENT_FUNDS_CARD, amount=50)
        made.extend([auto, manual, voided])
    # Let the dispatcher try (and back off) while the service is down.
    await asyncio.sleep(0.5)
    assert await mesh.payments_app.outbox.undelivered_count() > 0

    await mesh.start_transactions()
    await mesh.drain(timeout=30)
    for txn in transactions:
        after = await mesh.assert_transaction_matches_payments(M, txn.id)
        assert (after.authorized_amount, after.captured_amount, after.refunded_amount) == (
            550,
            550,
            150,
        )
    # Delivering everything again changes nothing (the transaction service dedups).
    async with mesh.payments_engine.begin() as conn:
        await conn.exec_driver_sql("UPDATE outbox SET delivered_time = NULL")
    await mesh.drain(timeout=30)
    for txn in transactions:
        again = await mesh.assert_transaction_matches_payments(M, txn.id)
        assert (again.authorized_amount, again.captured_amount, again.refunded_amount) == (
            550,
            550,
            150,
        )


async def test_another_merchants_payments_are_not_found(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 1000)
    held = await mesh.pay(M, txn.id, amount=400, manual=True)
    captured = await mesh.pay(M, txn.id, amount=400)
    intruder = mesh.merchant("mer_intruder")
    p = mesh.payments
    for call in (
        p.GetPayment(pb.GetPaymentRequest(id=held.id), metadata=intruder),
        p.CapturePayment(pb.CapturePaymentRequest(id=held.id), metadata=intruder),
        p.CancelPayment(pb.CancelPaymentRequest(id=held.id), metadata=intruder),
        p.RefundPayment(pb.RefundPaymentRequest(id=captured.id), metadata=intruder),
    ):
        error = await mesh.call_error(call)
        assert error.code == grpc.StatusCode.NOT_FOUND
        assert error.reason == "PAYMENT_NOT_FOUND"
    listed = await p.ListPayments(pb.ListPaymentsRequest(transaction_id=txn.id), metadata=intruder)
    assert list(listed.payments) == []
    everything = await p.ListPayments(pb.ListPaymentsRequest(), metadata=intruder)
    assert list(everything.payments) == []
    # Paying another merchant's transaction: NOT_FOUND, whether or not its ref is known.
    unknown_txn = await mesh.create_transaction(M, 1000)
    for transaction_id in (txn.id, unknown_txn.id):
        error = await mesh.call_error(mesh.pay("mer_intruder", transaction_id))
        assert error.code == grpc.StatusCode.NOT_FOUND
        assert error.reason == "TRANSACTION_NOT_FOUND"
    # Nothing changed for the owner.
    mine = await p.GetPayment(pb.GetPaymentRequest(id=held.id), metadata=mesh.merchant(M))
    assert mine.payment.status == pb.PAYMENT_STATUS_REQUIRES_CAPTURE
    assert (await mesh.count_rows())["payments"] == 2
