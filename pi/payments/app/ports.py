"""What the payment use cases need from the world, as Protocols: the unit of work with its
repositories, the processor, the transaction service and the outbox's delivery queue.

A unit of work is one business step: `async with units(mode) as unit:`, read through its
repositories, decide (domain), write through them, `await unit.commit()`; leaving the
block without committing keeps nothing. Its mode (`pi.platform.kernel.units.Mode`) says
how it reads and writes, and the repositories behave accordingly:

- LOCKED: every read locks what it returns until the unit ends (`find` and the `get_all`
  of facts excepted), so what was decided holds; lock order everywhere: the idempotency
  key, the ref, then payments.
- OPTIMISTIC: reads are snapshots without locks, and a read may be answered by `seen`,
  what this very request read or wrote a moment ago, without asking again. Writes are
  conditional on what was read and sent together at the commit, which raises `Conflict`
  (keeping nothing) if any missed: `optimistically` then runs the step again on a LOCKED
  unit. A decision that writes nothing (a refusal, nothing to change) cannot be checked
  that way: `unit.confirm_reads()` before acting on it.
- READ: snapshot reads only.

Writes are async because in a LOCKED unit some need a result before the next write (a
ref's movement count numbers its movements); in an OPTIMISTIC one they only queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from pi.payments.app.outbox_ports import DeadLetter, Outbox, QueuedMovement
from pi.payments.app.requests import (
    ChangeResponse,
    CreateResponse,
    FinalPayment,
    PendingChange,
    PendingPayment,
    RefundResult,
    RequestKey,
)
from pi.payments.domain import (
    AuthorizeRequest,
    CaptureRequest,
    ConnectorResult,
    Payment,
    Refund,
    RefundRequest,
    TransactionRef,
    VoidRequest,
)
from pi.platform.kernel.units import Mode, Unit
from pi.platform.ledger import Movement

__all__ = [
    "MAX_MOVEMENTS_PER_CALL",
    "REASON_TRANSACTIONS_UNAVAILABLE",
    "REASON_TRANSACTION_NOT_FOUND",
    "Clock",
    "Connector",
    "DeadLetter",
    "IdempotencyKeys",
    "LedgerError",
    "MovementOutcome",
    "Notify",
    "Outbox",
    "Payments",
    "PaymentsUnit",
    "QueuedMovement",
    "Refs",
    "Refunds",
    "TransactionFacts",
    "TransactionLedger",
    "UnitsOfWork",
]

REASON_TRANSACTION_NOT_FOUND = "TRANSACTION_NOT_FOUND"
REASON_TRANSACTIONS_UNAVAILABLE = "TRANSACTIONS_UNAVAILABLE"
MAX_MOVEMENTS_PER_CALL = 1000
"""The transaction service's cap on one ApplyMovements call (transactions.proto)."""

Clock = Callable[[], datetime]
Notify = Callable[[], None]
"""Called after a commit that wrote movements: wakes the outbox dispatcher."""


# -- idempotency -------------------------------------------------------------------------


class IdempotencyKeys(Protocol):
    """Idempotency keys and their stored responses (AIP-155). A claim made in a unit goes
    with its rollback. A key used with another request raises
    `AlreadyExists(IDEMPOTENCY_KEY_REUSED)`; one claimed without a response yet raises
    `Aborted(IDEMPOTENCY_KEY_IN_USE)`."""

    async def claim_create(
        self, request: RequestKey, pending: PendingPayment
    ) -> CreateResponse | None:
        """Claim the key holding `pending` (None), or what the key already holds. In an
        OPTIMISTIC unit the claim goes with the commit, which conflicts if it is taken."""
        ...

    async def create_response(
        self, request: RequestKey, *, seen: PendingPayment
    ) -> CreateResponse | None:
        """What the claimed key holds now, locked (LOCKED); otherwise `seen`."""
        ...

    async def finish_create(
        self, request: RequestKey, pending: PendingPayment, final: FinalPayment
    ) -> None:
        """Store `final` over `pending` (unless LOCKED, only if the key still holds it)."""
        ...

    async def claim_change(
        self, request: RequestKey, pending: PendingChange
    ) -> ChangeResponse | None:
        """Claim a capture's, cancel's or refund's key holding `pending` (None), or what
        the key already holds (LOCKED unit)."""
        ...

    async def change_response(self, request: RequestKey) -> ChangeResponse | None:
        """What a claimed change key holds now, locked (LOCKED unit)."""
        ...

    async def complete(self, request: RequestKey, response: Payment | RefundResult) -> None:
        """Store the final response of a key claimed with `claim_change`."""
        ...

    async def release(self, request: RequestKey) -> None:
        """Forget a key claimed with `claim_change` (the processor declined the change:
        a retry with the key asks again, as one whose claim had rolled back)."""
        ...

    async def reject_reuse(self, request: RequestKey) -> None:
        """Raise IDEMPOTENCY_KEY_REUSED if the key is stored for another request; claims
        nothing (for a request that fails before it could claim)."""
        ...


