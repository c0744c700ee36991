"""What the transaction service asks of the payment service (PaymentLedgerService):
CloseTransaction (the money flow agreement: no new payment, its authorizations voided)
and RegisterTransactions (transactions learnt ahead of their first payment)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from pi.payments.app.change_payment import ask, void_request
from pi.payments.app.common import id_problem, locked, transaction_not_found
from pi.payments.app.ports import Clock, Connector, Notify, PaymentsUnit, UnitsOfWork
from pi.payments.app.recent_refs import RecentRefs
from pi.payments.app.settle_change import SettleChange
from pi.payments.domain import (
    Payment,
    PaymentStatus,
    TransactionRef,
    cancellation_movement_id,
    movements_from_deltas,
    start_close,
)
from pi.platform.kernel.errors import DomainError, FailedPrecondition, ValidationErrors
from pi.platform.kernel.money import amount_problem, currency_problem
from pi.platform.kernel.principal import Principal, require_service
from pi.platform.kernel.units import Mode

__all__ = [
    "MAX_REGISTERED_TRANSACTIONS",
    "REASON_TRANSACTION_MISMATCH",
    "CloseResult",
    "CloseTransaction",
    "RegisterResult",
    "RegisterTransactions",
    "TransactionFactsInput",
]

log = logging.getLogger(__name__)

REASON_TRANSACTION_MISMATCH = "TRANSACTION_MISMATCH"
MAX_REGISTERED_TRANSACTIONS = 1000
"""At most this many transactions per `register_transactions` call (payments.proto)."""


@dataclass(frozen=True, slots=True)
class CloseResult:
    movement_id: str
    voided_payment_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TransactionFactsInput:
    """A transaction's facts as RegisterTransactions sends them (unvalidated)."""

    transaction_id: str
    merchant_id: str
    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """How many refs were new, and which transactions were known with other facts."""

    registered_count: int
    conflicting_transaction_ids: tuple[str, ...]


class CloseTransaction:
    """Closes in two units around the processor, as CancelPayment does: T1 closes the ref
    (with the CANCELLATION movement) and records each authorization's void (CANCELLING);
    then each void is asked of the processor and settled (VOID movement, hold released).
    A void without an answer stays CANCELLING for the reconciler; closing again resumes
    the voids still pending."""

    def __init__(
        self,
        units: UnitsOfWork,
        connector: Connector,
        settle: SettleChange,
        *,
        clock: Clock,
        notify: Notify,
    ) -> None:
        self._units = units
        self._connector = connector
        self._settle = settle
        self._clock = clock
        self._notify = notify

    async def __call__(
        self,
        principal: Principal,
        *,
        merchant_id: str,
        transaction_id: str,
        amount: int,
        currency: str,
    ) -> CloseResult:
        """Close a transaction to new payments and void its authorizations. Idempotent:
        closing again changes nothing."""
        require_service(principal)
        errors = ValidationErrors()
        for field, value in (("merchant_id", merchant_id), ("transaction_id", transaction_id)):
            if (problem := id_problem(value)) is not None:
                errors.add(field, problem)
        if (problem := amount_problem(amount)) is not None:
            errors.add("amount", problem)
        if (problem := currency_problem(currency)) is not None:
            errors.add("currency", problem)
        errors.raise_if_any("The request has invalid fields.")
        facts = TransactionRef(transaction_id, merchant_id, amount, currency)
        closed, voiding = await locked(self._units, partial(self._close, facts, self._clock()))
        if closed:
            self._notify()
            log.info(
                "transaction closed",
                extra={"transaction_id": transaction_id, "voiding": len(voiding)},
            )
        for payment in voiding:
            result = await ask(self._connector.void(void_request(payment)), payment.id)
            try:
                await self._settle.void(payment, result)
            except DomainError:
                # Declined (logged by the settlement) or no answer: the reconciler asks
                # again for a void left CANCELLING.
                log.warning(
                    "void of a closed transaction's payment not settled",
                    extra={"payment_id": payment.id, "outcome": result.outcome.value},
                )
        return CloseResult(cancellation_movement_id(transaction_id), tuple(p.id for p in voiding))

    async def _close(
        self, facts: TransactionRef, now: datetime, unit: PaymentsUnit
    ) -> tuple[bool, list[Payment]]:
        """Whether this unit closed the ref, and the payments whose voids are pending
        (recorded now, or still pending from an earlier close)."""
        transaction_id = facts.transaction_id
        async with unit:
            ref = await unit.refs.get(transaction_id)
            if ref is None:
                ref = await unit.refs.add(facts, now=now)
            if ref.merchant_id != facts.merchant_id:
                raise transaction_not_found()
            if (ref.amount, ref.currency) != (facts.amount, facts.currency):
                raise FailedPrecondition(
                    "The transaction's amount or currency differs from what the payment "
                    "service knows.",
                    reason=REASON_TRANSACTION_MISMATCH,
                )
            existing = await unit.payments.of_transaction(transaction_id)
            change = start_close(ref, existing, now=now)
            if change.already_closed:
                await unit.commit()
                return False, [p for p in existing if p.status is PaymentStatus.CANCELLING]
            originals = {payment.id: payment for payment in existing}
            for voided in change.voided:
                await unit.payments.update(originals[voided.id], voided)
            movements = movements_from_deltas(
                change.movements,
                merchant_id=facts.merchant_id,
                transaction_id=transaction_id,
                now=now,
            )
            await unit.refs.update(ref, change.ref, movements, now=now)
            await unit.commit()
        return True, list(change.voided)


