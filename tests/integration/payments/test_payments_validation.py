"""Bad input: INVALID_ARGUMENT with every wrong field at once, and nothing written."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest

from generated.pi.payments.v1 import payments_pb2 as pb

M = "mer_validation"
LAST_YEAR = dt.datetime.now(dt.UTC).year - 1


def _card(**overrides: Any) -> pb.Card:
    values: dict[str, Any] = {
        "number": "4242424242424242",
        "exp_month": 12,
        "exp_year": dt.datetime.now(dt.UTC).year + 3,
        "cvc": "123",
    }
    values.update(overrides)
    return pb.Card(**values)


CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "negative amount": ({"amount": -1}, ["payment.amount"]),
    "amount over the limit": ({"amount": 10**15 + 1}, ["payment.amount"]),
    "amount at int64 max": ({"amount": 2**63 - 1}, ["payment.amount"]),
    "no transaction": ({"transaction_id": ""}, ["payment.transaction_id"]),
    "overlong transaction id": ({"transaction_id": "t" * 65}, ["payment.transaction_id"]),
    "no method": ({"method": pb.PAYMENT_METHOD_TYPE_UNSPECIFIED}, ["payment.method"]),
    "card method without card": ({"card": None}, ["payment.card"]),
    "luhn failure": ({"card": _card(number="4242424242424241")}, ["payment.card.number"]),
    "letters in number": ({"card": _card(number="4242abcd42424242")}, ["payment.card.number"]),
    "short number": ({"card": _card(number="42424")}, ["payment.card.number"]),
    "no number": ({"card": _card(number="")}, ["payment.card.number"]),
    "expired year": ({"card": _card(exp_year=LAST_YEAR)}, ["payment.card.exp_year"]),
    "month 13": ({"card": _card(exp_month=13)}, ["payment.card.exp_month"]),
    "month 0": ({"card": _card(exp_month=0)}, ["payment.card.exp_month"]),
    "two-digit year": ({"card": _card(exp_year=30)}, ["payment.card.exp_year"]),
    "short cvc": ({"card": _card(cvc="12")}, ["payment.card.cvc"]),
    "letters in cvc": ({"card": _card(cvc="12a")}, ["payment.card.cvc"]),
    "no cvc": ({"card": _card(cvc="")}, ["payment.card.cvc"]),
    "bank transfer without details": (
        {"method": pb.PAYMENT_METHOD_TYPE_BANK_TRANSFER, "card": None},
        ["payment.bank_transfer"],
    ),
    "bank transfer with a card": (
        {
            "method": pb.PAYMENT_METHOD_TYPE_BANK_TRANSFER,
            "bank_transfer": pb.BankTransfer(account_holder_name="A B", account_number="12345678"),
        },
        ["payment.card"],
    ),
    "bad bank account": (
        {
            "method": pb.PAYMENT_METHOD_TYPE_BANK_TRANSFER,
            "card": None,
            "bank_transfer": pb.BankTransfer(account_holder_name="", account_number="1!"),
        },
        ["payment.bank_transfer.account_holder_name", "payment.bank_transfer.account_number"],
    ),
    "wallet without type and token": (
        {"method": pb.PAYMENT_METHOD_TYPE_WALLET, "card": None, "wallet": pb.Wallet()},
        ["payment.wallet.type", "payment.wallet.token"],
    ),
    "everything wrong at once": (
        {
            "transaction_id": "",
            "amount": -5,
            "card": _card(number="1234567812345678", exp_month=13, cvc="1"),
        },
        [
            "payment.transaction_id",
            "payment.amount",
            "payment.card.number",
            "payment.card.exp_month",
            "payment.card.cvc",
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_payment_input_is_invalid_argument_and_writes_nothing(
    mesh: Any, case: str
) -> None:
    txn = await mesh.create_transaction(M, 1000)
    changes, expected_fields = CASES[case]
    payment = pb.Payment(
        transaction_id=txn.id,
        amount=100,
        method=pb.PAYMENT_METHOD_TYPE_CARD,
        card=_card(),
    )
    for name, value in changes.items():
        if value is None:
            payment.ClearField(name)  # type: ignore[arg-type]  # field names from CASES
        elif isinstance(value, pb.Card | pb.BankTransfer | pb.Wallet):
            getattr(payment, name).CopyFrom(value)
        else:
            setattr(payment, name, value)
    error = await mesh.call_error(
        mesh.payments.CreatePayment(
            pb.CreatePaymentRequest(payment=payment, request_id=f"bad-{case.replace(' ', '-')}"),
            metadata=mesh.merchant(M),
        )
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(error.fields) == sorted(expected_fields)
    assert "4242424242424241" not in error.message
    assert set((await mesh.count_rows()).values()) == {0}


async def test_bad_capture_refund_and_close_input_is_invalid_argument(mesh: Any) -> None:
    txn = await mesh.create_transaction(M, 1000)
    payment = await mesh.pay(M, txn.id, amount=500)
    before = await mesh.count_rows()
    md = mesh.merchant(M)
    p = mesh.payments
    checks = [
        (
            p.CapturePayment(pb.CapturePaymentRequest(id=payment.id, amount=-1), metadata=md),
            ["amount"],
        ),
        (p.CapturePayment(pb.CapturePaymentRequest(id=""), metadata=md), ["id"]),
        (
            p.RefundPayment(pb.RefundPaymentRequest(id=payment.id, amount=-5), metadata=md),
            ["amount"],
        ),
        (
            p.RefundPayment(
                pb.RefundPaymentRequest(id=payment.id, reason="x" * 501, amount=-1), metadata=md
            ),
            ["amount", "reason"],
        ),
        (
            p.RefundPayment(pb.RefundPaymentRequest(id=payment.id, reason="bad\x00"), metadata=md),
            ["reason"],
        ),
        (p.CancelPayment(pb.CancelPaymentRequest(id=""), metadata=md), ["id"]),
        (p.GetPayment(pb.GetPaymentRequest(id=""), metadata=md), ["id"]),
        (p.ListPayments(pb.ListPaymentsRequest(page_size=-1), metadata=md), ["page_size"]),
        (
            mesh.payment_ledger.CloseTransaction(
                pb.CloseTransactionRequest(
                    merchant_id=M, transaction_id=txn.id, amount=0, currency="usd"
                ),
                metadata=mesh.service,
            ),
            ["amount", "currency"],
        ),
        (
            p.CapturePayment(
                pb.CapturePaymentRequest(id=payment.id, request_id="has space"), metadata=md
            ),
            ["request_id"],
        ),
    ]
    for call, fields in checks:
        error = await mesh.call_error(call)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert sorted(error.fields) == sorted(fields)
    await mesh.drain()
    after = await mesh.count_rows()
    assert after == before
