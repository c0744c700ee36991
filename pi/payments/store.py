"""Storage of the payment service: the queries the use cases, outbox and reconciler need.

`PaymentStore` reads outside transactions and hands out `PaymentTx`, one database
transaction in which a use case locks its transaction's ref row, changes payments and
appends movements to the outbox, so that a money change and the movement that reports
it commit together or not at all. Lock order everywhere: idempotency key, then the
`transaction_refs` row, then payment rows.

A use case that decided on rows it read without locking them writes with the `*_if_*`
methods and `replace_idempotency_response` instead: conditional UPDATEs that write only
if the row is still what the decision assumed, and say whether they did (if not, the
caller locks and decides again).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from pi.payments.domain import (
    BankTransferFacts,
    CaptureMode,
    CardBrand,
    CardFacts,
    FailureReason,
    Payment,
    PaymentMethodType,
    PaymentStatus,
    Refund,
    TransactionRef,
    WalletFacts,
    WalletType,
)
from pi.payments.movements import encode_movement
from pi.payments.tables import (
    idempotency_keys,
    metadata,
    outbox,
    payments,
    refunds,
    transaction_refs,
)
from pi.platform.db.database import Database
from pi.platform.db.idempotency import Idempotency
from pi.platform.db.statements import Batch, Conn, Deferred, Record, Statement, for_any_of
from pi.platform.kernel.errors import Aborted
from pi.platform.ledger import Movement

__all__ = [
    "OutboxRow",
    "PaymentBatch",
    "PaymentStore",
    "PaymentTx",
    "metadata",
]


def _ref_from_row(row: Record) -> TransactionRef:
    return TransactionRef(
        transaction_id=row.transaction_id,
        merchant_id=row.merchant_id,
        amount=row.amount,
        currency=row.currency,
        closed=bool(row.closed),
        held_amount=row.held_amount,
        captured_amount=row.captured_amount,
        refunded_amount=row.refunded_amount,
    )


def _ref_update_params(
    old: TransactionRef, new: TransactionRef, movements: Sequence[Movement], now: datetime
) -> dict[str, Any]:
    return {
        "p_transaction_id": old.transaction_id,
        "p_held_delta": new.held_amount - old.held_amount,
        "p_captured_delta": new.captured_amount - old.captured_amount,
        "p_refunded_delta": new.refunded_amount - old.refunded_amount,
        "p_closed": new.closed,
        "p_movement_count": len(movements),
        "p_update_time": now,
    }


def _insert_ref_params(ref: TransactionRef, now: datetime) -> dict[str, Any]:
    return {
        "transaction_id": ref.transaction_id,
        "merchant_id": ref.merchant_id,
        "amount": ref.amount,
        "currency": ref.currency,
        "closed": ref.closed,
        "held_amount": ref.held_amount,
        "captured_amount": ref.captured_amount,
        "refunded_amount": ref.refunded_amount,
        "movement_count": 0,
        "create_time": now,
        "update_time": now,
    }


def _ref_update_if_unchanged_params(
    old: TransactionRef, new: TransactionRef, now: datetime
) -> dict[str, Any]:
    params = _ref_update_params(old, new, (), now)
    params.update(
        p_old_held=old.held_amount,
        p_old_captured=old.captured_amount,
        p_old_closed=old.closed,
    )
    return params


def _fresh_ref(ref: TransactionRef) -> TransactionRef:
    """`ref`'s facts as a row first holds them: nothing held, captured or refunded, open."""
    return TransactionRef(
        transaction_id=ref.transaction_id,
        merchant_id=ref.merchant_id,
        amount=ref.amount,
        currency=ref.currency,
    )


def _ref_update_if_fresh_params(
    fresh: TransactionRef, new: TransactionRef, now: datetime
) -> dict[str, Any]:
    if fresh != _fresh_ref(fresh):
        raise ValueError("a fresh ref holds nothing and is open")
    params = _ref_update_params(fresh, new, (), now)
    params.update(p_merchant_id=fresh.merchant_id, p_amount=fresh.amount, p_currency=fresh.currency)
    return params


def _update_payment_params(old: Payment, new: Payment) -> dict[str, Any]:
    values = _payment_values(new)
    params = {f"p_{name}": values[name] for name in _MUTABLE_PAYMENT_COLUMNS}
    params["p_id"] = old.id
    params["p_old_status"] = old.status.value
    params["p_old_refunded_amount"] = old.refunded_amount
    params["p_old_processor_reference"] = old.processor_reference
    return params


def _replace_response_params(
    scope: str, operation: str, key: str, old: bytes, new: bytes
) -> dict[str, Any]:
    return {
        "p_scope": scope,
        "p_operation": operation,
        "p_key": key,
        "p_old": old,
        "p_response": new,
    }


