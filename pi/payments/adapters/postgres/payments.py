"""Payments and refunds on PostgreSQL.

A payment is updated only if the row is still what the change was decided on (status,
refunded amount, processor reference: the columns a change reads), so a writer that did
not lock it (T2 after T1) changes it only if nobody else did in between; the unit
conflicts otherwise. The trigger of migration 0001 keeps every change inside the state
machine whatever the code does.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from pi.payments.adapters.postgres.rows import (
    MUTABLE_PAYMENT_COLUMNS,
    payment_from_row,
    payment_values,
    refund_from_row,
    refund_values,
)
from pi.payments.adapters.postgres.tables import payments, refunds, written
from pi.payments.domain import Payment, PaymentStatus, Refund, RefundStatus
from pi.platform.db.statements import Statement

if TYPE_CHECKING:
    from pi.payments.adapters.postgres.uow import PostgresPaymentsUnit

__all__ = ["PostgresPayments", "PostgresRefunds"]

_payments = written(payments)

_PAYMENT_ID = payments.c.id == sa.bindparam("p_id")
_OF_MERCHANT = payments.c.merchant_id == sa.bindparam("p_merchant_id")
_GET_PAYMENT = Statement(sa.select(payments).where(_PAYMENT_ID))
_LOCK_PAYMENT = Statement(sa.select(payments).where(_PAYMENT_ID).with_for_update())
_FIND_PAYMENT = Statement(sa.select(payments).where(_PAYMENT_ID, _OF_MERCHANT))
_INSERT_PAYMENT = Statement(_payments.insert())
_OF_TRANSACTION_QUERY = (
    sa.select(payments)
    .where(payments.c.transaction_id == sa.bindparam("p_transaction_id"))
    .order_by(payments.c.create_time, payments.c.id)
)
_OF_TRANSACTION = Statement(_OF_TRANSACTION_QUERY)
_LOCK_OF_TRANSACTION = Statement(_OF_TRANSACTION_QUERY.with_for_update())
_UPDATE_PAYMENT = Statement(
    _payments.update()
    .where(
        _payments.c.id == sa.bindparam("p_id"),
        _payments.c.status == sa.bindparam("p_old_status"),
        _payments.c.refunded_amount == sa.bindparam("p_old_refunded_amount"),
        _payments.c.refunding_amount == sa.bindparam("p_old_refunding_amount"),
        _payments.c.processor_reference.is_not_distinct_from(
            sa.bindparam("p_old_processor_reference", type_=payments.c.processor_reference.type)
        ),
    )
    .values(
        {
            name: sa.bindparam(f"p_{name}", type_=payments.c[name].type)
            for name in MUTABLE_PAYMENT_COLUMNS
        }
    )
)
_refunds = written(refunds)
_INSERT_REFUND = Statement(_refunds.insert())
_REFUND_ID = refunds.c.id == sa.bindparam("p_id")
_GET_REFUND = Statement(sa.select(refunds).where(_REFUND_ID))
_LOCK_REFUND = Statement(sa.select(refunds).where(_REFUND_ID).with_for_update())
_SETTLE_REFUND = Statement(
    _refunds.update()
    .where(_refunds.c.id == sa.bindparam("p_id"), _refunds.c.status == RefundStatus.PENDING.value)
    .values(
        status=sa.bindparam("p_status", type_=refunds.c.status.type),
        failure_reason=sa.bindparam("p_failure_reason", type_=refunds.c.failure_reason.type),
        processor_reference=sa.bindparam(
            "p_processor_reference", type_=refunds.c.processor_reference.type
        ),
    )
)
# Literal values, as in the partial index's predicate, so the planner can use the index.
_WAITING_CONDITION = sa.text(
    "payments.status IN ("
    + ", ".join(
        f"'{status.value}'"
        for status in (PaymentStatus.PROCESSING, PaymentStatus.CAPTURING, PaymentStatus.CANCELLING)
    )
    + ")"
)


@cache
def _pending_refunds(*, after: bool) -> Statement:
    """PENDING refunds, from the start or after a cursor."""
    r = refunds
    query = sa.select(r).where(
        r.c.status == RefundStatus.PENDING.value,
        r.c.create_time < sa.bindparam("p_created_before", type_=r.c.create_time.type),
    )
    if after:
        time = sa.bindparam("p_after_time", type_=r.c.create_time.type)
        last_id = sa.bindparam("p_after_id", type_=r.c.id.type)
        query = query.where(
            sa.or_(r.c.create_time > time, sa.and_(r.c.create_time == time, r.c.id > last_id))
        )
    return Statement(
        query.order_by(r.c.create_time, r.c.id).limit(sa.bindparam("p_limit", type_=sa.Integer()))
    )


@cache
def _of_merchant(*, of_transaction: bool, after: bool) -> Statement:
    """The merchant's payments with the filters used (4 at most, built once each)."""
    p = payments
    query = sa.select(p).where(p.c.merchant_id == sa.bindparam("p_merchant_id"))
    if of_transaction:
        query = query.where(p.c.transaction_id == sa.bindparam("p_transaction_id"))
    if after:
        time = sa.bindparam("p_after_time", type_=p.c.create_time.type)
        last_id = sa.bindparam("p_after_id", type_=p.c.id.type)
        query = query.where(
            sa.or_(p.c.create_time < time, sa.and_(p.c.create_time == time, p.c.id < last_id))
        )
    return Statement(
        query.order_by(p.c.create_time.desc(), p.c.id.desc()).limit(
            sa.bindparam("p_limit", type_=sa.Integer())
        )
    )


