"""Runs last in this directory: no card number, CVC-bearing request, bank account number
or wallet token was stored or logged by any payment test of the session."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from generated.pi.payments.v1 import payments_pb2 as pb


async def test_card_data_is_never_stored_or_logged(
    mesh: Any, card_data_report: Any, pg_url: str
) -> None:
    from_this_test = len(card_data_report.logs.texts)
    txn = await mesh.create_transaction("mer_pan", 100_000)
    cards = (mesh.APPROVE_CARD, mesh.DECLINE_CARD, mesh.INSUFFICIENT_FUNDS_CARD)
    for index, number in enumerate(cards):
        await mesh.pay("mer_pan", txn.id, number, amount=100, request_id=f"key-{index}")
    await mesh.pay("mer_pan", txn.id, mesh.TIMEOUT_CARD, amount=100)
    # Invalid numbers echo nowhere either (a Luhn failure of a test card's neighbour).
    await mesh.call_error(mesh.pay("mer_pan", txn.id, mesh.APPROVE_CARD[:-1] + "1"))
    await mesh.payments.CreatePayment(
        pb.CreatePaymentRequest(
            payment=pb.Payment(
                transaction_id=txn.id,
                amount=100,
                method=pb.PAYMENT_METHOD_TYPE_BANK_TRANSFER,
                bank_transfer=pb.BankTransfer(
                    account_holder_name="Ada", account_number=mesh.BANK_ACCOUNT
                ),
            )
        ),
        metadata=mesh.merchant("mer_pan"),
    )
    await mesh.payments.CreatePayment(
        pb.CreatePaymentRequest(
            payment=pb.Payment(
                transaction_id=txn.id,
                amount=100,
                method=pb.PAYMENT_METHOD_TYPE_WALLET,
                wallet=pb.Wallet(type=pb.WALLET_TYPE_PAYPAL, token=mesh.WALLET_TOKEN),
            )
        ),
        metadata=mesh.merchant("mer_pan"),
    )
    await mesh.payments_app.reconciler.run_once(grace=dt.timedelta(0))
    await mesh.drain()

    findings = await asyncio.to_thread(mesh.scan_schema_for_secrets, pg_url, mesh.payments_schema)
    assert findings == []
    assert card_data_report.scans.findings == []
    assert len(card_data_report.logs.texts) > from_this_test  # the capture works
    logged = [
        secret
        for text in card_data_report.logs.texts
        for secret in (*card_data_report.secrets, mesh.APPROVE_CARD[:-1] + "1")
        if secret in text
    ]
    assert logged == []