# -- repositories ------------------------------------------------------------------------


class Refs(Protocol):
    """Transactions' ledger rows. A ref's facts (merchant, amount, currency) never change;
    its amounts are written as deltas from the `old` ref a change was decided on."""

    async def get(
        self, transaction_id: str, *, seen: TransactionRef | None = None
    ) -> TransactionRef | None: ...

    async def add(self, facts: TransactionRef, *, now: datetime) -> TransactionRef:
        """Make sure the transaction has a ref (`facts`, holding nothing; one that exists
        is left as it is) and return the ref to decide on: LOCKED, the stored row,
        locked; OPTIMISTIC, `facts`, and a change decided on it is written only if the
        row is still exactly that."""
        ...

    async def add_all(self, refs: Sequence[TransactionRef], *, now: datetime) -> set[str]:
        """Insert these refs (holding nothing) except those of transactions that have one;
        the transaction ids inserted. LOCKED units only."""
        ...

    async def get_all(self, transaction_ids: Sequence[str]) -> dict[str, TransactionRef]:
        """The refs of these transactions that exist, by id, without locks."""
        ...

    async def update(
        self,
        old: TransactionRef,
        new: TransactionRef,
        movements: Sequence[Movement] = (),
        *,
        now: datetime,
    ) -> None:
        """Write `new` over `old` and append `movements` to the outbox, in order, numbered
        after the ref's earlier ones. OPTIMISTIC: only if the row still is `old`."""
        ...

    async def settle(
        self,
        old: TransactionRef,
        new: TransactionRef,
        movements: Sequence[Movement],
        *,
        now: datetime,
    ) -> None:
        """`update` for a change that only moves one payment's own hold (its settlement):
        OPTIMISTIC, only if the row still holds what the change releases."""
        ...


class Payments(Protocol):
    async def get(self, payment_id: str, *, seen: Payment | None = None) -> Payment | None:
        """The payment to decide on (locked when LOCKED; `seen` when OPTIMISTIC)."""
        ...

    async def find(self, payment_id: str, merchant_id: str) -> Payment | None:
        """The merchant's payment as committed, never locked (None for another's)."""
        ...

    async def of_transaction(self, transaction_id: str) -> list[Payment]:
        """Every payment of the transaction, oldest first (locked when LOCKED)."""
        ...

    async def of_merchant(
        self,
        merchant_id: str,
        *,
        transaction_id: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Payment]:
        """The merchant's payments, newest first, strictly after the cursor
        (create time, id)."""
        ...

    async def waiting(
        self, updated_before: datetime, limit: int, *, after: tuple[datetime, str] | None
    ) -> list[Payment]:
        """Payments waiting for the processor's answer (PROCESSING, CAPTURING,
        CANCELLING) not touched since `updated_before`, in (update time, id) order,
        strictly after the cursor."""
        ...

    async def add(self, payment: Payment) -> None: ...

    async def update(self, old: Payment, new: Payment) -> None:
        """Write `new` over `old` if the row is still `old` (else the unit conflicts)."""
        ...


class Refunds(Protocol):
    async def add(self, refund: Refund, *, merchant_id: str, transaction_id: str) -> None: ...

    async def get(self, refund_id: str) -> Refund | None:
        """The refund (locked when LOCKED)."""
        ...

    async def update(self, old: Refund, new: Refund) -> None:
        """Settle a PENDING refund: write `new` if the row is still `old` (else the unit
        conflicts)."""
        ...

    async def pending(
        self, created_before: datetime, limit: int, *, after: tuple[datetime, str] | None
    ) -> list[Refund]:
        """PENDING refunds created before `created_before`, in (create time, id) order,
        strictly after the cursor."""
        ...


