"""Every use case of the transaction service, wired on one set of ports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pi.platform.kernel.pages import PageToken
from pi.transactions.app.apply_movements import ApplyMovement, ApplyMovements
from pi.transactions.app.cancel_transaction import CancelTransaction
from pi.transactions.app.create_transaction import FACTS_WAIT_SECONDS, CreateTransaction
from pi.transactions.app.ports import Clock, FactsQueue, PaymentLedger, UnitsOfWork
from pi.transactions.app.queries import GetTransaction, ListTransactions, LookupTransaction

__all__ = ["TransactionUseCases", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class TransactionUseCases:
    """The use cases of `TransactionService` (merchants) and `TransactionLedgerService`
    (the payment service), each called with the caller's `Principal` first."""

    create_transaction: CreateTransaction
    get_transaction: GetTransaction
    list_transactions: ListTransactions
    cancel_transaction: CancelTransaction
    lookup_transaction: LookupTransaction
    apply_movement: ApplyMovement
    apply_movements: ApplyMovements

    @classmethod
    def wire(
        cls,
        units: UnitsOfWork,
        payments: PaymentLedger,
        page_tokens: PageToken,
        *,
        clock: Clock = utc_now,
        facts: FactsQueue | None = None,
        facts_wait: float = FACTS_WAIT_SECONDS,
    ) -> TransactionUseCases:
        """Every use case on `units`; cancellations go to `payments`, new transactions
        to `facts` (see `CreateTransaction`)."""
        return cls(
            create_transaction=CreateTransaction(units, clock, facts=facts, facts_wait=facts_wait),
            get_transaction=GetTransaction(units),
            list_transactions=ListTransactions(units, page_tokens),
            cancel_transaction=CancelTransaction(units, payments, clock),
            lookup_transaction=LookupTransaction(units),
            apply_movement=ApplyMovement(units, clock),
            apply_movements=ApplyMovements(units, clock),
        )
