"""Payment flows over gRPC against the real transaction service (PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import grpc

from generated.pi.payments.v1 import payments_pb2 as pb
from generated.pi.transactions.v1 import transactions_pb2 as tpb

M = "mer_flows"
APPROVE_CARD = "4242424242424242"
DECLINE_CARD = "4000000000000002"
INSUFFICIENT_FUNDS_CARD = "4000000000009995"
TIMEOUT_CARD = "4000000000000119"
MASTERCARD = "5555555555554444"
EXP_YEAR = dt.datetime.now(dt.UTC).year + 3


async def test_card_success_captures_automatically_and_completes_the_transaction(
    mesh: Any,
) -> None:
    txn = await mesh.create_transaction(M, 5000)
    payment = await mesh.pay(M, txn.id)
    assert payment.status == pb.PAYMENT_STATUS_SUCCEEDED
    assert payment.amount == 5000  # defaults to what remains
    assert payment.captured_amount == 5000
    assert payment.currency == "USD"
    assert payment.merchant_id == M and payment.transaction_id == txn.id
    assert payment.id.startswith("pay_")
    assert payment.card.number == "" and payment.card.cvc == ""
    assert payment.card.last4 == "4242"
    assert payment.card.brand == pb.CARD_BRAND_VISA
    assert len(payment.card.fingerprint) == 32
    assert (payment.card.exp_month, payment.card.exp_year) == (12, EXP_YEAR)
    assert payment.failure_reason == pb.PAYMENT_FAILURE_REASON_UNSPECIFIED
    await mesh.drain()
    after = await mesh.assert_transaction_matches_payments(M, txn.id)
    assert after.status == tpb.TRANSACTION_STATUS_COMPLETED


async def test_same_card_has_the_same_fingerprint_and_brands_are_read(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 300)
    first = await mesh.pay(M, txn.id, amount=100)
    second = await mesh.pay(M, txn.id, amount=100)
    master = await mesh.pay(M, txn.id, MASTERCARD, amount=100)
    assert first.card.fingerprint == second.card.fingerprint
    assert master.card.fingerprint != first.card.fingerprint
    assert master.card.brand == pb.CARD_BRAND_MASTERCARD


async def test_a_decline_is_a_failed_payment_not_an_error(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 1000)
    declined = await mesh.pay(M, txn.id, DECLINE_CARD)
    assert declined.status == pb.PAYMENT_STATUS_FAILED
    assert declined.failure_reason == pb.PAYMENT_FAILURE_REASON_CARD_DECLINED
    assert declined.captured_amount == 0
    poor = await mesh.pay(M, txn.id, INSUFFICIENT_FUNDS_CARD)
    assert poor.status == pb.PAYMENT_STATUS_FAILED
    assert poor.failure_reason == pb.PAYMENT_FAILURE_REASON_INSUFFICIENT_FUNDS
    await mesh.drain()
    after = await mesh.assert_transaction_matches_payments(M, txn.id)
    assert after.status == tpb.TRANSACTION_STATUS_FAILED
    # A failed payment holds nothing: the whole amount can still be paid.
    paid = await mesh.pay(M, txn.id)
    assert paid.amount == 1000 and paid.status == pb.PAYMENT_STATUS_SUCCEEDED


async def test_a_processor_timeout_stays_processing_until_the_reconciler_settles_it(
    mesh: Any,
) -> None:
    txn = await mesh.create_transaction(M, 1000)
    payment = await mesh.pay(M, txn.id, TIMEOUT_CARD, amount=600)
    assert payment.status == pb.PAYMENT_STATUS_PROCESSING
    # The held amount is reserved while the outcome is unknown.
    error = await mesh.call_error(
        mesh.payments.CreatePayment(
            pb.CreatePaymentRequest(
                payment=pb.Payment(
                    transaction_id=txn.id,
                    amount=500,
                    method=pb.PAYMENT_METHOD_TYPE_CARD,
                    card=pb.Card(number=APPROVE_CARD, exp_month=1, exp_year=EXP_YEAR, cvc="999"),
                )
            ),
            metadata=mesh.merchant(M),
        )
    )
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "AMOUNT_EXCEEDS_REMAINING"
    assert error.metadata["remaining"] == "400"

    settled = await mesh.payments_app.reconciler.run_once(grace=dt.timedelta(0))
    assert settled == 1
    got = await mesh.payments.GetPayment(
        pb.GetPaymentRequest(id=payment.id), metadata=mesh.merchant(M)
    )
    assert got.payment.status == pb.PAYMENT_STATUS_FAILED
    assert got.payment.failure_reason == pb.PAYMENT_FAILURE_REASON_PROCESSOR_UNAVAILABLE
    # The hold was released.
    paid = await mesh.pay(M, txn.id)
    assert paid.amount == 1000
    await mesh.drain()
    await mesh.assert_transaction_matches_payments(M, txn.id)


async def test_bank_transfers_and_wallets_settle_through_the_reconciler(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 900)
    bank = await mesh.payments.CreatePayment(
        pb.CreatePaymentRequest(
            payment=pb.Payment(
                transaction_id=txn.id,
                amount=400,
                method=pb.PAYMENT_METHOD_TYPE_BANK_TRANSFER,
                bank_transfer=pb.BankTransfer(
                    account_holder_name="Ada Lovelace", account_number="DE89370400440532013000"
                ),
            )
        ),
        metadata=mesh.merchant(M),
    )
    wallet = await mesh.payments.CreatePayment(
        pb.CreatePaymentRequest(
            payment=pb.Payment(
                transaction_id=txn.id,
                method=pb.PAYMENT_METHOD_TYPE_WALLET,
                wallet=pb.Wallet(type=pb.WALLET_TYPE_APPLE_PAY, token="wallet-token-SECRET-9f8e7d"),
                capture_mode=pb.CAPTURE_MODE_MANUAL,
            )
        ),
        metadata=mesh.merchant(M),
    )
    assert bank.payment.status == pb.PAYMENT_STATUS_PROCESSING
    assert bank.payment.bank_transfer.account_last4 == "3000"
    assert bank.payment.bank_transfer.account_number == ""
    assert bank.payment.bank_transfer.account_holder_name == "Ada Lovelace"
    assert wallet.payment.status == pb.PAYMENT_STATUS_PROCESSING
    assert wallet.payment.amount == 500
    assert wallet.payment.wallet.token == ""
    assert wallet.payment.wallet.type == pb.WALLET_TYPE_APPLE_PAY

    assert await mesh.payments_app.reconciler.run_once(grace=dt.timedelta(0)) == 2
    md = mesh.merchant(M)
    got_bank = await mesh.payments.GetPayment(pb.GetPaymentRequest(id=bank.payment.id), metadata=md)
    got_wallet = await mesh.payments.GetPayment(
        pb.GetPaymentRequest(id=wallet.payment.id), metadata=md
    )
    assert got_bank.payment.status == pb.PAYMENT_STATUS_SUCCEEDED
    assert got_bank.payment.captured_amount == 400
    assert got_wallet.payment.status == pb.PAYMENT_STATUS_REQUIRES_CAPTURE
    await mesh.drain()
    txn_after = await mesh.assert_transaction_matches_payments(M, txn.id)
    assert txn_after.authorized_amount == 900 and txn_after.captured_amount == 400


async def test_manual_capture_then_partial_capture_releases_the_rest(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 1000)
    first = await mesh.pay(M, txn.id, amount=700, manual=True)
    assert first.status == pb.PAYMENT_STATUS_REQUIRES_CAPTURE
    assert first.captured_amount == 0
    await mesh.drain()
    during = await mesh.assert_transaction_matches_payments(M, txn.id)
    assert during.status == tpb.TRANSACTION_STATUS_AUTHORIZED
    assert during.authorized_amount == 700

    too_much = await mesh.call_error(mesh.capture(M, first.id, amount=701))
    assert too_much.code == grpc.StatusCode.FAILED_PRECONDITION
    assert too_much.reason == "AMOUNT_EXCEEDS_AUTHORIZED"

    captured = await mesh.capture(M, first.id, amount=300)
    assert captured.status == pb.PAYMENT_STATUS_SUCCEEDED
    assert captured.captured_amount == 300 and captured.amount == 700
    again = await mesh.call_error(mesh.capture(M, first.id))
    assert again.reason == "PAYMENT_NOT_CAPTURABLE"

    # The released 400 is payable again: 1000 - 300 captured.
    rest = await mesh.pay(M, txn.id, manual=True)
    assert rest.amount == 700
    full = await mesh.capture(M, rest.id)
    assert full.captured_amount == 700
    await mesh.drain()
    after = await mesh.assert_transaction_matches_payments(M, txn.id)
    assert (after.authorized_amount, after.captured_amount) == (1000, 1000)
    assert after.status == tpb.TRANSACTION_STATUS_COMPLETED


async def test_cancel_voids_an_authorization(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 800)
    payment = await mesh.pay(M, txn.id, manual=True)
    cancelled = await mesh.cancel(M, payment.id)
    assert cancelled.status == pb.PAYMENT_STATUS_CANCELLED
    again = await mesh.call_error(mesh.cancel(M, payment.id))
    assert again.code == grpc.StatusCode.FAILED_PRECONDITION
    assert again.reason == "PAYMENT_NOT_CANCELLABLE"
    captured = await mesh.pay(M, txn.id)
    not_cancellable = await mesh.call_error(mesh.cancel(M, captured.id))
    assert not_cancellable.reason == "PAYMENT_NOT_CANCELLABLE"
    await mesh.drain()
    after = await mesh.assert_transaction_matches_payments(M, txn.id)
    assert after.authorized_amount == 800 and after.captured_amount == 800


async def test_partial_refunds_repeat_until_everything_is_refunded(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 1000)
    payment = await mesh.pay(M, txn.id)
    first = await mesh.refund(M, payment.id, amount=300)
    assert first.refund.amount == 300 and first.refund.id.startswith("ref_")
    assert first.refund.status == pb.REFUND_STATUS_SUCCEEDED
    assert first.refund.currency == "USD"
    assert first.payment.refunded_amount == 300
    assert first.payment.status == pb.PAYMENT_STATUS_SUCCEEDED
    await mesh.drain()
    partially = await mesh.assert_transaction_matches_payments(M, txn.id)
    assert partially.status == tpb.TRANSACTION_STATUS_PARTIALLY_REFUNDED

    over = await mesh.call_error(mesh.refund(M, payment.id, amount=701))
    assert over.code == grpc.StatusCode.FAILED_PRECONDITION
    assert over.reason == "AMOUNT_EXCEEDS_REFUNDABLE"
    assert over.metadata["refundable"] == "700"

    second = await mesh.refund(M, payment.id, amount=200)
    assert second.payment.refunded_amount == 500
    rest = await mesh.refund(M, payment.id)  # zero: everything that is left
    assert rest.refund.amount == 500
    assert rest.payment.refunded_amount == 1000
    done = await mesh.call_error(mesh.refund(M, payment.id, amount=1))
    assert done.reason == "PAYMENT_NOT_REFUNDABLE"
    await mesh.drain()
    after = await mesh.assert_transaction_matches_payments(M, txn.id)
    assert after.status == tpb.TRANSACTION_STATUS_REFUNDED


async def test_refunding_an_uncaptured_payment_is_refused(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 100)
    payment = await mesh.pay(M, txn.id, manual=True)
    error = await mesh.call_error(mesh.refund(M, payment.id))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "PAYMENT_NOT_REFUNDABLE"


async def test_payments_of_a_transaction_are_listed_newest_first_across_pages(
    mesh: Any,
) -> None:
    txn = await mesh.create_transaction(M, 10_000)
    other = await mesh.create_transaction(M, 10_000)
    made = [(await mesh.pay(M, txn.id, amount=100)).id for _ in range(7)]
    await mesh.pay(M, other.id, amount=100)
    seen: list[str] = []
    token = ""
    md = mesh.merchant(M)
    while True:
        page = await mesh.payments.ListPayments(
            pb.ListPaymentsRequest(transaction_id=txn.id, page_size=3, page_token=token),
            metadata=md,
        )
        seen.extend(p.id for p in page.payments)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(made))
    everything = await mesh.payments.ListPayments(pb.ListPaymentsRequest(), metadata=md)
    assert len(everything.payments) == 8

    first = await mesh.payments.ListPayments(
        pb.ListPaymentsRequest(transaction_id=txn.id, page_size=2), metadata=md
    )
    other_filter = await mesh.call_error(
        mesh.payments.ListPayments(
            pb.ListPaymentsRequest(transaction_id=other.id, page_token=first.next_page_token),
            metadata=md,
        )
    )
    assert other_filter.code == grpc.StatusCode.INVALID_ARGUMENT
    assert other_filter.fields == ["page_token"]
    forged = await mesh.call_error(
        mesh.payments.ListPayments(pb.ListPaymentsRequest(page_token="abc.def"), metadata=md)
    )
    assert forged.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_transaction_is_not_found(mesh: Any) -> None:
    error = await mesh.call_error(mesh.pay(M, "txn_01JD000000000000000000000Z"))
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "TRANSACTION_NOT_FOUND"
    assert (await mesh.count_rows())["payments"] == 0


async def test_unknown_transaction_while_the_transaction_service_is_down_is_unavailable(
    mesh: Any,
) -> None:
    txn = await mesh.create_transaction(M, 100)
    await mesh.stop_transactions()
    error = await mesh.call_error(mesh.pay(M, txn.id, request_id="retry-me"))
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.reason == "TRANSACTIONS_UNAVAILABLE"
    await mesh.start_transactions()
    for _ in range(100):  # the channel reconnects with backoff
        try:
            payment = await mesh.pay(M, txn.id, request_id="retry-me")
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.1)
    assert payment.status == pb.PAYMENT_STATUS_SUCCEEDED


async def test_cancelling_the_transaction_voids_authorizations_and_closes_it(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 1000)
    held = await mesh.pay(M, txn.id, amount=400, manual=True)
    failed = await mesh.pay(M, txn.id, DECLINE_CARD, amount=100)
    assert failed.status == pb.PAYMENT_STATUS_FAILED
    cancelled = await mesh.transactions.CancelTransaction(
        tpb.CancelTransactionRequest(id=txn.id), metadata=mesh.merchant(M)
    )
    assert cancelled.transaction.status == tpb.TRANSACTION_STATUS_CANCELLED
    got = await mesh.payments.GetPayment(
        pb.GetPaymentRequest(id=held.id), metadata=mesh.merchant(M)
    )
    assert got.payment.status == pb.PAYMENT_STATUS_CANCELLED
    closed = await mesh.call_error(mesh.pay(M, txn.id, amount=100))
    assert closed.code == grpc.StatusCode.FAILED_PRECONDITION
    assert closed.reason == "TRANSACTION_CLOSED"
    # Closing again changes nothing and names the same movement.
    again = await mesh.payment_ledger.CloseTransaction(
        pb.CloseTransactionRequest(
            merchant_id=M, transaction_id=txn.id, amount=1000, currency="USD"
        ),
        metadata=mesh.service,
    )
    assert again.movement_id == f"mov_cancel_{txn.id}"
    assert list(again.voided_payment_ids) == []
    await mesh.drain()
    after = await mesh.assert_transaction_matches_payments(M, txn.id)
    assert after.status == tpb.TRANSACTION_STATUS_CANCELLED
    assert after.authorized_amount == 0


async def test_a_transaction_with_captured_money_cannot_be_cancelled(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 1000)
    await mesh.pay(M, txn.id, amount=100)
    error = await mesh.call_error(
        mesh.transactions.CancelTransaction(
            tpb.CancelTransactionRequest(id=txn.id), metadata=mesh.merchant(M)
        )
    )
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "TRANSACTION_CAPTURED"


async def test_close_transaction_refuses_while_a_payment_is_processing(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 1000)
    await mesh.pay(M, txn.id, TIMEOUT_CARD, amount=100)
    error = await mesh.call_error(
        mesh.payment_ledger.CloseTransaction(
            pb.CloseTransactionRequest(
                merchant_id=M, transaction_id=txn.id, amount=1000, currency="USD"
            ),
            metadata=mesh.service,
        )
    )
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "PAYMENT_PROCESSING"


async def test_close_transaction_requires_the_service_credential(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 1000)
    error = await mesh.call_error(
        mesh.payment_ledger.CloseTransaction(
            pb.CloseTransactionRequest(
                merchant_id=M, transaction_id=txn.id, amount=1000, currency="USD"
            ),
            metadata=mesh.merchant(M),
        )
    )
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    no_token = await mesh.call_error(mesh.payments.GetPayment(pb.GetPaymentRequest(id="pay_x")))
    assert no_token.code == grpc.StatusCode.UNAUTHENTICATED