class RegisterTransactions:
    def __init__(
        self, units: UnitsOfWork, *, clock: Clock, recent: RecentRefs | None = None
    ) -> None:
        """`recent` gets the refs inserted, for CreatePayment to start from."""
        self._units = units
        self._clock = clock
        self._recent = RecentRefs() if recent is None else recent

    async def __call__(
        self, principal: Principal, transactions: Sequence[TransactionFactsInput]
    ) -> RegisterResult:
        """Learn transactions ahead of their first payment, as refs holding nothing, so
        that CreatePayment finds them without a lookup. Idempotent: a transaction that
        has a ref already keeps it untouched (its facts never change); one whose ref says
        otherwise is reported and logged, never overwritten."""
        require_service(principal)
        refs = _validate(transactions)
        now = self._clock()
        async with self._units(Mode.LOCKED) as unit:
            inserted = await unit.refs.add_all(refs, now=now)
            known = await unit.refs.get_all(
                [ref.transaction_id for ref in refs if ref.transaction_id not in inserted]
            )
            await unit.commit()
        self._recent.remember(ref for ref in refs if ref.transaction_id in inserted)
        conflicting = tuple(
            ref.transaction_id
            for ref in refs
            if (old := known.get(ref.transaction_id)) is not None
            and (old.merchant_id, old.amount, old.currency)
            != (ref.merchant_id, ref.amount, ref.currency)
        )
        if conflicting:
            log.warning(
                "registered transactions differ from their refs; the refs are kept",
                extra={"count": len(conflicting), "transaction_ids": list(conflicting[:10])},
            )
        return RegisterResult(
            registered_count=len(inserted), conflicting_transaction_ids=conflicting
        )


def _validate(transactions: Sequence[TransactionFactsInput]) -> list[TransactionRef]:
    """RegisterTransactions' transactions as refs holding nothing; every invalid field
    reported at once (InvalidArgument)."""
    errors = ValidationErrors()
    if not transactions:
        errors.add("transactions", "is required")
    elif len(transactions) > MAX_REGISTERED_TRANSACTIONS:
        errors.add("transactions", f"must hold at most {MAX_REGISTERED_TRANSACTIONS} transactions")
    else:
        seen: set[str] = set()
        for index, facts in enumerate(transactions):
            field = f"transactions[{index}]"
            if (problem := id_problem(facts.transaction_id)) is not None:
                errors.add(f"{field}.transaction_id", problem)
            elif facts.transaction_id in seen:
                errors.add(f"{field}.transaction_id", "appears more than once")
            seen.add(facts.transaction_id)
            if (problem := id_problem(facts.merchant_id)) is not None:
                errors.add(f"{field}.merchant_id", problem)
            if (problem := amount_problem(facts.amount)) is not None:
                errors.add(f"{field}.amount", problem)
            if (problem := currency_problem(facts.currency)) is not None:
                errors.add(f"{field}.currency", problem)
    errors.raise_if_any("The request has invalid fields.")
    return [
        TransactionRef(
            transaction_id=facts.transaction_id,
            merchant_id=facts.merchant_id,
            amount=facts.amount,
            currency=facts.currency,
        )
        for facts in transactions
    ]
