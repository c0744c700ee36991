"""Storage of the payment service: the queries the use cases, outbox and reconciler need.

`PaymentStore` reads outside transactions and hands out `PaymentTx`, one database
transaction in which a use case locks its transaction's ref row, changes payments and
appends movements to the outbox, so that a money change and the movement that reports
it commit together or not at all. Lock order everywhere: idempotency key, then the
`transaction_refs` row, then payment rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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
from pi.platform.db import autocommit
from pi.platform.errors import Aborted
from pi.platform.idempotency import Idempotency
from pi.transactions.domain import Movement

__all__ = [
    "OutboxRow",
    "PaymentStore",
    "PaymentTx",
    "metadata",
]


def _ref_from_row(row: Any) -> TransactionRef:
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


def _payment_from_row(row: Any) -> Payment:
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


# Statements of the hot paths (create, settle), built once: executing a prebuilt
# statement with parameters skips building it and computing its cache key per call.
_LOCK_REF = (
    sa.select(transaction_refs)
    .where(transaction_refs.c.transaction_id == sa.bindparam("p_transaction_id"))
    .with_for_update()
)
_UPDATE_REF = (
    transaction_refs.update()
    .where(transaction_refs.c.transaction_id == sa.bindparam("p_transaction_id"))
    .values(
        held_amount=transaction_refs.c.held_amount
        + sa.bindparam("p_held_delta", type_=sa.BigInteger()),
        captured_amount=transaction_refs.c.captured_amount
        + sa.bindparam("p_captured_delta", type_=sa.BigInteger()),
        refunded_amount=transaction_refs.c.refunded_amount
        + sa.bindparam("p_refunded_delta", type_=sa.BigInteger()),
        closed=sa.bindparam("p_closed", type_=sa.Boolean()),
        movement_count=transaction_refs.c.movement_count
        + sa.bindparam("p_movement_count", type_=sa.BigInteger()),
        update_time=sa.bindparam("p_update_time", type_=transaction_refs.c.update_time.type),
    )
    .returning(transaction_refs.c.movement_count)
)
_LOCK_PAYMENT = sa.select(payments).where(payments.c.id == sa.bindparam("p_id")).with_for_update()
_INSERT_PAYMENT = payments.insert()
_UPDATE_PAYMENT = (
    payments.update()
    .where(
        payments.c.id == sa.bindparam("p_id"),
        payments.c.status == sa.bindparam("p_old_status"),
        payments.c.refunded_amount == sa.bindparam("p_old_refunded_amount"),
    )
    .values(
        {
            name: sa.bindparam(f"p_{name}", type_=payments.c[name].type)
            for name in _MUTABLE_PAYMENT_COLUMNS
        }
    )
)
_INSERT_OUTBOX = outbox.insert()
_IDEMPOTENCY_KEY = sa.and_(
    idempotency_keys.c.scope == sa.bindparam("p_scope"),
    idempotency_keys.c.operation == sa.bindparam("p_operation"),
    idempotency_keys.c.key == sa.bindparam("p_key"),
)
_LOCK_IDEMPOTENCY_RESPONSE = (
    sa.select(idempotency_keys.c.response).where(_IDEMPOTENCY_KEY).with_for_update()
)
_SET_IDEMPOTENCY_RESPONSE = (
    idempotency_keys.update()
    .where(_IDEMPOTENCY_KEY)
    .values(response=sa.bindparam("p_response", type_=idempotency_keys.c.response.type))
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

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._postgres = conn.dialect.name == "postgresql"

    # -- transaction refs ---------------------------------------------------------------

    async def lock_ref(self, transaction_id: str) -> TransactionRef | None:
        """The ref row, locked until the end of this transaction (FOR UPDATE)."""
        row = (await self.conn.execute(_LOCK_REF, {"p_transaction_id": transaction_id})).first()
        return None if row is None else _ref_from_row(row)

    async def insert_ref(self, ref: TransactionRef, now: datetime) -> None:
        """Insert the ref unless a row for its transaction exists already."""
        dialect = postgresql if self._postgres else sqlite
        statement = (
            dialect.insert(transaction_refs)
            .values(
                transaction_id=ref.transaction_id,
                merchant_id=ref.merchant_id,
                amount=ref.amount,
                currency=ref.currency,
                closed=ref.closed,
                held_amount=ref.held_amount,
                captured_amount=ref.captured_amount,
                refunded_amount=ref.refunded_amount,
                movement_count=0,
                create_time=now,
                update_time=now,
            )
            # No conflict target: a concurrent first sight of the same transaction can
            # collide on the (transaction_id, currency) key before the primary key, and
            # either collision means the ref already exists.
            .on_conflict_do_nothing()
        )
        await self.conn.execute(statement)

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
        result = await self.conn.execute(
            _UPDATE_REF,
            {
                "p_transaction_id": old.transaction_id,
                "p_held_delta": new.held_amount - old.held_amount,
                "p_captured_delta": new.captured_amount - old.captured_amount,
                "p_refunded_delta": new.refunded_amount - old.refunded_amount,
                "p_closed": new.closed,
                "p_movement_count": len(movements),
                "p_update_time": now,
            },
        )
        count = result.scalar_one()
        if movements:
            first = count - len(movements) + 1
            await self.conn.execute(
                _INSERT_OUTBOX,
                [
                    {
                        "id": movement.id,
                        "transaction_id": movement.transaction_id,
                        "seq": first + index,
                        "kind": movement.kind.value,
                        "payload": encode_movement(movement),
                        "create_time": now,
                        "delivered_time": None,
                        "attempts": 0,
                        "next_attempt_time": now,
                        "last_error": None,
                    }
                    for index, movement in enumerate(movements)
                ],
            )

    # -- payments -----------------------------------------------------------------------

    async def get_payment(
        self, payment_id: str, *, merchant_id: str | None = None, lock: bool = False
    ) -> Payment | None:
        if lock and merchant_id is None:
            row = (await self.conn.execute(_LOCK_PAYMENT, {"p_id": payment_id})).first()
            return None if row is None else _payment_from_row(row)
        query = sa.select(payments).where(payments.c.id == payment_id)
        if merchant_id is not None:
            query = query.where(payments.c.merchant_id == merchant_id)
        if lock:
            query = query.with_for_update()
        row = (await self.conn.execute(query)).first()
        return None if row is None else _payment_from_row(row)

    async def payments_of_transaction(self, transaction_id: str) -> list[Payment]:
        """Every payment of a transaction, oldest first, locked."""
        rows = await self.conn.execute(
            sa.select(payments)
            .where(payments.c.transaction_id == transaction_id)
            .order_by(payments.c.create_time, payments.c.id)
            .with_for_update()
        )
        return [_payment_from_row(row) for row in rows]

    async def insert_payment(self, payment: Payment) -> None:
        await self.conn.execute(_INSERT_PAYMENT, _payment_values(payment))

    async def update_payment(self, old: Payment, new: Payment) -> None:
        """Write `new` over `old`; Aborted if the row is no longer what `old` says."""
        values = _payment_values(new)
        params = {f"p_{name}": values[name] for name in _MUTABLE_PAYMENT_COLUMNS}
        params["p_id"] = old.id
        params["p_old_status"] = old.status.value
        params["p_old_refunded_amount"] = old.refunded_amount
        result = await self.conn.execute(_UPDATE_PAYMENT, params)
        if result.rowcount != 1:
            raise Aborted(
                "The payment changed concurrently; retry.", reason="CONCURRENT_MODIFICATION"
            )

    async def insert_refund(self, refund: Refund, *, merchant_id: str, transaction_id: str) -> None:
        await self.conn.execute(
            refunds.insert().values(
                id=refund.id,
                payment_id=refund.payment_id,
                merchant_id=merchant_id,
                transaction_id=transaction_id,
                amount=refund.amount,
                currency=refund.currency,
                reason=refund.reason,
                status=refund.status.value,
                create_time=refund.create_time,
            )
        )

    # -- idempotency rows owned by the create flow ---------------------------------------

    async def lock_idempotency_response(self, scope: str, operation: str, key: str) -> bytes | None:
        """The stored response of a claimed key, locked so one request finishes it."""
        params = {"p_scope": scope, "p_operation": operation, "p_key": key}
        row = (await self.conn.execute(_LOCK_IDEMPOTENCY_RESPONSE, params)).first()
        return None if row is None or row.response is None else bytes(row.response)

    async def set_idempotency_response(
        self, scope: str, operation: str, key: str, response: bytes
    ) -> None:
        await self.conn.execute(
            _SET_IDEMPOTENCY_RESPONSE,
            {"p_scope": scope, "p_operation": operation, "p_key": key, "p_response": response},
        )


class PaymentStore:
    """The payment service's database, behind the queries its use cases need."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # Reads are single statements: autocommit, no BEGIN/ROLLBACK (see pi.platform.db).
        self._reads = autocommit(engine)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PaymentTx]:
        """A database transaction: committed when the block ends, rolled back on error."""
        async with self._engine.begin() as conn:
            yield PaymentTx(conn)

    # -- reads --------------------------------------------------------------------------

    async def get_ref(self, transaction_id: str) -> TransactionRef | None:
        async with self._reads.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(transaction_refs).where(
                        transaction_refs.c.transaction_id == transaction_id
                    )
                )
            ).first()
        return None if row is None else _ref_from_row(row)

    async def get_payment(self, merchant_id: str, payment_id: str) -> Payment | None:
        async with self._reads.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(payments).where(
                        payments.c.id == payment_id, payments.c.merchant_id == merchant_id
                    )
                )
            ).first()
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
        p = payments
        query = sa.select(p).where(p.c.merchant_id == merchant_id)
        if transaction_id is not None:
            query = query.where(p.c.transaction_id == transaction_id)
        if after is not None:
            time, last_id = after
            query = query.where(
                sa.or_(p.c.create_time < time, sa.and_(p.c.create_time == time, p.c.id < last_id))
            )
        query = query.order_by(p.c.create_time.desc(), p.c.id.desc()).limit(limit)
        async with self._reads.connect() as conn:
            rows = await conn.execute(query)
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
        p = payments
        query = sa.select(p).where(
            p.c.status == PaymentStatus.PROCESSING.value, p.c.update_time < updated_before
        )
        if after is not None:
            time, last_id = after
            query = query.where(
                sa.or_(p.c.update_time > time, sa.and_(p.c.update_time == time, p.c.id > last_id))
            )
        async with self._reads.connect() as conn:
            rows = await conn.execute(query.order_by(p.c.update_time, p.c.id).limit(limit))
            return [_payment_from_row(row) for row in rows]

    async def purge(self, *, delivered_before: datetime, idempotency: Idempotency) -> int:
        """Housekeeping: delete movements delivered before `delivered_before` and
        idempotency keys past their retention. Returns how many rows went."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                outbox.delete().where(
                    outbox.c.delivered_time.is_not(None),
                    outbox.c.delivered_time < delivered_before,
                )
            )
            keys = await idempotency.purge(conn)
        return int(result.rowcount or 0) + keys

    # -- outbox -------------------------------------------------------------------------

    async def due_movements(self, now: datetime, limit: int) -> list[OutboxRow]:
        """Undelivered movements whose next attempt is due, in creation order."""
        o = outbox
        async with self._reads.connect() as conn:
            rows = await conn.execute(
                sa.select(o.c.id, o.c.transaction_id, o.c.seq, o.c.payload, o.c.attempts)
                .where(o.c.delivered_time.is_(None), o.c.next_attempt_time <= now)
                .order_by(o.c.next_attempt_time, o.c.transaction_id, o.c.seq)
                .limit(limit)
            )
            return [
                OutboxRow(r.id, r.transaction_id, r.seq, bytes(r.payload), r.attempts) for r in rows
            ]

    async def next_movement_time(self) -> datetime | None:
        """When the earliest undelivered movement is due, or None if all are delivered."""
        o = outbox
        async with self._reads.connect() as conn:
            value: datetime | None = (
                await conn.execute(
                    sa.select(sa.func.min(o.c.next_attempt_time)).where(
                        o.c.delivered_time.is_(None)
                    )
                )
            ).scalar()
        return value

    async def mark_delivered(self, movement_ids: Sequence[str], now: datetime) -> None:
        if not movement_ids:
            return
        async with self._engine.begin() as conn:
            await conn.execute(
                outbox.update()
                .where(outbox.c.id.in_(list(movement_ids)), outbox.c.delivered_time.is_(None))
                .values(delivered_time=now)
            )

    async def postpone(
        self, transaction_id: str, head_id: str, retry_at: datetime, error: str
    ) -> None:
        """After a failed delivery: count the attempt on the head and hold back every
        undelivered movement of the transaction until `retry_at`, keeping their order."""
        o = outbox
        async with self._engine.begin() as conn:
            await conn.execute(
                o.update()
                .where(o.c.id == head_id)
                .values(attempts=o.c.attempts + 1, last_error=error[:500])
            )
            await conn.execute(
                o.update()
                .where(o.c.transaction_id == transaction_id, o.c.delivered_time.is_(None))
                .values(next_attempt_time=retry_at)
            )

    async def undelivered_count(self) -> int:
        async with self._reads.connect() as conn:
            value = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(outbox)
                    .where(outbox.c.delivered_time.is_(None))
                )
            ).scalar_one()
        return int(value)
