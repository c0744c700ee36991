"""Transaction use cases: what merchants and the payment service can do with transactions.

Each use case takes plain values and the caller's `Principal`, checks who may call it,
and runs its effect in one database unit of work. A merchant only ever sees its own
transactions: another merchant's id answers NOT_FOUND, exactly like an unknown one.

Money on a transaction changes only through movements: the payment service reports
them in batches over `TransactionLedgerService.ApplyMovements` (`apply_movements`, one
database transaction per batch) or one at a time over `ApplyMovement`
(`apply_movement`), and `cancel_transaction` applies the cancellation movement the
payment service returns when it closes the transaction. A movement id is applied at most
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from pi.platform.db.errors import IntegrityError
from pi.platform.db.statements import Batch, Conn, Record
from pi.platform.kernel import pages
from pi.platform.kernel.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ValidationErrors,
)
from pi.platform.kernel.ids import is_valid_id, new_id
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.principal import Principal, require_merchant, require_service
from pi.transactions.clients import PaymentLedger
from pi.transactions.domain import (
    ALLOWED_TRANSITIONS,
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
REASON_EARLIER_MOVEMENT_NOT_APPLIED = "EARLIER_MOVEMENT_NOT_APPLIED"
MAX_BATCH_MOVEMENTS = 1000
"""At most this many movements per `apply_movements` call (transactions.proto)."""
FACTS_WAIT_SECONDS = 0.05
"""How long CreateTransaction waits for its facts to reach the payment service (see
`_announce`): a few batch round trips on a healthy mesh, small next to the lookup it
saves the first payment."""

log = logging.getLogger(__name__)

_CREATE = "CreateTransaction"
_CANCEL = "CancelTransaction"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _KeyTaken(Exception):
    """Rolls back a create whose idempotency key was claimed already."""


@dataclass(frozen=True, slots=True)
class TransactionPage:
    """One page of `list_transactions`; `next_page_token` is empty on the last page."""

    transactions: list[Transaction]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class UnreadableMovement:
    """A movement of a batch that the transport could not turn into a `Movement` (bad
    kind or time): `apply_movements` reports `error` for it, like any invalid one."""

    id: str
    transaction_id: str
    error: InvalidArgument


@dataclass(frozen=True, slots=True)
class MovementResult:
    """What `apply_movements` did with one movement.

    `error` is None if the movement is applied (now, or earlier with the same contents);
    else the `DomainError` `apply_movement` would raise for it, or `Aborted`
    (EARLIER_MOVEMENT_NOT_APPLIED) if it was not attempted. Any other exception means it
    failed inside the service (INTERNAL); it was logged.
    """

    movement_id: str
    error: Exception | None = None


class TransactionService:
    """The use cases of `TransactionService` and `TransactionLedgerService`."""

    def __init__(
        self,
        store: TransactionStore,
        payments: PaymentLedger,
        page_tokens: PageToken,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        created: Callable[[Transaction], Awaitable[object] | None] = lambda _: None,
        facts_wait: float = FACTS_WAIT_SECONDS,
    ) -> None:
        """`created` is told of each new transaction once it is committed (not of
        replays): the facts publisher, which must neither block nor raise. What it returns,
        if not None, is awaited for at most `facts_wait` seconds (0: not at all) before
        CreateTransaction answers, whatever its outcome."""
        if facts_wait < 0:
            raise ValueError("facts_wait must not be negative")
        self._store = store
        self._payments = payments
        self._page_tokens = page_tokens
        self._clock = clock
        self._created = created
        self._facts_wait = facts_wait

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
        the key is claimed, holding the response, in the same database transaction as the
        insert.
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
        response = _encode(transaction)
        # The key is claimed already holding the response: the insert either commits
        # with it or rolls it back, so no separate `complete` is needed. Both go with the
        # BEGIN in one round trip; a key found taken rolls that back, and the claim is
        # made again below for the response it holds (or the error it gives).
        batch = Batch()
        queued = idempotency.queue_claim(
            batch, merchant_id, _CREATE, idempotency_key, fingerprint, response=response
        )
        self._store.queue_insert(batch, transaction)
        try:
            async with self._store.begin(batch):
                if not queued.claimed:
                    raise _KeyTaken
        except _KeyTaken:
            pass
        else:
            await self._announce(transaction)
            return transaction
        async with self._store.begin() as conn:
            claim = await idempotency.claim(
                conn,
                merchant_id,
                _CREATE,
                idempotency_key,
                fingerprint,
                response=response,
            )
            if claim.replay is not None:
                return _decode(claim.replay)
            await self._store.insert(conn, transaction)  # the other request rolled back
        await self._announce(transaction)
        return transaction

    async def _announce(self, transaction: Transaction) -> None:
        """Tell `created` of a committed new transaction and give its facts up to
        `facts_wait` to reach the payment service.

        A client usually pays right after creating; if the facts got there first, that
        payment skips the LookupTransaction round trip. The wait is only a bet: a timeout
        or a push that failed just means the payment looks the transaction up, so neither
        fails the create nor is logged (FactsStats counts them).
        """
        pushed = self._created(transaction)
        if pushed is None or self._facts_wait <= 0:
            return
        # The publisher tolerates a future cancelled by this timeout. asyncio.timeout, not
        # wait_for: on Python 3.11 wait_for can swallow the request's own cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._facts_wait):
                await pushed

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
        size = pages.page_size(page_size)
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

    async def apply_movements(
        self, principal: Principal, movements: Sequence[Movement | UnreadableMovement]
    ) -> list[MovementResult]:
        """Apply a batch of movements; one result per movement, in the given order.

        Each movement gets the outcome `apply_movement` would give it alone; the
        movements of one transaction apply in the given order, and once one of them is
        refused the later ones of that transaction are not attempted (ABORTED), while
        other transactions go on. InvalidArgument for the request as a whole only if it
        holds no movements or more than `MAX_BATCH_MOVEMENTS`.

        One database transaction: lock every touched row (one statement, id order),
        record the movement ids (one statement; a known id is a duplicate, checked for
        sameness with one more statement), apply the domain rules in memory, forget the
        ids of refused movements, and write the rows (one call, a step per movement only
        where the trigger's transitions need it). Should the database still refuse
        something, the batch is rolled back and its movements are applied one by one, so
        one bad movement cannot hold back the others.
        """
        require_service(principal)
        if not movements:
            raise InvalidArgument.field("movements", "is required")
        if len(movements) > MAX_BATCH_MOVEMENTS:
            raise InvalidArgument.field(
                "movements", f"must hold at most {MAX_BATCH_MOVEMENTS} movements"
            )
        invalid = [_invalid(movement) for movement in movements]
        try:
            errors = await self._apply_batch(movements, invalid)
        except IntegrityError:
            log.warning(
                "the database refused a batch of movements; applying them one by one",
                exc_info=True,
                extra={"movements": len(movements)},
            )
            errors = await self._apply_one_by_one(movements, invalid)
        return [
            MovementResult(movement.id, error)
            for movement, error in zip(movements, errors, strict=True)
        ]

    # Helpers ------------------------------------------------------------------------------

    async def _apply_batch(
        self,
        movements: Sequence[Movement | UnreadableMovement],
        invalid: Sequence[InvalidArgument | None],
    ) -> list[Exception | None]:
        valid = [
            m
            for m, error in zip(movements, invalid, strict=True)
            if error is None and isinstance(m, Movement)
        ]
        if not valid:
            return list(invalid)
        firsts: dict[str, Movement | UnreadableMovement] = {}
        for movement in movements:
            firsts.setdefault(movement.id, movement)
        async with self._store.begin() as conn:
            now = self._clock()
            current = await self._store.lock_many(conn, {m.transaction_id for m in valid})
            # Recorded up front (one statement) to learn which ids are duplicates; the
            # ids of movements that do not apply after all are forgotten below.
            candidates = [
                m
                for m in valid
                if firsts[m.id] is m and _owner_matches(current.get(m.transaction_id), m)
            ]
            recorded = await self._store.record_movements(conn, candidates, now)
            known = await self._store.get_movements(
                conn, [m.id for m in candidates if m.id not in recorded]
            )
            outcome = _plan_batch(movements, invalid, current, recorded, known, now)
            await self._store.forget_movements(
                conn, [m.id for m in candidates if m.id in recorded and m.id not in outcome.applied]
            )
            await self._store.write_steps(conn, outcome.steps)
        return outcome.errors

    async def _apply_one_by_one(
        self,
        movements: Sequence[Movement | UnreadableMovement],
        invalid: Sequence[InvalidArgument | None],
    ) -> list[Exception | None]:
        """The batch's outcome with one unit of work per movement (`apply_movement`)."""
        errors: list[Exception | None] = list(invalid)
        refused: set[str] = set()
        for index, movement in enumerate(movements):
            if errors[index] is not None or isinstance(movement, UnreadableMovement):
                refused.add(movement.transaction_id)
                continue
            if movement.transaction_id in refused:
                errors[index] = _aborted(movement.transaction_id)
                continue
            try:
                async with self._store.begin() as conn:
                    await self._apply(conn, movement)
            except DomainError as error:
                errors[index] = error
            except IntegrityError as error:
                log.exception("the database refused a movement", extra={"movement_id": movement.id})
                errors[index] = error
            if errors[index] is not None:
                refused.add(movement.transaction_id)
        return errors

    async def _get(self, conn: Conn, merchant_id: str, transaction_id: str) -> Transaction:
        transaction = None
        if is_valid_id(transaction_id, ID_PREFIX):
            transaction = await self._store.get(conn, merchant_id, transaction_id)
        if transaction is None:
            raise _not_found(transaction_id)
        return transaction

    async def _apply(self, conn: Conn, movement: Movement) -> Transaction:
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

    async def _check_same_movement(self, conn: Conn, movement: Movement) -> None:
        """A movement id seen before must name the same movement (else a caller bug)."""
        row = await self._store.get_movement(conn, movement.id)
        if row is None:  # pragma: no cover - the insert just conflicted with it
            return
        if not _same_movement(row, movement):
            raise _movement_id_reused(movement)


@dataclass
class _BatchOutcome:
    """`_plan_batch`'s answer: per movement its error (None: applied), the ids that are
    applied (by this batch or before), and the row writes (before, after) in order."""

    errors: list[Exception | None]
    applied: set[str]
    steps: list[tuple[Transaction, Transaction]]


def _plan_batch(
    movements: Sequence[Movement | UnreadableMovement],
    invalid: Sequence[InvalidArgument | None],
    current: Mapping[str, Transaction],
    recorded: set[str],
    known: Mapping[str, Record],
    now: datetime,
) -> _BatchOutcome:
    """The domain rules over a batch, in memory, in the given order.

    `current` holds the locked transactions, `recorded` the ids the batch recorded as
    new, `known` the movements applied before the batch (for the duplicates).
    """
    errors: list[Exception | None] = list(invalid)
    state = dict(current)
    chains: dict[str, list[Transaction]] = {}
    applied: dict[str, Movement] = {}
    seen: set[str] = set()
    refused: set[str] = set()
    for index, movement in enumerate(movements):
        transaction_id = movement.transaction_id
        first_sight = movement.id not in seen
        seen.add(movement.id)
        if errors[index] is not None or isinstance(movement, UnreadableMovement):
            refused.add(transaction_id)
            continue
        if transaction_id in refused:
            errors[index] = _aborted(transaction_id)
            continue
        transaction = state.get(transaction_id)
        error: Exception | None = None
        if transaction is None or not _owner_matches(transaction, movement):
            error = _not_found(transaction_id)
        elif movement.id in applied:  # the same id earlier in this batch
            if not _same_movement(applied[movement.id], movement):
                error = _movement_id_reused(movement)
        elif not first_sight:
            # Its first occurrence in this batch did not apply: not attempted again here.
            error = _aborted(transaction_id)
        elif movement.id not in recorded:  # applied by an earlier call
            row = known.get(movement.id)
            if row is None:  # pragma: no cover - the insert just conflicted with it
                error = _aborted(transaction_id)
            elif _same_movement(row, movement):
                applied[movement.id] = movement
            else:
                error = _movement_id_reused(movement)
        else:
            try:
                after = apply_movement(transaction, movement, now=now)
            except DomainError as refusal:
                error = refusal
            else:
                chains.setdefault(transaction_id, [transaction]).append(after)
                state[transaction_id] = after
                applied[movement.id] = movement
        if error is not None:
            errors[index] = error
            refused.add(transaction_id)
    steps = [step for chain in chains.values() for step in _steps(chain)]
    return _BatchOutcome(errors, set(applied), steps)


def _steps(chain: list[Transaction]) -> list[tuple[Transaction, Transaction]]:
    """The (before, after) row writes that take a row along `chain`, its states from the
    locked one through one per movement.

    The PostgreSQL trigger judges each UPDATE's old and new status, so consecutive
    movements share one write only while the status change from that write's start is
    still an allowed transition: PENDING -> AUTHORIZED -> COMPLETED (a card payment
    captured at once) takes two writes, a run of refunds one. The other rules (amounts
    that never decrease, a final cancellation) hold for a merged write when they hold for
    each movement.
    """
    steps: list[tuple[Transaction, Transaction]] = []
    start = previous = chain[0]
    for state in chain[1:]:
        if (
            state.status is not start.status
            and state.status not in ALLOWED_TRANSITIONS[start.status]
        ):
            steps.append((start, previous))
            start = previous
        previous = state
    steps.append((start, previous))
    return steps


def _owner_matches(transaction: Transaction | None, movement: Movement) -> bool:
    return transaction is not None and transaction.merchant_id == movement.merchant_id


def _same_movement(earlier: Record | Movement, movement: Movement) -> bool:
    return bool(
        earlier.transaction_id == movement.transaction_id
        and earlier.kind == movement.kind.value
        and earlier.authorized_delta == movement.authorized_delta
        and earlier.captured_delta == movement.captured_delta
        and earlier.refunded_delta == movement.refunded_delta
    )


def _movement_id_reused(movement: Movement) -> AlreadyExists:
    return AlreadyExists(
        "This movement id was already applied with different contents.",
        reason=REASON_MOVEMENT_ID_REUSED,
        metadata={"movement_id": movement.id},
    )


def _aborted(transaction_id: str) -> Aborted:
    return Aborted(
        "An earlier movement of this transaction in the batch was not applied, so this one "
        "was not attempted; send it again after that one.",
        reason=REASON_EARLIER_MOVEMENT_NOT_APPLIED,
        metadata={"transaction_id": transaction_id[:64]},
    )


def _invalid(movement: Movement | UnreadableMovement) -> InvalidArgument | None:
    if isinstance(movement, UnreadableMovement):
        return movement.error
    try:
        _validate_movement(movement)
    except InvalidArgument as error:
        return error
    return None


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
