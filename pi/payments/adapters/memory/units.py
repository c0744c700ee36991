"""The payment service's unit of work in memory (`pi.payments.app.ports`), for use-case
tests and as the fake the contract tests hold to PostgreSQL's behaviour.

Units run one at a time (`MemoryUnitOfWork` holds a shared lock for the block) and
write straight into the state (put back if the block ends without a commit). Modes
behave as on PostgreSQL: an OPTIMISTIC unit answers a read with `seen` when given,
writes only what is still as it was read (a miss, or a taken idempotency key, raises
`Conflict`) and cannot confirm a decision that writes nothing; LOCKED units read the
current rows. Every row keeps the database's rules (`state.py`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime

from pi.payments.adapters.memory.keys import MemoryKeys
from pi.payments.adapters.memory.state import (
    IntegrityViolation,
    MemoryState,
    OutboxRow,
    StoredRef,
    check_payment_insert,
    check_payment_update,
    check_ref,
    with_amounts,
)
from pi.payments.domain import Payment, PaymentStatus, Refund, RefundStatus, TransactionRef
from pi.platform.kernel.units import Conflict, MemoryUnitOfWork, Mode
from pi.platform.ledger import Movement

__all__ = ["MemoryPaymentsUnit", "MemoryUnits"]


class MemoryPaymentsUnit(MemoryUnitOfWork[MemoryState]):
    def __init__(self, state: MemoryState, lock: asyncio.Lock, mode: Mode = Mode.LOCKED) -> None:
        super().__init__(state, lock, mode)
        self.refs = _Refs(self)
        self.payments = _Payments(self)
        self.refunds = _Refunds(self)
        self.idempotency = MemoryKeys(self)

    @property
    def optimistic(self) -> bool:
        return self.mode is Mode.OPTIMISTIC

    def confirm_reads(self) -> None:
        if self.optimistic:
            raise Conflict("a decision that writes nothing is only final under locks")

    def writable(self) -> MemoryState:
        if self.mode is Mode.READ:
            raise RuntimeError("a READ unit cannot write")
        return self.state


class MemoryUnits:
    """The factory of memory units on one `MemoryState` (a fresh one by default)."""

    def __init__(self, state: MemoryState | None = None) -> None:
        self.state = state or MemoryState()
        self.lock = asyncio.Lock()
        self.opened: list[Mode] = []  # every unit's mode, in order (for tests to count)

    def __call__(self, mode: Mode = Mode.LOCKED) -> MemoryPaymentsUnit:
        self.opened.append(mode)
        return MemoryPaymentsUnit(self.state, self.lock, mode)


_WAITING = (PaymentStatus.PROCESSING, PaymentStatus.CAPTURING, PaymentStatus.CANCELLING)


class _Refs:
    def __init__(self, unit: MemoryPaymentsUnit) -> None:
        self._unit = unit
        self._added: dict[str, TransactionRef] = {}  # OPTIMISTIC: as `add` returned them

    async def get(
        self, transaction_id: str, *, seen: TransactionRef | None = None
    ) -> TransactionRef | None:
        if seen is not None and self._unit.optimistic:
            return seen
        stored = self._unit.state.refs.get(transaction_id)
        return None if stored is None else stored.ref

    async def add(self, facts: TransactionRef, *, now: datetime) -> TransactionRef:
        refs = self._unit.writable().refs
        if facts.transaction_id not in refs:
            stored = StoredRef(facts, 0, now, now)
            check_ref(stored)
            refs[facts.transaction_id] = stored
        if self._unit.optimistic:
            self._added[facts.transaction_id] = facts
            return facts
        return refs[facts.transaction_id].ref

    async def add_all(self, refs: Sequence[TransactionRef], *, now: datetime) -> set[str]:
        if self._unit.mode is not Mode.LOCKED:
            raise RuntimeError("refs are registered in a LOCKED unit")
        inserted = set()
        for ref in refs:
            if ref.transaction_id not in self._unit.state.refs:
                await self.add(ref, now=now)
                inserted.add(ref.transaction_id)
        return inserted

    async def get_all(self, transaction_ids: Sequence[str]) -> dict[str, TransactionRef]:
        refs = self._unit.state.refs
        return {tid: refs[tid].ref for tid in transaction_ids if tid in refs}

    async def update(
        self,
        old: TransactionRef,
        new: TransactionRef,
        movements: Sequence[Movement] = (),
        *,
        now: datetime,
    ) -> None:
        fresh = self._added.get(old.transaction_id) == old

        def unchanged(stored: StoredRef) -> bool:
            if fresh:  # still exactly as first inserted, whoever inserted it
                return stored.ref == old and stored.movement_count == 0
            ref = stored.ref
            return (ref.held_amount, ref.captured_amount, ref.closed) == (
                old.held_amount,
                old.captured_amount,
                old.closed,
            )

        self._write(old, new, movements, now, unchanged)

    async def settle(
        self,
        old: TransactionRef,
        new: TransactionRef,
        movements: Sequence[Movement],
        *,
        now: datetime,
    ) -> None:
        def holding(stored: StoredRef) -> bool:
            return stored.ref.held_amount + new.held_amount - old.held_amount >= 0

        self._write(old, new, movements, now, holding)

    def _write(
        self,
        old: TransactionRef,
        new: TransactionRef,
        movements: Sequence[Movement],
        now: datetime,
        condition: Callable[[StoredRef], bool],
    ) -> None:
        state = self._unit.writable()
        stored = state.refs.get(old.transaction_id)
        if stored is None:
            raise LookupError(f"no ref for {old.transaction_id}")
        if self._unit.optimistic and not condition(stored):
            raise Conflict(f"the ref of {old.transaction_id} changed")
        written = StoredRef(
            with_amounts(stored, old, new),
            stored.movement_count + len(movements),
            stored.create_time,
            now,
        )
        check_ref(written)
        for offset, movement in enumerate(movements, 1):
            if movement.id in state.outbox:
                raise IntegrityViolation("outbox_pkey", movement.id)
            state.outbox[movement.id] = OutboxRow(
                id=movement.id,
                transaction_id=movement.transaction_id,
                seq=stored.movement_count + offset,
                movement=movement,
                create_time=now,
                next_attempt_time=now,
            )
        state.refs[old.transaction_id] = written


class _Payments:
    def __init__(self, unit: MemoryPaymentsUnit) -> None:
        self._unit = unit

    async def get(self, payment_id: str, *, seen: Payment | None = None) -> Payment | None:
        if seen is not None and self._unit.optimistic:
            return seen
        return self._unit.state.payments.get(payment_id)

    async def find(self, payment_id: str, merchant_id: str) -> Payment | None:
        payment = self._unit.state.payments.get(payment_id)
        return payment if payment is not None and payment.merchant_id == merchant_id else None

    async def of_transaction(self, transaction_id: str) -> list[Payment]:
        found = [
            p for p in self._unit.state.payments.values() if p.transaction_id == transaction_id
        ]
        return sorted(found, key=lambda p: (p.create_time, p.id))

    async def of_merchant(
        self,
        merchant_id: str,
        *,
        transaction_id: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Payment]:
        found = [
            p
            for p in self._unit.state.payments.values()
            if p.merchant_id == merchant_id
            and (transaction_id is None or p.transaction_id == transaction_id)
            and (after is None or (p.create_time, p.id) < after)
        ]
        return sorted(found, key=lambda p: (p.create_time, p.id), reverse=True)[:limit]

    async def waiting(
        self, updated_before: datetime, limit: int, *, after: tuple[datetime, str] | None
    ) -> list[Payment]:
        found = [
            p
            for p in self._unit.state.payments.values()
            if p.status in _WAITING
            and p.update_time < updated_before
            and (after is None or (p.update_time, p.id) > after)
        ]
        return sorted(found, key=lambda p: (p.update_time, p.id))[:limit]

    async def add(self, payment: Payment) -> None:
        state = self._unit.writable()
        if payment.id in state.payments:
            raise IntegrityViolation("payments_pkey", payment.id)
        state.ref_of(payment.transaction_id, payment.currency, "payments_transaction_currency_fkey")
        check_payment_insert(payment)
        state.payments[payment.id] = payment

    async def update(self, old: Payment, new: Payment) -> None:
        state = self._unit.writable()
        current = state.payments.get(old.id)
        if current is None or (
            current.status,
            current.refunded_amount,
            current.refunding_amount,
            current.processor_reference,
        ) != (old.status, old.refunded_amount, old.refunding_amount, old.processor_reference):
            raise Conflict(f"payment {old.id} changed")
        written = dataclasses.replace(
            current,
            status=new.status,
            failure_reason=new.failure_reason,
            captured_amount=new.captured_amount,
            refunded_amount=new.refunded_amount,
            capturing_amount=new.capturing_amount,
            refunding_amount=new.refunding_amount,
            processor_reference=new.processor_reference,
            update_time=new.update_time,
        )
        check_payment_update(current, written)
        state.payments[old.id] = written


class _Refunds:
    def __init__(self, unit: MemoryPaymentsUnit) -> None:
        self._unit = unit

    async def add(self, refund: Refund, *, merchant_id: str, transaction_id: str) -> None:
        state = self._unit.writable()
        if refund.id in state.refunds:
            raise IntegrityViolation("refunds_pkey", refund.id)
        if refund.payment_id not in state.payments:
            raise IntegrityViolation("refunds_payment_id_fkey", refund.payment_id)
        state.ref_of(transaction_id, refund.currency, "refunds_transaction_currency_fkey")
        if refund.amount <= 0:
            raise IntegrityViolation("refunds_amount_positive")
        _check_refund(refund)
        state.refunds[refund.id] = refund

    async def get(self, refund_id: str) -> Refund | None:
        return self._unit.state.refunds.get(refund_id)

    async def update(self, old: Refund, new: Refund) -> None:
        state = self._unit.writable()
        current = state.refunds.get(old.id)
        if current is None or current.status is not RefundStatus.PENDING:
            raise Conflict(f"refund {old.id} changed")
        _check_refund(new)
        state.refunds[old.id] = dataclasses.replace(
            current,
            status=new.status,
            failure_reason=new.failure_reason,
            processor_reference=new.processor_reference,
        )

    async def pending(
        self, created_before: datetime, limit: int, *, after: tuple[datetime, str] | None
    ) -> list[Refund]:
        found = [
            r
            for r in self._unit.state.refunds.values()
            if r.status is RefundStatus.PENDING
            and r.create_time < created_before
            and (after is None or (r.create_time, r.id) > after)
        ]
        return sorted(found, key=lambda r: (r.create_time, r.id))[:limit]


def _check_refund(refund: Refund) -> None:
    if (refund.status is RefundStatus.FAILED) != (refund.failure_reason is not None):
        raise IntegrityViolation("refunds_failure_reason_iff_failed")