def _payment_from_row(row: Record) -> Payment:
    method = PaymentMethodType(row.method)
    card = None
    bank = None
    wallet = None
    if method is PaymentMethodType.CARD:
        card = CardFacts(
            brand=CardBrand(row.card_brand),
            last4=row.card_last4,
            fingerprint=row.card_fingerprint,
            exp_month=row.card_exp_month,
            exp_year=row.card_exp_year,
        )
    elif method is PaymentMethodType.BANK_TRANSFER:
        bank = BankTransferFacts(
            account_holder_name=row.bank_account_holder_name,
            account_last4=row.bank_account_last4,
        )
    else:
        wallet = WalletFacts(type=WalletType(row.wallet_type))
    return Payment(
        id=row.id,
        merchant_id=row.merchant_id,
        transaction_id=row.transaction_id,
        amount=row.amount,
        currency=row.currency,
        method=method,
        capture_mode=CaptureMode(row.capture_mode),
        status=PaymentStatus(row.status),
        failure_reason=FailureReason(row.failure_reason) if row.failure_reason else None,
        captured_amount=row.captured_amount,
        refunded_amount=row.refunded_amount,
        card=card,
        bank_transfer=bank,
        wallet=wallet,
        processor_reference=row.processor_reference,
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _payment_values(payment: Payment) -> dict[str, Any]:
    card, bank, wallet = payment.card, payment.bank_transfer, payment.wallet
    return {
        "id": payment.id,
        "merchant_id": payment.merchant_id,
        "transaction_id": payment.transaction_id,
        "amount": payment.amount,
        "currency": payment.currency,
        "method": payment.method.value,
        "capture_mode": payment.capture_mode.value,
        "status": payment.status.value,
        "failure_reason": payment.failure_reason.value if payment.failure_reason else None,
        "captured_amount": payment.captured_amount,
        "refunded_amount": payment.refunded_amount,
        "card_brand": card.brand.value if card else None,
        "card_last4": card.last4 if card else None,
        "card_fingerprint": card.fingerprint if card else None,
        "card_exp_month": card.exp_month if card else None,
        "card_exp_year": card.exp_year if card else None,
        "bank_account_holder_name": bank.account_holder_name if bank else None,
        "bank_account_last4": bank.account_last4 if bank else None,
        "wallet_type": wallet.type.value if wallet else None,
        "processor_reference": payment.processor_reference,
        "create_time": payment.create_time,
        "update_time": payment.update_time,
    }


# Columns a change may write; identity and amount columns are never updated (the
# PostgreSQL trigger refuses it too).
_MUTABLE_PAYMENT_COLUMNS = (
    "status",
    "failure_reason",
    "captured_amount",
    "refunded_amount",
    "processor_reference",
    "update_time",
)


def _written(table: sa.Table) -> sa.TableClause:
    """`table` as INSERTs and UPDATEs that run as `Statement`s write it: the same name and
    column types without the client-side defaults `Statement` refuses. The store passes
    every value itself, so the defaults would never apply anyway."""
    return sa.table(table.name, *(sa.column(column.name, column.type) for column in table.c))


_refs = _written(transaction_refs)
_payments = _written(payments)
_outbox = _written(outbox)

# Statements of the hot paths (create, settle, deliver), built once: executing a prebuilt
# statement with parameters skips building it and computing its cache key per call, and
# `Statement`s also skip SQLAlchemy's execution on PostgreSQL (see pi.platform.db.statements).
_REF_ID = transaction_refs.c.transaction_id == sa.bindparam("p_transaction_id")
_GET_REF_QUERY = sa.select(transaction_refs).where(_REF_ID)
_GET_REF = Statement(_GET_REF_QUERY)
_LOCK_REF = Statement(_GET_REF_QUERY.with_for_update())
# No conflict target: a concurrent first sight of the same transaction can collide on
# the (transaction_id, currency) key before the primary key, and either collision means
# the ref exists already (naming only the primary key made such a race fail). The
# rowcount says which happened.
_INSERT_REF = Statement(postgresql.insert(_refs).on_conflict_do_nothing())
_REF_ID_WRITTEN = _refs.c.transaction_id == sa.bindparam("p_transaction_id")
_HELD_DELTA = sa.bindparam("p_held_delta", type_=sa.BigInteger())
_UPDATE_REF_QUERY = (
    _refs.update()
    .where(_REF_ID_WRITTEN)
    .values(
        held_amount=_refs.c.held_amount + _HELD_DELTA,
        captured_amount=_refs.c.captured_amount
        + sa.bindparam("p_captured_delta", type_=sa.BigInteger()),
        refunded_amount=_refs.c.refunded_amount
        + sa.bindparam("p_refunded_delta", type_=sa.BigInteger()),
        closed=sa.bindparam("p_closed", type_=sa.Boolean()),
        movement_count=_refs.c.movement_count
        + sa.bindparam("p_movement_count", type_=sa.BigInteger()),
        update_time=sa.bindparam("p_update_time", type_=transaction_refs.c.update_time.type),
    )
    .returning(_refs.c.movement_count)
)
_UPDATE_REF = Statement(_UPDATE_REF_QUERY)
# The same UPDATE, applied only if what a budget check read is still the row's state.
_UPDATE_REF_IF_UNCHANGED = Statement(
    _UPDATE_REF_QUERY.where(
        _refs.c.held_amount == sa.bindparam("p_old_held", type_=sa.BigInteger()),
        _refs.c.captured_amount == sa.bindparam("p_old_captured", type_=sa.BigInteger()),
        _refs.c.closed == sa.bindparam("p_old_closed", type_=sa.Boolean()),
    )
)
# The same UPDATE on first sight of a transaction, applied only if the row is still as
# first inserted (by this transaction's `_INSERT_REF` or by RegisterTransactions): the
# facts the budget check used, nothing held, captured or refunded, no movement, open.
_NOTHING: sa.ColumnClause[Any] = sa.literal_column("0")
_UPDATE_REF_IF_FRESH = Statement(
    _UPDATE_REF_QUERY.where(
        _refs.c.merchant_id == sa.bindparam("p_merchant_id", type_=sa.String()),
        _refs.c.amount == sa.bindparam("p_amount", type_=sa.BigInteger()),
        _refs.c.currency == sa.bindparam("p_currency", type_=sa.String()),
        _refs.c.held_amount == _NOTHING,
        _refs.c.captured_amount == _NOTHING,
        _refs.c.refunded_amount == _NOTHING,
        _refs.c.movement_count == _NOTHING,
        _refs.c.closed == sa.false(),
    )
)
# The same UPDATE, applied only if the row still holds what it releases.
_UPDATE_REF_IF_HOLDING = Statement(_UPDATE_REF_QUERY.where(_refs.c.held_amount + _HELD_DELTA >= 0))
# RegisterTransactions: many refs in one statement, holding nothing yet. The refs go as
# one array per column, unnested into rows (one SQL text, prepared once, whatever their
# number). No conflict target, like `_INSERT_REF`: a ref that exists already is left as
# it is.
_REF_COLUMNS = ("transaction_id", "merchant_id", "amount", "currency")
_REF_ROWS = (
    sa.func.unnest(
        sa.bindparam("p_transaction_id", type_=postgresql.ARRAY(sa.String())),
        sa.bindparam("p_merchant_id", type_=postgresql.ARRAY(sa.String())),
        sa.bindparam("p_amount", type_=postgresql.ARRAY(sa.BigInteger())),
        sa.bindparam("p_currency", type_=postgresql.ARRAY(sa.String())),
    )
    .table_valued(*_REF_COLUMNS)
    .render_derived(name="r")
)
_REF_NOW = sa.bindparam("p_now", type_=transaction_refs.c.create_time.type)
_INSERT_REFS = Statement(
    postgresql.insert(_refs)
    .from_select(
        [
            *_REF_COLUMNS,
            "closed",
            "held_amount",
            "captured_amount",
            "refunded_amount",
            "movement_count",
            "create_time",
            "update_time",
        ],
        sa.select(
            *_REF_ROWS.c,
            sa.false(),
            *(sa.literal_column("0") for _ in range(4)),
            _REF_NOW,
            _REF_NOW,
        ),
    )
    .on_conflict_do_nothing()
    .returning(_refs.c.transaction_id)
)
_GET_REFS = for_any_of(
    transaction_refs.c.transaction_id,
    lambda criterion: sa.select(transaction_refs).where(criterion),
)
_PAYMENT_ID = payments.c.id == sa.bindparam("p_id")
_OF_MERCHANT = payments.c.merchant_id == sa.bindparam("p_merchant_id")
# By (whether the merchant must match, whether to lock the row).
_GET_PAYMENT = {
    (False, False): Statement(sa.select(payments).where(_PAYMENT_ID)),
    (False, True): Statement(sa.select(payments).where(_PAYMENT_ID).with_for_update()),
    (True, False): Statement(sa.select(payments).where(_PAYMENT_ID, _OF_MERCHANT)),
    (True, True): Statement(sa.select(payments).where(_PAYMENT_ID, _OF_MERCHANT).with_for_update()),
}
_INSERT_PAYMENT = Statement(_payments.insert())
_LOCK_PAYMENTS_OF_TRANSACTION = Statement(
    sa.select(payments)
    .where(payments.c.transaction_id == sa.bindparam("p_transaction_id"))
    .order_by(payments.c.create_time, payments.c.id)
    .with_for_update()
)
_INSERT_REFUND = Statement(_written(refunds).insert())
# Conditional on the columns a change reads, so a writer that did not lock the row
# (settlement after T1) changes it only if nobody else did in between.
_UPDATE_PAYMENT = Statement(
    _payments.update()
    .where(
        _payments.c.id == sa.bindparam("p_id"),
        _payments.c.status == sa.bindparam("p_old_status"),
        _payments.c.refunded_amount == sa.bindparam("p_old_refunded_amount"),
        _payments.c.processor_reference.is_not_distinct_from(
            sa.bindparam("p_old_processor_reference", type_=payments.c.processor_reference.type)
        ),
    )
    .values(
        {
            name: sa.bindparam(f"p_{name}", type_=payments.c[name].type)
            for name in _MUTABLE_PAYMENT_COLUMNS
        }
    )
)
# delivered_time and last_error start NULL: left out of the INSERT.
_OUTBOX_COLUMNS = (
    "id",
    "transaction_id",
    "seq",
    "kind",
    "payload",
    "create_time",
    "attempts",
    "next_attempt_time",
)


# Rows per outbox INSERT: a change makes one or two movements, closing a transaction one
# per voided payment; this keeps the bound parameters far below the drivers' limits.
_OUTBOX_ROWS_PER_INSERT = 256


@lru_cache(maxsize=16)
def _insert_outbox(rows: int) -> Statement:
    """One INSERT of `rows` movements (one round trip, not one statement per row)."""
    return Statement(
        _outbox.insert().values(
            [
                {
                    name: sa.bindparam(f"p{index}_{name}", type_=outbox.c[name].type)
                    for name in _OUTBOX_COLUMNS
                }
                for index in range(rows)
            ]
        )
    )


# One movement appended to the outbox with its seq taken from the ref row, only if the
# row still holds what `_UPDATE_REF_IF_HOLDING` releases: in a batch it goes before that
# UPDATE (which cannot hand it the count it returns), as the next seq after the row's
# count plus `p_offset`. FOR UPDATE takes the ref's lock first (re-checking the condition
# on the newest row), so the UPDATE that follows sees the same row and agrees.
_APPEND_MOVEMENT_IF_HOLDING = Statement(
    sa.insert(_outbox).from_select(
        _OUTBOX_COLUMNS,
        sa.select(
            sa.bindparam("p_id", type_=outbox.c.id.type),
            transaction_refs.c.transaction_id,
            transaction_refs.c.movement_count + sa.bindparam("p_offset", type_=sa.BigInteger()),
            sa.bindparam("p_kind", type_=outbox.c.kind.type),
            sa.bindparam("p_payload", type_=outbox.c.payload.type),
            sa.bindparam("p_now", type_=outbox.c.create_time.type),
            sa.literal(0, type_=outbox.c.attempts.type),
            sa.bindparam("p_now", type_=outbox.c.next_attempt_time.type),
        )
        .where(_REF_ID, transaction_refs.c.held_amount + _HELD_DELTA >= 0)
        .with_for_update(),
    )
)

_IDEMPOTENCY_KEY = sa.and_(
    idempotency_keys.c.scope == sa.bindparam("p_scope"),
    idempotency_keys.c.operation == sa.bindparam("p_operation"),
    idempotency_keys.c.key == sa.bindparam("p_key"),
)
_LOCK_IDEMPOTENCY_RESPONSE = Statement(
    sa.select(idempotency_keys.c.response).where(_IDEMPOTENCY_KEY).with_for_update()
)
_SET_IDEMPOTENCY_RESPONSE_QUERY = (
    idempotency_keys.update()
    .where(_IDEMPOTENCY_KEY)
    .values(response=sa.bindparam("p_response", type_=idempotency_keys.c.response.type))
)
_SET_IDEMPOTENCY_RESPONSE = Statement(_SET_IDEMPOTENCY_RESPONSE_QUERY)
_REPLACE_IDEMPOTENCY_RESPONSE = Statement(
    _SET_IDEMPOTENCY_RESPONSE_QUERY.where(
        idempotency_keys.c.response == sa.bindparam("p_old", type_=idempotency_keys.c.response.type)
    )
)


@cache
def _list_payments_statement(*, of_transaction: bool, after: bool) -> Statement:
    """`list_payments`' query with the filters it uses (4 at most, built once each)."""
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
def _processing_payments_statement(*, after: bool) -> Statement:
    """`processing_payments`' query, from the start or after a cursor."""
    p = payments
    query = sa.select(p).where(
        p.c.status == PaymentStatus.PROCESSING.value,
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


# The dispatcher's statements.
_o = outbox
_earlier = outbox.alias("earlier")
_NOW = sa.bindparam("p_now", type_=outbox.c.next_attempt_time.type)
# Due rows, except those with an earlier undelivered row of their transaction that sorts
# after them: one postponed (with every row of its transaction) before they were
# written. Such a row is held back until that earlier one is delivered, or it would
# overtake it: alone while the earlier one is not due, or when the batch's LIMIT cuts
# between them. So a batch holds, of each transaction, its first undelivered rows in
# order. The partial index on (transaction_id, seq) of undelivered rows (migration
# 0002) keeps the check to the few undelivered rows of the transaction.
_DUE_MOVEMENTS = Statement(
    sa.select(_o.c.id, _o.c.transaction_id, _o.c.seq, _o.c.payload, _o.c.attempts)
    .where(
        _o.c.delivered_time.is_(None),
        _o.c.next_attempt_time <= _NOW,
        ~sa.exists()
        .where(
            _earlier.c.transaction_id == _o.c.transaction_id,
            _earlier.c.seq < _o.c.seq,
            _earlier.c.delivered_time.is_(None),
            _earlier.c.next_attempt_time > _o.c.next_attempt_time,
        )
        .correlate(_o),
    )
    .order_by(_o.c.next_attempt_time, _o.c.transaction_id, _o.c.seq)
    .limit(sa.bindparam("p_limit", type_=sa.Integer()))
)
_NEXT_MOVEMENT_TIME = Statement(
    sa.select(sa.func.min(_o.c.next_attempt_time).label("due")).where(_o.c.delivered_time.is_(None))
)
_UNDELIVERED_COUNT = Statement(
    sa.select(sa.func.count().label("count")).select_from(_o).where(_o.c.delivered_time.is_(None))
)
# The ids go as one array parameter (one prepared statement whatever their number).
_MARK_DELIVERED = for_any_of(
    _outbox.c.id,
    lambda criterion: (
        _outbox.update()
        .where(criterion, _outbox.c.delivered_time.is_(None))
        .values(delivered_time=sa.bindparam("p_now", type_=outbox.c.delivered_time.type))
    ),
)
_COUNT_ATTEMPT = Statement(
    _outbox.update()
    .where(_outbox.c.id == sa.bindparam("p_id"))
    .values(
        attempts=_outbox.c.attempts + 1,
        last_error=sa.bindparam("p_error", type_=outbox.c.last_error.type),
    )
)
_PURGE_DELIVERED = Statement(
    _outbox.delete().where(
        _outbox.c.delivered_time.is_not(None),
        _outbox.c.delivered_time
        < sa.bindparam("p_delivered_before", type_=outbox.c.delivered_time.type),
    )
)
_POSTPONE = Statement(
    _outbox.update()
    .where(
        _outbox.c.transaction_id == sa.bindparam("p_transaction_id"),
        _outbox.c.delivered_time.is_(None),
    )
    .values(next_attempt_time=sa.bindparam("p_retry_at", type_=outbox.c.next_attempt_time.type))
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An undelivered movement: its id, transaction, position and serialized `Movement`."""

    id: str
    transaction_id: str
    seq: int
    payload: bytes
    attempts: int


class PaymentTx:
    """One database transaction of the payment service (see the module docstring)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    # -- transaction refs ---------------------------------------------------------------

    async def lock_ref(self, transaction_id: str) -> TransactionRef | None:
        """The ref row, locked until the end of this transaction (FOR UPDATE)."""
        row = await _LOCK_REF.first(self.conn, {"p_transaction_id": transaction_id})
        return None if row is None else _ref_from_row(row)

    async def insert_ref(self, ref: TransactionRef, now: datetime) -> bool:
        """Insert the ref unless a row for its transaction exists already; whether it did.

        An inserted row is this transaction's alone until it commits (a concurrent
        insert of the same transaction waits, then does nothing), so it needs no lock.
        """
        return await _INSERT_REF.execute(self.conn, _insert_ref_params(ref, now)) == 1

    async def update_ref(
        self,
        old: TransactionRef,
        new: TransactionRef,
        movements: Sequence[Movement],
        now: datetime,
    ) -> None:
        """Write the ref's new amounts and append `movements` to the outbox, in order.

        The amounts are written as deltas from `old`, so even a caller that forgot the
        lock could not lose an update; the CHECK constraints are the last word.
        """
        if not await self._update_ref(_UPDATE_REF, old, new, movements, now):
            raise LookupError(f"no ref for {old.transaction_id}")  # pragma: no cover - locked

    async def update_ref_if_holding(
        self,
        old: TransactionRef,
        new: TransactionRef,
        movements: Sequence[Movement],
        now: datetime,
    ) -> bool:
        """`update_ref`, only if the row still holds what the change releases; whether
        it did. For a writer that has not locked its payment yet (the lock order puts
        the ref first): if the hold it releases is gone, someone else released it, and
        this says so instead of failing on the CHECK.
        """
        return await self._update_ref(_UPDATE_REF_IF_HOLDING, old, new, movements, now)

    async def _update_ref(
        self,
        statement: Statement,
        old: TransactionRef,
        new: TransactionRef,
        movements: Sequence[Movement],
        now: datetime,
    ) -> bool:
        written = await statement.first(self.conn, _ref_update_params(old, new, movements, now))
        if written is None:
            return False
        first = written.movement_count - len(movements) + 1
        for start in range(0, len(movements), _OUTBOX_ROWS_PER_INSERT):
            chunk = movements[start : start + _OUTBOX_ROWS_PER_INSERT]
            params: dict[str, Any] = {}
            for index, movement in enumerate(chunk):
                row = {
                    "id": movement.id,
                    "transaction_id": movement.transaction_id,
                    "seq": first + start + index,
                    "kind": movement.kind.value,
                    "payload": encode_movement(movement),
                    "create_time": now,
                    "attempts": 0,
                    "next_attempt_time": now,
                }
                params.update((f"p{index}_{name}", value) for name, value in row.items())
            await _insert_outbox(len(chunk)).execute(self.conn, params)
        return True

    async def update_ref_if_unchanged(
        self, old: TransactionRef, new: TransactionRef, now: datetime
    ) -> bool:
        """Write `new` only if the row still holds `old`'s amounts and `closed`; whether
        it did. A budget check made on `old` without a lock then holds under the row
        lock this UPDATE takes (PostgreSQL re-checks the condition on the row it locks).
        """
        params = _ref_update_if_unchanged_params(old, new, now)
        return await _UPDATE_REF_IF_UNCHANGED.first(self.conn, params) is not None

    async def hold_on_fresh_ref(
        self, fresh: TransactionRef, new: TransactionRef, now: datetime
    ) -> bool:
        """First sight of a transaction: make sure its ref exists (`fresh`, holding
        nothing; a row there already is left as it is), then write `new` only if the row
        is still exactly `fresh` (see `_UPDATE_REF_IF_FRESH`); whether it did. A ref
        pushed by RegisterTransactions meanwhile is as good as our own insert; a row
        with other facts, a hold, a movement or closed is not (decide under its lock)."""
        await _INSERT_REF.execute(self.conn, _insert_ref_params(_fresh_ref(fresh), now))
        params = _ref_update_if_fresh_params(fresh, new, now)
        return await _UPDATE_REF_IF_FRESH.first(self.conn, params) is not None

    async def insert_refs(self, refs: Sequence[TransactionRef], now: datetime) -> set[str]:
        """Insert the refs (one statement; distinct transactions, holding nothing) except
        those whose transaction has a row already, left as they are; the ids inserted."""
        if not refs:
            return set()
        rows = await _INSERT_REFS.all(
            self.conn,
            {
                "p_transaction_id": [ref.transaction_id for ref in refs],
                "p_merchant_id": [ref.merchant_id for ref in refs],
                "p_amount": [ref.amount for ref in refs],
                "p_currency": [ref.currency for ref in refs],
                "p_now": now,
            },
        )
        return {row.transaction_id for row in rows}

    async def get_refs(self, transaction_ids: Sequence[str]) -> dict[str, TransactionRef]:
        """The refs of these transactions that exist (one statement, no lock), by id."""
        if not transaction_ids:
            return {}
        rows = await _GET_REFS.all(self.conn, {"p_ids": list(transaction_ids)})
        return {row.transaction_id: _ref_from_row(row) for row in rows}

    # -- payments -----------------------------------------------------------------------

    async def get_payment(
        self, payment_id: str, *, merchant_id: str | None = None, lock: bool = False
    ) -> Payment | None:
        statement = _GET_PAYMENT[merchant_id is not None, lock]
        row = await statement.first(self.conn, {"p_id": payment_id, "p_merchant_id": merchant_id})
        return None if row is None else _payment_from_row(row)

    async def payments_of_transaction(self, transaction_id: str) -> list[Payment]:
        """Every payment of a transaction, oldest first, locked."""
        rows = await _LOCK_PAYMENTS_OF_TRANSACTION.all(
            self.conn, {"p_transaction_id": transaction_id}
        )
        return [_payment_from_row(row) for row in rows]

    async def insert_payment(self, payment: Payment) -> None:
        await _INSERT_PAYMENT.execute(self.conn, _payment_values(payment))

    async def update_payment(self, old: Payment, new: Payment) -> None:
        """Write `new` over `old`; Aborted if the row is no longer what `old` says."""
        if not await self.update_payment_if_unchanged(old, new):
            raise Aborted(
                "The payment changed concurrently; retry.", reason="CONCURRENT_MODIFICATION"
            )

    async def update_payment_if_unchanged(self, old: Payment, new: Payment) -> bool:
        """Write `new` over `old` if the row is still what `old` says; whether it did."""
        return await _UPDATE_PAYMENT.execute(self.conn, _update_payment_params(old, new)) == 1

    async def insert_refund(self, refund: Refund, *, merchant_id: str, transaction_id: str) -> None:
        await _INSERT_REFUND.execute(
            self.conn,
            {
                "id": refund.id,
                "payment_id": refund.payment_id,
                "merchant_id": merchant_id,
                "transaction_id": transaction_id,
                "amount": refund.amount,
                "currency": refund.currency,
                "reason": refund.reason,
                "status": refund.status.value,
                "create_time": refund.create_time,
            },
        )

    # -- idempotency rows owned by the create flow ---------------------------------------

    async def lock_idempotency_response(self, scope: str, operation: str, key: str) -> bytes | None:
        """The stored response of a claimed key, locked so one request finishes it."""
        params = {"p_scope": scope, "p_operation": operation, "p_key": key}
        row = await _LOCK_IDEMPOTENCY_RESPONSE.first(self.conn, params)
        return None if row is None or row.response is None else bytes(row.response)

    async def set_idempotency_response(
        self, scope: str, operation: str, key: str, response: bytes
    ) -> None:
        await _SET_IDEMPOTENCY_RESPONSE.execute(
            self.conn,
            {"p_scope": scope, "p_operation": operation, "p_key": key, "p_response": response},
        )

    async def replace_idempotency_response(
        self, scope: str, operation: str, key: str, old: bytes, new: bytes
    ) -> bool:
        """Store `new` if the key still holds `old`; whether it did. The UPDATE locks the
        key's row, so of two requests finishing one key the second waits and then finds
        `old` gone."""
        params = _replace_response_params(scope, operation, key, old, new)
        return await _REPLACE_IDEMPOTENCY_RESPONSE.execute(self.conn, params) == 1


class PaymentBatch:
    """Writes of one transaction queued in a `Batch`, to go with its BEGIN in one round
    trip (`PaymentStore.transaction(batch)`): the `PaymentTx` methods of the same names,
    each returning the `Deferred` of whether it wrote, read in the transaction's block.

    Every queued write runs whatever the earlier ones did: a caller that finds one did
    not write rolls the transaction back.
    """

    def __init__(self) -> None:
        self.batch = Batch()

    def update_ref_if_unchanged(
        self, old: TransactionRef, new: TransactionRef, now: datetime
    ) -> Deferred[bool]:
        params = _ref_update_if_unchanged_params(old, new, now)
        return self.batch.hit(_UPDATE_REF_IF_UNCHANGED, params)

    def hold_on_fresh_ref(
        self, fresh: TransactionRef, new: TransactionRef, now: datetime
    ) -> Deferred[bool]:
        """`PaymentTx.hold_on_fresh_ref`: the INSERT, then the conditional UPDATE (which
        sees the row whoever inserted it: a concurrent insert makes ours wait for its
        commit); whether the UPDATE wrote."""
        self.batch.execute(_INSERT_REF, _insert_ref_params(_fresh_ref(fresh), now))
        return self.batch.hit(_UPDATE_REF_IF_FRESH, _ref_update_if_fresh_params(fresh, new, now))

    def update_ref_if_holding(
        self,
        old: TransactionRef,
        new: TransactionRef,
        movements: Sequence[Movement],
        now: datetime,
    ) -> Deferred[bool]:
        """`PaymentTx.update_ref_if_holding`: the movements first, each on the same
        condition as the UPDATE (see `_APPEND_MOVEMENT_IF_HOLDING`); whether the UPDATE
        wrote (the movements did too then: they locked the row it updates)."""
        held_delta = new.held_amount - old.held_amount
        for index, movement in enumerate(movements):
            self.batch.execute(
                _APPEND_MOVEMENT_IF_HOLDING,
                {
                    "p_transaction_id": old.transaction_id,
                    "p_held_delta": held_delta,
                    "p_id": movement.id,
                    "p_offset": index + 1,
                    "p_kind": movement.kind.value,
                    "p_payload": encode_movement(movement),
                    "p_now": now,
                },
            )
        params = _ref_update_params(old, new, movements, now)
        return self.batch.hit(_UPDATE_REF_IF_HOLDING, params)

    def insert_payment(self, payment: Payment) -> Deferred[bool]:
        return self.batch.hit(_INSERT_PAYMENT, _payment_values(payment))

    def update_payment_if_unchanged(self, old: Payment, new: Payment) -> Deferred[bool]:
        return self.batch.hit(_UPDATE_PAYMENT, _update_payment_params(old, new))

    def replace_idempotency_response(
        self, scope: str, operation: str, key: str, old: bytes, new: bytes
    ) -> Deferred[bool]:
        params = _replace_response_params(scope, operation, key, old, new)
        return self.batch.hit(_REPLACE_IDEMPOTENCY_RESPONSE, params)


class PaymentStore:
    """The payment service's database, behind the queries its use cases need."""

    def __init__(self, database: Database) -> None:
        # Reads are single statements: on `database.reading()`, autocommit, no BEGIN/COMMIT
        # (see pi.platform.db.database).
        self._database = database

    @asynccontextmanager
    async def transaction(self, batch: PaymentBatch | None = None) -> AsyncIterator[PaymentTx]:
        """A database transaction: committed when the block ends, rolled back on error;
        with `batch`, begun by running it (one round trip on PostgreSQL)."""
        async with self._database.transaction(None if batch is None else batch.batch) as conn:
            yield PaymentTx(conn)

    def reading(self) -> AbstractAsyncContextManager[Conn]:
        """An autocommit connection, for single-statement reads by shared helpers
        (e.g. `Idempotency.reject_reuse`)."""
        return self._database.reading()

    # -- reads --------------------------------------------------------------------------

    async def get_ref(self, transaction_id: str) -> TransactionRef | None:
        """The ref as committed now (no lock: decide under one before relying on it)."""
        async with self._database.reading() as conn:
            row = await _GET_REF.first(conn, {"p_transaction_id": transaction_id})
        return None if row is None else _ref_from_row(row)

    async def get_payment(self, merchant_id: str, payment_id: str) -> Payment | None:
        async with self._database.reading() as conn:
            row = await _GET_PAYMENT[True, False].first(
                conn, {"p_id": payment_id, "p_merchant_id": merchant_id}
            )
        return None if row is None else _payment_from_row(row)

    async def list_payments(
        self,
        merchant_id: str,
        *,
        transaction_id: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Payment]:
        """The merchant's payments, newest first, strictly after the cursor `after`."""
        statement = _list_payments_statement(
            of_transaction=transaction_id is not None, after=after is not None
        )
        after_time, after_id = after or (None, None)
        params = {
            "p_merchant_id": merchant_id,
            "p_transaction_id": transaction_id,
            "p_after_time": after_time,
            "p_after_id": after_id,
            "p_limit": limit,
        }
        async with self._database.reading() as conn:
            rows = await statement.all(conn, params)
        return [_payment_from_row(row) for row in rows]

    async def processing_payments(
        self,
        updated_before: datetime,
        limit: int,
        *,
        after: tuple[datetime, str] | None = None,
    ) -> list[Payment]:
        """PROCESSING payments not touched since `updated_before`, in (update_time, id)
        order, strictly after the cursor `after`."""
        statement = _processing_payments_statement(after=after is not None)
        after_time, after_id = after or (None, None)
        params = {
            "p_updated_before": updated_before,
            "p_after_time": after_time,
            "p_after_id": after_id,
            "p_limit": limit,
        }
        async with self._database.reading() as conn:
            rows = await statement.all(conn, params)
        return [_payment_from_row(row) for row in rows]

    async def purge(self, *, delivered_before: datetime, idempotency: Idempotency) -> int:
        """Housekeeping: delete movements delivered before `delivered_before` and
        idempotency keys past their retention. Returns how many rows went."""
        async with self._database.transaction() as conn:
            movements = await _PURGE_DELIVERED.execute(
                conn, {"p_delivered_before": delivered_before}
            )
            keys = await idempotency.purge(conn)
        return movements + keys

    # -- outbox -------------------------------------------------------------------------

    async def due_movements(self, now: datetime, limit: int) -> list[OutboxRow]:
        """Undelivered movements whose next attempt is due, in creation order; of each
        transaction only its first ones, so none overtakes an earlier one (see
        `_DUE_MOVEMENTS`)."""
        async with self._database.reading() as conn:
            rows = await _DUE_MOVEMENTS.all(conn, {"p_now": now, "p_limit": limit})
        return [
            OutboxRow(r.id, r.transaction_id, r.seq, bytes(r.payload), r.attempts) for r in rows
        ]

    async def next_movement_time(self) -> datetime | None:
        """When the earliest undelivered movement is due, or None if all are delivered."""
        async with self._database.reading() as conn:
            row = await _NEXT_MOVEMENT_TIME.one(conn)
        due: datetime | None = row.due
        return due

    async def mark_delivered(self, movement_ids: Sequence[str], now: datetime) -> None:
        if not movement_ids:
            return
        # One statement, atomic on its own: no BEGIN/COMMIT around it.
        async with self._database.reading() as conn:
            await _MARK_DELIVERED.execute(conn, {"p_ids": list(movement_ids), "p_now": now})

    async def postpone(
        self, transaction_id: str, head_id: str, retry_at: datetime, error: str
    ) -> None:
        """After a failed delivery: count the attempt on the head and hold back every
        undelivered movement of the transaction until `retry_at`, keeping their order."""
        async with self._database.transaction() as conn:
            await _COUNT_ATTEMPT.execute(conn, {"p_id": head_id, "p_error": error[:500]})
            await _POSTPONE.execute(
                conn, {"p_transaction_id": transaction_id, "p_retry_at": retry_at}
            )

    async def undelivered_count(self) -> int:
        async with self._database.reading() as conn:
            row = await _UNDELIVERED_COUNT.one(conn)
        return int(row.count)