class PaymentsUnit(Unit, Protocol):
    """One business step of the payment service (see the module docstring)."""

    @property
    def refs(self) -> Refs: ...

    @property
    def payments(self) -> Payments: ...

    @property
    def refunds(self) -> Refunds: ...

    @property
    def idempotency(self) -> IdempotencyKeys: ...

    def confirm_reads(self) -> None:
        """Before acting on a decision that writes nothing: the reads it rests on must
        still hold. An OPTIMISTIC unit cannot tell without writing, so it conflicts (the
        step runs again under locks); in a LOCKED unit they hold."""
        ...


class UnitsOfWork(Protocol):
    def __call__(self, mode: Mode = Mode.LOCKED) -> PaymentsUnit:
        """A new unit (one per business step; never shared between requests)."""
        ...


# -- the processor ---------------------------------------------------------------------------


@runtime_checkable
class Connector(Protocol):
    """A payment processor. Implementations never raise for a processor answer: a decline
    is a DECLINED result and no answer is a TIMEOUT result."""

    @property
    def name(self) -> str:
        """Short stable name, e.g. "sandbox"."""
        ...

    async def authorize(self, request: AuthorizeRequest) -> ConnectorResult:
        """APPROVED, DECLINED(reason), PENDING (settles asynchronously) or TIMEOUT."""
        ...

    async def capture(self, request: CaptureRequest) -> ConnectorResult:
        """APPROVED, DECLINED or TIMEOUT."""
        ...

    async def void(self, request: VoidRequest) -> ConnectorResult:
        """APPROVED (also when nothing was held), DECLINED (already captured) or TIMEOUT."""
        ...

    async def refund(self, request: RefundRequest) -> ConnectorResult:
        """APPROVED, DECLINED or TIMEOUT."""
        ...

    async def status(self, payment_id: str) -> ConnectorResult:
        """Where the payment's authorization stands now: APPROVED or DECLINED(reason) when
        final, PENDING while the processor settles it, TIMEOUT when it cannot be asked.
        A payment the processor never received is DECLINED(PROCESSOR_UNAVAILABLE), and
        stays so: the answer fences it, so an authorize for it arriving later (a slow
        first call, a client's retry) is declined, never charged behind a FAILED
        payment."""
        ...


# -- the transaction service -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransactionFacts:
    """What the payment service keeps of a transaction: facts that never change, plus
    whether it was already cancelled when looked up."""

    transaction_id: str
    merchant_id: str
    amount: int
    currency: str
    cancelled: bool


class LedgerError(Exception):
    """The transaction service refused a call or a movement for a reason other than being
    down. `code` is the gRPC status name, `reason` the ErrorInfo reason if there was one;
    the message never contains request data."""

    def __init__(self, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}" if reason else f"{code}: {message}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MovementOutcome:
    """What the transaction service did with one movement of `apply_movements`: applied
    (now or before) when `error` is None; otherwise refused, or ABORTED because an
    earlier movement of its transaction in the same call was not applied."""

    movement_id: str
    error: LedgerError | None = None

    @property
    def applied(self) -> bool:
        return self.error is None


class TransactionLedger(Protocol):
    async def lookup_transaction(self, merchant_id: str, transaction_id: str) -> TransactionFacts:
        """The merchant's transaction. NotFound(TRANSACTION_NOT_FOUND) if it is not the
        merchant's or does not exist; Unavailable(TRANSACTIONS_UNAVAILABLE) if the
        transaction service cannot answer."""
        ...

    async def apply_movements(self, movements: Sequence[Movement]) -> list[MovementOutcome]:
        """Apply 1 to `MAX_MOVEMENTS_PER_CALL` movements in one call (idempotent by id); one
        outcome per movement, in order. Movements of one transaction apply in the given
        order, and none after one that is not applied. Unavailable if the transaction
        service cannot answer, LedgerError if it refused the whole call."""
        ...