@cache
def _waiting(*, after: bool) -> Statement:
    """Payments waiting for the processor, from the start or after a cursor (the partial
    index `payments_waiting_idx` has exactly this condition)."""
    p = payments
    query = sa.select(p).where(
        _WAITING_CONDITION,
        p.c.update_time < sa.bindparam("p_updated_before", type_=p.c.update_time.type),
    )
    if after:
        time = sa.bindparam("p_after_time", type_=p.c.update_time.type)
        last_id = sa.bindparam("p_after_id", type_=p.c.id.type)
        query = query.where(
            sa.or_(p.c.update_time > time, sa.and_(p.c.update_time == time, p.c.id > last_id))
        )
    return Statement(
        query.order_by(p.c.update_time, p.c.id).limit(sa.bindparam("p_limit", type_=sa.Integer()))
    )


def _update_params(old: Payment, new: Payment) -> dict[str, Any]:
    values = payment_values(new)
    params = {f"p_{name}": values[name] for name in MUTABLE_PAYMENT_COLUMNS}
    params["p_id"] = old.id
    params["p_old_status"] = old.status.value
    params["p_old_refunded_amount"] = old.refunded_amount
    params["p_old_refunding_amount"] = old.refunding_amount
    params["p_old_processor_reference"] = old.processor_reference
    return params


class PostgresPayments:
    def __init__(self, unit: PostgresPaymentsUnit) -> None:
        self._unit = unit

    async def get(self, payment_id: str, *, seen: Payment | None = None) -> Payment | None:
        unit = self._unit
        if seen is not None and not unit.locking:
            return seen
        row = await unit.read(_LOCK_PAYMENT if unit.locking else _GET_PAYMENT, {"p_id": payment_id})
        return None if row is None else payment_from_row(row)

    async def find(self, payment_id: str, merchant_id: str) -> Payment | None:
        row = await self._unit.read(
            _FIND_PAYMENT, {"p_id": payment_id, "p_merchant_id": merchant_id}
        )
        return None if row is None else payment_from_row(row)

    async def of_transaction(self, transaction_id: str) -> list[Payment]:
        statement = _LOCK_OF_TRANSACTION if self._unit.locking else _OF_TRANSACTION
        rows = await self._unit.read_all(statement, {"p_transaction_id": transaction_id})
        return [payment_from_row(row) for row in rows]

    async def of_merchant(
        self,
        merchant_id: str,
        *,
        transaction_id: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Payment]:
        statement = _of_merchant(of_transaction=transaction_id is not None, after=after is not None)
        after_time, after_id = after or (None, None)
        params = {
            "p_merchant_id": merchant_id,
            "p_transaction_id": transaction_id,
            "p_after_time": after_time,
            "p_after_id": after_id,
            "p_limit": limit,
        }
        return [payment_from_row(row) for row in await self._unit.read_all(statement, params)]

    async def waiting(
        self, updated_before: datetime, limit: int, *, after: tuple[datetime, str] | None
    ) -> list[Payment]:
        after_time, after_id = after or (None, None)
        params = {
            "p_updated_before": updated_before,
            "p_after_time": after_time,
            "p_after_id": after_id,
            "p_limit": limit,
        }
        rows = await self._unit.read_all(_waiting(after=after is not None), params)
        return [payment_from_row(row) for row in rows]

    async def add(self, payment: Payment) -> None:
        self._unit.hit(_INSERT_PAYMENT, payment_values(payment))

    async def update(self, old: Payment, new: Payment) -> None:
        written_ = self._unit.hit(_UPDATE_PAYMENT, _update_params(old, new))
        self._unit.expect(written_, f"payment {old.id} changed")


class PostgresRefunds:
    def __init__(self, unit: PostgresPaymentsUnit) -> None:
        self._unit = unit

    async def add(self, refund: Refund, *, merchant_id: str, transaction_id: str) -> None:
        values = refund_values(refund, merchant_id=merchant_id, transaction_id=transaction_id)
        self._unit.execute(_INSERT_REFUND, values)

    async def get(self, refund_id: str) -> Refund | None:
        unit = self._unit
        row = await unit.read(_LOCK_REFUND if unit.locking else _GET_REFUND, {"p_id": refund_id})
        return None if row is None else refund_from_row(row)

    async def update(self, old: Refund, new: Refund) -> None:
        params = {
            "p_id": old.id,
            "p_status": new.status.value,
            "p_failure_reason": new.failure_reason.value if new.failure_reason else None,
            "p_processor_reference": new.processor_reference,
        }
        self._unit.expect(self._unit.hit(_SETTLE_REFUND, params), f"refund {old.id} changed")

    async def pending(
        self, created_before: datetime, limit: int, *, after: tuple[datetime, str] | None
    ) -> list[Refund]:
        after_time, after_id = after or (None, None)
        params = {
            "p_created_before": created_before,
            "p_after_time": after_time,
            "p_after_id": after_id,
            "p_limit": limit,
        }
        rows = await self._unit.read_all(_pending_refunds(after=after is not None), params)
        return [refund_from_row(row) for row in rows]
