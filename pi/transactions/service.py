"""Transaction use cases: what merchants and the payment service can do with transactions.

Each use case takes plain values and the caller's `Principal`, checks who may call it,
and runs its effect in one database unit of work. A merchant only ever sees its own
transactions: another merchant's id answers NOT_FOUND, exactly like an unknown one.

Money on a transaction changes only through movements (`apply_movement`): the payment
service reports them over `TransactionLedgerService.ApplyMovement`, and
`cancel_transaction` applies the cancellation movement the payment service returns when
it closes the transaction. A movement id is applied at most once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from pi.platform import validation
from pi.platform.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ValidationErrors,
)
from pi.platform.ids import is_valid_id, new_id
from pi.platform.principal import Principal, require_merchant, require_service
from pi.platform.validation import PageToken
from pi.transactions.clients import PaymentLedger
from pi.transactions.domain import (
    REASON_TRANSACTION_CAPTURED,
    Movement,
    MovementKind,
    Transaction,
    TransactionStatus,
    apply_movement,
    new_transaction,
    validate_movement_shape,
)
from pi.transactions.store import (
    ID_LENGTH,
    MERCHANT_ID_LENGTH,
    MOVEMENT_ID_LENGTH,
    Cursor,
    ListQuery,
    TransactionStore,
)

ID_PREFIX = "txn"
REASON_TRANSACTION_NOT_FOUND = "TRANSACTION_NOT_FOUND"
REASON_MOVEMENT_ID_REUSED = "MOVEMENT_ID_REUSED"

_CREATE = "CreateTransaction"
_CANCEL = "CancelTransaction"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TransactionPage:
    """One page of `list_transactions`; `next_page_token` is empty on the last page."""

    transactions: list[Transaction]
    next_page_token: str


class TransactionService:
    """The use cases of `TransactionService` and `TransactionLedgerService`."""

    def __init__(
        self,
        store: TransactionStore,
        payments: PaymentLedger,
        page_tokens: PageToken,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._payments = payments
        self._page_tokens = page_tokens
        self._clock = clock

    # Merchant operations ------------------------------------------------------------------

    async def create_transaction(
        self,
        principal: Principal,
        *,
        amount: int,
        currency: str,
        description: str,
        metadata: Mapping[str, str],
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> Transaction:
        """A new PENDING transaction; every invalid field is reported at once.

        With an idempotency key, a retry of the same request returns the first result
        and a different request under the key is ALREADY_EXISTS (IDEMPOTENCY_KEY_REUSED);
        the key is claimed in the same database transaction as the insert.
        """
        merchant_id = require_merchant(principal)
        transaction = new_transaction(
            id=new_id(ID_PREFIX),
            merchant_id=merchant_id,
            amount=amount,
            currency=currency,
            description=description,
            metadata=metadata,
            now=self._clock(),
        )
        idempotency = self._store.idempotency
        async with self._store.begin() as conn:
            claim = await idempotency.claim(
                conn, merchant_id, _CREATE, idempotency_key, fingerprint
            )
            if claim.replay is not None:
                return _decode(claim.replay)
            await self._store.insert(conn, transaction)
            await idempotency.complete(conn, claim, _encode(transaction))
        return transaction

    async def get_transaction(self, principal: Principal, transaction_id: str) -> Transaction:
        merchant_id = require_merchant(principal)
        _require_id(transaction_id, "id")
        async with self._store.read() as conn:
            return await self._get(conn, merchant_id, transaction_id)

    async def list_transactions(
        self,
        principal: Principal,
        *,
        page_size: int = 0,
        page_token: str = "",
        status: TransactionStatus | None = None,
        create_time_start: datetime | None = None,
        create_time_end: datetime | None = None,
    ) -> TransactionPage:
        """The merchant's transactions, newest first, by keyset pagination.

        The page token is the (create_time, id) of the last row returned, signed and
        bound to the filters; rows created after the first page never shift later pages,
        so paging never repeats or skips a row.
        """
        merchant_id = require_merchant(principal)
        size = validation.page_size(page_size)
        if (
            create_time_start is not None
            and create_time_end is not None
            and create_time_end < create_time_start
        ):
            raise InvalidArgument.field("create_time_end", "must not be before create_time_start")
        filters = {
            "merchant_id": merchant_id,
            "status": None if status is None else status.value,
            "create_time_start": _micros(create_time_start),
            "create_time_end": _micros(create_time_end),
        }
        after = None
        if page_token:
            after = _cursor(self._page_tokens.decode(page_token, filters))
        query = ListQuery(
            merchant_id=merchant_id,
            limit=size + 1,
            status=status,
            create_time_start=create_time_start,
            create_time_end=create_time_end,
            after=after,
        )
        async with self._store.read() as conn:
            rows = await self._store.list(conn, query)
        next_page_token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            next_page_token = self._page_tokens.encode(
                {"t": _micros(last.create_time), "i": last.id}, filters
            )
        return TransactionPage(rows, next_page_token)

    async def cancel_transaction(
        self,
        principal: Principal,
        transaction_id: str,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> Transaction:
        """Cancel a transaction on which nothing is captured (money-flow agreement).

        The payment service closes the transaction first (it refuses with
        TRANSACTION_CAPTURED if anything was captured, and voids open authorizations);
        then its cancellation movement is applied here, so the answer already shows
        CANCELLED. Cancelling a cancelled transaction returns it unchanged. If the payment
        service cannot be reached, UNAVAILABLE and nothing changed here.

        No database transaction is held open across the call to the payment service.
        The idempotency key is checked before that call and claimed with the local
        effect, so a key reused for another transaction never closes it.
        """
        merchant_id = require_merchant(principal)
        _require_id(transaction_id, "id")
        idempotency = self._store.idempotency
        if idempotency_key is not None:
            async with self._store.discarded() as conn:
                claim = await idempotency.claim(
                    conn, merchant_id, _CANCEL, idempotency_key, fingerprint
                )
                if claim.replay is not None:
                    return _decode(claim.replay)
                # Only a check: the connection rolls back, the key is claimed below.
        async with self._store.read() as conn:
            transaction = await self._get(conn, merchant_id, transaction_id)
        movement = None
        if transaction.status is not TransactionStatus.CANCELLED:
            if transaction.captured_amount > 0:
                raise FailedPrecondition(
                    "Money was captured on the transaction: it cannot be cancelled. "
                    "Refund the payments instead.",
                    reason=REASON_TRANSACTION_CAPTURED,
                )
            closed = await self._payments.close_transaction(
                merchant_id=merchant_id,
                transaction_id=transaction_id,
                amount=transaction.amount,
                currency=transaction.currency,
            )
            movement = Movement(
                id=closed.movement_id,
                merchant_id=merchant_id,
                transaction_id=transaction_id,
                payment_id=None,
                kind=MovementKind.CANCELLATION,
                authorized_delta=0,
                captured_delta=0,
                refunded_delta=0,
                occur_time=self._clock(),
            )
        async with self._store.begin() as conn:
            claim = await idempotency.claim(
                conn, merchant_id, _CANCEL, idempotency_key, fingerprint
            )
            if claim.replay is not None:
                return _decode(claim.replay)
            if movement is not None:
                transaction = await self._apply(conn, movement)
            else:
                transaction = await self._get(conn, merchant_id, transaction_id)
            await idempotency.complete(conn, claim, _encode(transaction))
        return transaction

    # Service operations (TransactionLedgerService) ----------------------------------------

    async def lookup_transaction(
        self, principal: Principal, merchant_id: str, transaction_id: str
    ) -> Transaction:
        """The transaction if `merchant_id` owns it, for the payment service."""
        require_service(principal)
        errors = ValidationErrors()
        if not merchant_id:
            errors.add("merchant_id", "is required")
        if not transaction_id:
            errors.add("transaction_id", "is required")
        errors.raise_if_any()
        async with self._store.read() as conn:
            return await self._get(conn, merchant_id, transaction_id)

    async def apply_movement(self, principal: Principal, movement: Movement) -> Transaction:
        """Apply a movement once; applying its id again returns the transaction as it is.

        One database transaction: lock the transaction row, record the movement id (a
        duplicate changes nothing), add the deltas and store the derived status. A
        movement that would break an invariant is FAILED_PRECONDITION and nothing is
        written; a transaction the movement's merchant does not own is NOT_FOUND.
        """
        require_service(principal)
        _validate_movement(movement)
        async with self._store.begin() as conn:
            return await self._apply(conn, movement)

    # Helpers ------------------------------------------------------------------------------

    async def _get(
        self, conn: AsyncConnection, merchant_id: str, transaction_id: str
    ) -> Transaction:
        transaction = None
        if is_valid_id(transaction_id, ID_PREFIX):
            transaction = await self._store.get(conn, merchant_id, transaction_id)
        if transaction is None:
            raise _not_found(transaction_id)
        return transaction

    async def _apply(self, conn: AsyncConnection, movement: Movement) -> Transaction:
        current = await self._store.get(
            conn, movement.merchant_id, movement.transaction_id, for_update=True
        )
        if current is None:
            raise _not_found(movement.transaction_id)
        now = self._clock()
        if not await self._store.record_movement(conn, movement, now):
            await self._check_same_movement(conn, movement)
            return current
        after = apply_movement(current, movement, now=now)
        return await self._store.add_movement(conn, movement, after)

    async def _check_same_movement(self, conn: AsyncConnection, movement: Movement) -> None:
        """A movement id seen before must name the same movement (else a caller bug)."""
        row = await self._store.get_movement(conn, movement.id)
        if row is None:  # pragma: no cover - the insert just conflicted with it
            return
        same = (
            row.transaction_id == movement.transaction_id
            and row.kind == movement.kind.value
            and row.authorized_delta == movement.authorized_delta
            and row.captured_delta == movement.captured_delta
            and row.refunded_delta == movement.refunded_delta
        )
        if not same:
            raise AlreadyExists(
                "This movement id was already applied with different contents.",
                reason=REASON_MOVEMENT_ID_REUSED,
                metadata={"movement_id": movement.id},
            )


def _not_found(transaction_id: str) -> NotFound:
    return NotFound(
        "No such transaction.",
        reason=REASON_TRANSACTION_NOT_FOUND,
        metadata={"transaction_id": transaction_id[:64]},
    )


def _require_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument.field(field, "is required")


def _visible_ascii(value: str) -> bool:
    return all("!" <= c <= "~" for c in value)


def _validate_movement(movement: Movement) -> None:
    errors = ValidationErrors()
    for field, value, max_length, required in (
        ("movement.id", movement.id, MOVEMENT_ID_LENGTH, True),
        ("movement.merchant_id", movement.merchant_id, MERCHANT_ID_LENGTH, True),
        ("movement.transaction_id", movement.transaction_id, ID_LENGTH, True),
        ("movement.payment_id", movement.payment_id or "", ID_LENGTH, False),
    ):
        if not value:
            if required:
                errors.add(field, "is required")
        elif len(value) > max_length or not _visible_ascii(value):
            errors.add(field, f"must be 1 to {max_length} visible ASCII characters")
    try:
        validate_movement_shape(movement)
    except InvalidArgument as exc:
        for violation in exc.violations:
            errors.add(violation.field, violation.description)
    errors.raise_if_any("The movement is malformed.")


def _micros(value: datetime | None) -> int | None:
    if value is None:
        return None
    return (value - _EPOCH) // timedelta(microseconds=1)


def _cursor(position: Mapping[str, Any]) -> Cursor:
    micros, last_id = position.get("t"), position.get("i")
    if not isinstance(micros, int) or not isinstance(last_id, str):
        raise InvalidArgument.field("page_token", "is not a valid page token.")
    return Cursor(create_time=_EPOCH + timedelta(microseconds=micros), id=last_id)


# Idempotent replays return the transaction exactly as the first call returned it.


def _encode(transaction: Transaction) -> bytes:
    return json.dumps(
        {
            "id": transaction.id,
            "merchant_id": transaction.merchant_id,
            "amount": transaction.amount,
            "currency": transaction.currency,
            "description": transaction.description,
            "metadata": dict(transaction.metadata),
            "status": transaction.status.value,
            "authorized_amount": transaction.authorized_amount,
            "captured_amount": transaction.captured_amount,
            "refunded_amount": transaction.refunded_amount,
            "last_payment_failed": transaction.last_payment_failed,
            "create_time": _micros(transaction.create_time),
            "update_time": _micros(transaction.update_time),
        },
        sort_keys=True,
    ).encode()


def _decode(data: bytes) -> Transaction:
    value = json.loads(data)
    return Transaction(
        id=value["id"],
        merchant_id=value["merchant_id"],
        amount=value["amount"],
        currency=value["currency"],
        description=value["description"],
        metadata=MappingProxyType(dict(value["metadata"])),
        status=TransactionStatus(value["status"]),
        authorized_amount=value["authorized_amount"],
        captured_amount=value["captured_amount"],
        refunded_amount=value["refunded_amount"],
        last_payment_failed=value["last_payment_failed"],
        create_time=_EPOCH + timedelta(microseconds=value["create_time"]),
        update_time=_EPOCH + timedelta(microseconds=value["update_time"]),
    )
