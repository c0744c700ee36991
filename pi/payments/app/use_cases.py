"""Every payment use case, built on the same ports (the composition root and the tests
make them here)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pi.payments.app.change_payment import CancelPayment, CapturePayment, RefundPayment
from pi.payments.app.common import RequestFingerprints
from pi.payments.app.create_payment import CreatePayment
from pi.payments.app.payment_ledger import CloseTransaction, RegisterTransactions
from pi.payments.app.ports import Clock, Connector, Notify, TransactionLedger, UnitsOfWork
from pi.payments.app.queries import GetPayment, ListPayments
from pi.payments.app.recent_refs import RecentRefs
from pi.payments.app.reconcile import ReconcilePayment
from pi.payments.app.settle import SettlePayment
from pi.payments.app.settle_change import SettleChange
from pi.platform.kernel.pages import PageToken

__all__ = ["PaymentUseCases", "payment_use_cases"]


@dataclass(frozen=True)
class PaymentUseCases:
    create_payment: CreatePayment
    get_payment: GetPayment
    list_payments: ListPayments
    capture_payment: CapturePayment
    cancel_payment: CancelPayment
    refund_payment: RefundPayment
    close_transaction: CloseTransaction
    register_transactions: RegisterTransactions
    reconcile_payment: ReconcilePayment


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _nothing() -> None:
    pass


def payment_use_cases(
    units: UnitsOfWork,
    connector: Connector,
    ledger: TransactionLedger,
    *,
    card_key: bytes,
    request_key: bytes,
    page_tokens: PageToken,
    notify: Notify = _nothing,
    clock: Clock = _utc_now,
) -> PaymentUseCases:
    """`card_key` keys card fingerprints; `request_key` keys the request fingerprints
    stored with idempotency keys (they cover card numbers, so they must not be a plain
    hash). `notify` wakes the outbox dispatcher after a commit that wrote movements."""
    fingerprints = RequestFingerprints(request_key)
    settle = SettlePayment(units, clock=clock, notify=notify)
    settle_change = SettleChange(units, clock=clock, notify=notify)
    recent = RecentRefs()
    return PaymentUseCases(
        create_payment=CreatePayment(
            units,
            connector,
            ledger,
            settle,
            fingerprints=fingerprints,
            card_key=card_key,
            clock=clock,
            recent=recent,
        ),
        get_payment=GetPayment(units),
        list_payments=ListPayments(units, page_tokens),
        capture_payment=CapturePayment(
            units, connector, settle_change, fingerprints=fingerprints, clock=clock
        ),
        cancel_payment=CancelPayment(
            units, connector, settle_change, fingerprints=fingerprints, clock=clock
        ),
        refund_payment=RefundPayment(
            units, connector, settle_change, fingerprints=fingerprints, clock=clock
        ),
        close_transaction=CloseTransaction(
            units, connector, settle_change, clock=clock, notify=notify
        ),
        register_transactions=RegisterTransactions(units, clock=clock, recent=recent),
        reconcile_payment=ReconcilePayment(units, connector, settle, settle_change, clock=clock),
    )
