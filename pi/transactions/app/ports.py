"""What the use cases need from the world, as protocols: the unit of work and its
repositories, the payment service, the facts publisher, the clock.

A use case makes a fresh unit per business step (`units(mode)`), uses its repositories
inside `async with unit:` and keeps what it wrote with `await unit.commit()`; leaving the
block without a commit rolls back. Adapters: `pi.transactions.adapters.postgres` (the
service's) and `pi.transactions.adapters.memory` (use-case tests); the payment service
over gRPC in `pi.transactions.adapters.payments_grpc`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from pi.platform.kernel.units import Mode, Unit
from pi.platform.ledger import Movement
from pi.transactions.domain import (
    AppliedMovement,
    Transaction,
    TransactionStatus,
    UnreadableMovement,
)

__all__ = [
    "MAX_FACTS_PER_CALL",
    "REGISTER_DEADLINE_SECONDS",
    "Clock",
    "ClosedTransaction",
    "Cursor",
    "FactsQueue",
    "IdempotencyKeys",
    "ListQuery",
    "Movements",
    "PaymentLedger",
    "StorageRefused",
    "TransactionFacts",
    "Transactions",
    "UnitOfWork",
    "UnitsOfWork",
]

MAX_FACTS_PER_CALL = 1000
"""The payment service's cap on RegisterTransactions (payments.proto)."""
REGISTER_DEADLINE_SECONDS = 2.0
"""How long one RegisterTransactions call may take."""


class StorageRefused(Exception):
    """The store refused a write the domain rules let through (one of the invariants it
    keeps itself, see `pi.transactions.adapters.postgres.tables`): a bug, never a client
    error. The unit must be left without a commit (it rolls back)."""


class Clock(Protocol):
    def __call__(self) -> datetime: ...


# The unit of work ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in the newest-first listing: strictly after the row (create_time, id)."""

    create_time: datetime
    id: str


@dataclass(frozen=True, slots=True)
class ListQuery:
    """One page of a merchant's transactions, newest first (create time, then id)."""

    merchant_id: str
    limit: int
    status: TransactionStatus | None = None
    create_time_start: datetime | None = None
    """Inclusive."""
    create_time_end: datetime | None = None
    """Exclusive."""
    after: Cursor | None = None


class Transactions(Protocol):
    """The transactions of the unit's store."""

    async def get(self, merchant_id: str, transaction_id: str) -> Transaction | None:
        """The merchant's transaction, or None (another merchant's too). On a LOCKED
        unit it stays locked until the unit ends."""
        ...

    async def list(self, query: ListQuery) -> list[Transaction]: ...

    def add(self, transaction: Transaction) -> None:
        """Insert a new transaction (written at the latest at the commit)."""
        ...

    async def advance(self, before: Transaction, after: Transaction) -> Transaction:
        """Take a locked transaction from `before` (as `get` returned it) to `after`, its
        state after a movement; the transaction as stored then. LOCKED units only.

        The amounts change by the differences, relative to what is stored. A change the
        stored invariants refuse (amounts, derived status, allowed transition, ...) is
        FailedPrecondition(LEDGER_INVARIANT_VIOLATED).
        """
        ...


class Movements(Protocol):
    """The movements applied to the unit's transactions: an id is applied once."""

    async def record(self, movement: Movement, apply_time: datetime) -> bool:
        """Remember the movement as applied; False if its id was applied before. LOCKED
        units only; StorageRefused if the store refuses the row."""
        ...

    async def get(self, movement_id: str) -> AppliedMovement | None: ...

    async def apply_batch(
        self,
        movements: Sequence[Movement | UnreadableMovement],
        invalid: Sequence[Exception | None],
        now: datetime,
    ) -> list[Exception | None]:
        """Apply a batch (`pi.transactions.domain.batches`) holding at least one
        well-formed movement; per movement its error (None: applied). LOCKED units only.

        `invalid` holds each movement's error found before (None: none). StorageRefused
        if the store refuses what the rules allowed: nothing is applied then.
        """
        ...


class IdempotencyKeys(Protocol):
    """Idempotency keys (AIP-155) claimed with the effect they make idempotent.

    A `None` key (the client sent none) claims nothing: `claim` returns None, `complete`
    does nothing. Errors: AlreadyExists(IDEMPOTENCY_KEY_REUSED) if the key was used with a
    different request, Aborted(IDEMPOTENCY_KEY_IN_USE) if it holds no response yet.
    """

    async def claim(
        self,
        scope: str,
        operation: str,
        key: str | None,
        fingerprint: str,
        *,
        response: bytes | None = None,
    ) -> bytes | None:
        """Claim the key for this unit's effect; the stored response of an earlier
        request with the key (a replay), or None: the key is this unit's (with
        `response`, already holding it).

        On an OPTIMISTIC unit the claim needs `response`: it is written with the unit's
        other writes and expected to hit, so a key found taken makes the unit conflict
        (`optimistically` then claims again on a LOCKED unit, which sees the replay).
        """
        ...

    async def complete(self, scope: str, operation: str, key: str | None, response: bytes) -> None:
        """Store the response a key claimed by this unit replays."""
        ...

    async def purge(self, older_than: timedelta) -> int:
        """Forget the keys claimed more than `older_than` (at least 24 h) ago; how many."""
        ...


class UnitOfWork(Unit, Protocol):
    """One business step on the service's store."""

    @property
    def transactions(self) -> Transactions: ...

    @property
    def movements(self) -> Movements: ...

    @property
    def idempotency(self) -> IdempotencyKeys: ...


class UnitsOfWork(Protocol):
    """Makes units of work: a fresh one per business step, never shared."""

    def __call__(self, mode: Mode = Mode.LOCKED) -> UnitOfWork: ...


# Other services ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClosedTransaction:
    """What `close_transaction` reports: the cancellation movement and the voided payments."""

    movement_id: str
    voided_payment_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TransactionFacts:
    """What never changes about a transaction, as the payment service keeps it."""

    transaction_id: str
    merchant_id: str
    amount: int
    currency: str
    # The traced request that created it (`pi.platform.kernel.causes`), or None; not sent.
    traceparent: str | None = field(default=None, compare=False)


class PaymentLedger(Protocol):
    """The payment service's ledger operations the transaction service uses."""

    async def close_transaction(
        self, *, merchant_id: str, transaction_id: str, amount: int, currency: str
    ) -> ClosedTransaction:
        """Close the transaction to new payments and void its outstanding authorizations.

        Idempotent. Raises FailedPrecondition(TRANSACTION_CAPTURED) if money was
        captured, Unavailable if the payment service cannot be reached in time.
        """
        ...

    async def register_transactions(self, transactions: Sequence[TransactionFacts]) -> int:
        """Tell the payment service about 1 to `MAX_FACTS_PER_CALL` distinct new
        transactions; how many were new to it.

        Idempotent: transactions it knows already are left as they are. Unavailable if
        the payment service cannot be reached in time.
        """
        ...


class FactsQueue(Protocol):
    """Where CreateTransaction hands a committed new transaction's facts for the payment
    service (`pi.transactions.entrypoints.workers.FactsPublisher`)."""

    def publish(self, transaction: Transaction) -> Awaitable[object] | None:
        """Queue the facts; never blocks, never raises. What it returns, if not None,
        says when the payment service got them (a waiter may give up on it)."""
        ...
