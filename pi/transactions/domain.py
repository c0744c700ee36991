"""Transaction rules: input validation, money movements, running amounts and status.

Standard library only (plus `pi.platform` errors and money). A transaction's status is
never set directly: it is derived from the running amounts by `derive_status` each time a
`Movement` is applied with `apply_movement`. See docs/state-machines.md.

The movement types (`MovementKind`, `MovementDelta`, `Movement`) are the money-flow
contract of transactions.proto, shared with the payment service in `pi.platform.ledger`;
they are re-exported here, where the transaction service applies them.

Invariants of a transaction's running amounts (also CHECK constraints in the database):

    0 <= refunded <= captured <= authorized <= amount,   amount > 0

`authorized` is the amount held by authorizations that were not voided, captured part
included: a capture moves nothing out of `authorized` except the released rest.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Protocol

from pi.platform.kernel.errors import FailedPrecondition, ValidationErrors
from pi.platform.kernel.money import amount_problem, currency_problem
from pi.platform.kernel.text import text_problem
from pi.platform.ledger import Movement, MovementDelta, MovementKind

__all__ = [
    "ALLOWED_TRANSITIONS",
    "MAX_DESCRIPTION_LENGTH",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_KEY_LENGTH",
    "MAX_METADATA_VALUE_LENGTH",
    "REASON_INVALID_STATUS_TRANSITION",
    "REASON_LEDGER_INVARIANT_VIOLATED",
    "REASON_TRANSACTION_CANCELLED",
    "REASON_TRANSACTION_CAPTURED",
    "Movement",
    "MovementDelta",
    "MovementKind",
    "Transaction",
    "TransactionStatus",
    "apply_movement",
    "check_transition",
    "derive_status",
    "metadata_problems",
    "new_transaction",
    "validate_movement_shape",
]

MAX_DESCRIPTION_LENGTH = 1000
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LENGTH = 40
MAX_METADATA_VALUE_LENGTH = 500

REASON_LEDGER_INVARIANT_VIOLATED = "LEDGER_INVARIANT_VIOLATED"
"""A movement would break 0 <= refunded <= captured <= authorized <= amount."""
REASON_TRANSACTION_CANCELLED = "TRANSACTION_CANCELLED"
"""Money cannot be captured or refunded on a cancelled transaction."""
REASON_TRANSACTION_CAPTURED = "TRANSACTION_CAPTURED"
"""A transaction on which money was captured cannot be cancelled."""
REASON_INVALID_STATUS_TRANSITION = "INVALID_STATUS_TRANSITION"
"""The derived status change is not in ALLOWED_TRANSITIONS (a bug, never a client error)."""


class TransactionStatus(enum.StrEnum):
    """Mirrors `pi.transactions.v1.TransactionStatus` without the prefix (value == name)."""

    PENDING = "PENDING"
    AUTHORIZED = "AUTHORIZED"
    COMPLETED = "COMPLETED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


class _Deltas(Protocol):
    """Anything carrying a movement's kind and deltas (`Movement` or `MovementDelta`)."""

    @property
    def kind(self) -> MovementKind: ...
    @property
    def authorized_delta(self) -> int: ...
    @property
    def captured_delta(self) -> int: ...
    @property
    def refunded_delta(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Transaction:
    """A transaction as the transaction service stores it.

    `status` is always `derive_status(...)` of the other fields; `last_payment_failed`
    is stored so FAILED can be derived (set by a FAILURE movement, cleared by an
    AUTHORIZATION movement).
    """

    id: str
    merchant_id: str
    amount: int
    currency: str
    description: str
    metadata: Mapping[str, str]
    status: TransactionStatus
    authorized_amount: int
    captured_amount: int
    refunded_amount: int
    last_payment_failed: bool
    create_time: datetime
    update_time: datetime

    @property
    def cancelled(self) -> bool:
        return self.status is TransactionStatus.CANCELLED


# Status changes one movement can cause (a status may always stay the same). Derived from
# `derive_status` over every reachable state; tests/unit/domain checks it stays so.
ALLOWED_TRANSITIONS: Mapping[TransactionStatus, frozenset[TransactionStatus]] = MappingProxyType(
    {
        TransactionStatus.PENDING: frozenset(
            {TransactionStatus.AUTHORIZED, TransactionStatus.FAILED, TransactionStatus.CANCELLED}
        ),
        TransactionStatus.FAILED: frozenset(
            {TransactionStatus.AUTHORIZED, TransactionStatus.CANCELLED}
        ),
        TransactionStatus.AUTHORIZED: frozenset(
            {
                TransactionStatus.COMPLETED,
                TransactionStatus.PENDING,  # every authorization voided
                TransactionStatus.FAILED,  # voided, and a later attempt had failed
                TransactionStatus.CANCELLED,
            }
        ),
        TransactionStatus.COMPLETED: frozenset(
            {TransactionStatus.PARTIALLY_REFUNDED, TransactionStatus.REFUNDED}
        ),
        TransactionStatus.PARTIALLY_REFUNDED: frozenset({TransactionStatus.REFUNDED}),
        # A further payment captured after a full refund makes the refund partial again.
        TransactionStatus.REFUNDED: frozenset({TransactionStatus.PARTIALLY_REFUNDED}),
        TransactionStatus.CANCELLED: frozenset(),
    }
)


def derive_status(
    *,
    cancelled: bool,
    authorized: int,
    captured: int,
    refunded: int,
    last_payment_failed: bool,
) -> TransactionStatus:
    """The status that follows from a transaction's running amounts (first rule that holds).

    cancelled -> CANCELLED; captured > 0 and refunded == captured -> REFUNDED;
    refunded > 0 -> PARTIALLY_REFUNDED; captured > 0 -> COMPLETED; authorized > 0 ->
    AUTHORIZED; last payment failed -> FAILED; else PENDING.
    """
    if cancelled:
        return TransactionStatus.CANCELLED
    if captured > 0 and refunded == captured:
        return TransactionStatus.REFUNDED
    if refunded > 0:
        return TransactionStatus.PARTIALLY_REFUNDED
    if captured > 0:
        return TransactionStatus.COMPLETED
    if authorized > 0:
        return TransactionStatus.AUTHORIZED
    if last_payment_failed:
        return TransactionStatus.FAILED
    return TransactionStatus.PENDING


def check_transition(old: TransactionStatus, new: TransactionStatus) -> None:
    """Raise FailedPrecondition(INVALID_STATUS_TRANSITION) unless old -> new is allowed."""
    if old is new or new in ALLOWED_TRANSITIONS[old]:
        return
    raise FailedPrecondition(
        f"A transaction cannot go from {old} to {new}.",
        reason=REASON_INVALID_STATUS_TRANSITION,
        metadata={"from": old.value, "to": new.value},
    )


def metadata_problems(metadata: Mapping[str, str]) -> list[str]:
    """Every reason `metadata` is not acceptable (empty list if it is).

    At most 50 keys; a key is 1 to 40 printable characters (`str.isprintable`); a value
    is at most 500 characters without control characters (may be empty).
    """
    problems: list[str] = []
    if len(metadata) > MAX_METADATA_KEYS:
        problems.append(f"must have at most {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        long_key = len(key) > MAX_METADATA_KEY_LENGTH
        shown = key[:MAX_METADATA_KEY_LENGTH] + ("..." if long_key else "")
        shown = shown.encode("unicode_escape").decode("ascii")
        if not key:
            problems.append("keys must not be empty")
        elif len(key) > MAX_METADATA_KEY_LENGTH:
            problems.append(f"key {shown!r} must be at most {MAX_METADATA_KEY_LENGTH} characters")
        elif not key.isprintable():
            problems.append(f"key {shown!r} must contain only printable characters")
        value_problem = text_problem(value, max_length=MAX_METADATA_VALUE_LENGTH)
        if value_problem is not None:
            problems.append(f"value of key {shown!r} {value_problem}")
    return problems


def new_transaction(
    *,
    id: str,
    merchant_id: str,
    amount: int,
    currency: str,
    description: str,
    metadata: Mapping[str, str],
    now: datetime,
    field_prefix: str = "transaction",
) -> Transaction:
    """A validated PENDING transaction, or InvalidArgument listing every wrong field.

    Field paths are `<field_prefix>.amount`, `.currency`, `.description`, `.metadata`.
    """
    errors = ValidationErrors()
    if (problem := amount_problem(amount)) is not None:
        errors.add(f"{field_prefix}.amount", problem)
    if (problem := currency_problem(currency)) is not None:
        errors.add(f"{field_prefix}.currency", problem)
    problem = text_problem(description, max_length=MAX_DESCRIPTION_LENGTH, multiline=True)
    if problem is not None:
        errors.add(f"{field_prefix}.description", problem)
    for problem in metadata_problems(metadata):
        errors.add(f"{field_prefix}.metadata", problem)
    errors.raise_if_any("The transaction has invalid fields.")
    return Transaction(
        id=id,
        merchant_id=merchant_id,
        amount=amount,
        currency=currency,
        description=description,
        metadata=MappingProxyType(dict(metadata)),
        status=TransactionStatus.PENDING,
        authorized_amount=0,
        captured_amount=0,
        refunded_amount=0,
        last_payment_failed=False,
        create_time=now,
        update_time=now,
    )


# Per kind: required sign of (authorized, captured, refunded): +1 > 0, -1 < 0, 0 == 0,
# None <= 0 (a capture releases the uncaptured rest, which may be nothing).
_SHAPES: Mapping[MovementKind, tuple[int | None, int, int]] = MappingProxyType(
    {
        MovementKind.AUTHORIZATION: (1, 0, 0),
        MovementKind.CAPTURE: (None, 1, 0),
        MovementKind.VOID: (-1, 0, 0),
        MovementKind.REFUND: (0, 0, 1),
        MovementKind.FAILURE: (0, 0, 0),
        MovementKind.CANCELLATION: (0, 0, 0),
    }
)

_SIGN_WORDS = {1: "greater than zero", -1: "less than zero", 0: "zero", None: "zero or less"}


def _sign_ok(value: int, expected: int | None) -> bool:
    if expected is None:
        return value <= 0
    return (value > 0) - (value < 0) == expected


def validate_movement_shape(movement: _Deltas, field_prefix: str = "movement") -> None:
    """Raise InvalidArgument unless the deltas have the signs their kind requires.

    AUTHORIZATION: authorized > 0. CAPTURE: captured > 0, authorized <= 0 (the released
    rest). VOID: authorized < 0. REFUND: refunded > 0. FAILURE, CANCELLATION: all zero.
    Every delta not named is zero.
    """
    errors = ValidationErrors()
    if not isinstance(movement.kind, MovementKind):
        errors.add(f"{field_prefix}.kind", "must be a movement kind")
        errors.raise_if_any("The movement is malformed.")
    expected = _SHAPES[movement.kind]
    values = (movement.authorized_delta, movement.captured_delta, movement.refunded_delta)
    names = ("authorized_delta", "captured_delta", "refunded_delta")
    for name, value, sign in zip(names, values, expected, strict=True):
        if not _sign_ok(value, sign):
            description = f"must be {_SIGN_WORDS[sign]} for a {movement.kind} movement"
            errors.add(f"{field_prefix}.{name}", description)
    errors.raise_if_any("The movement is malformed.")


def _invariant_broken(amount: int, authorized: int, captured: int, refunded: int) -> str | None:
    if refunded < 0:
        return "0 <= refunded"
    if refunded > captured:
        return "refunded <= captured"
    if authorized < 0:
        return "0 <= authorized"
    if captured > authorized:
        return "captured <= authorized"
    if authorized > amount:
        return "authorized <= amount"
    return None


def apply_movement(
    transaction: Transaction, movement: _Deltas, *, now: datetime | None = None
) -> Transaction:
    """The transaction after `movement`; the input is not changed.

    Raises InvalidArgument if the movement is malformed (`validate_movement_shape`), and
    FailedPrecondition with reason:
    - TRANSACTION_CANCELLED: a CAPTURE or REFUND on a cancelled transaction;
    - TRANSACTION_CAPTURED: a CANCELLATION when money was captured;
    - LEDGER_INVARIANT_VIOLATED (metadata `invariant`): the amounts would break
      0 <= refunded <= captured <= authorized <= amount.
    AUTHORIZATION, VOID and FAILURE still apply to a cancelled transaction (they may be
    delivered after the cancellation) and leave it CANCELLED. Movements must be applied
    in the order the payment service produced them. `update_time` becomes `now` if given.
    """
    validate_movement_shape(movement)
    kind = movement.kind
    if transaction.cancelled and kind in (MovementKind.CAPTURE, MovementKind.REFUND):
        raise FailedPrecondition(
            "The transaction is cancelled: nothing can be captured or refunded on it.",
            reason=REASON_TRANSACTION_CANCELLED,
        )
    if kind is MovementKind.CANCELLATION and transaction.captured_amount > 0:
        raise FailedPrecondition(
            "Money was captured on the transaction: it cannot be cancelled.",
            reason=REASON_TRANSACTION_CAPTURED,
        )
    authorized = transaction.authorized_amount + movement.authorized_delta
    captured = transaction.captured_amount + movement.captured_delta
    refunded = transaction.refunded_amount + movement.refunded_delta
    broken = _invariant_broken(transaction.amount, authorized, captured, refunded)
    if broken is not None:
        raise FailedPrecondition(
            f"The movement would break the invariant {broken} of transaction {transaction.id}.",
            reason=REASON_LEDGER_INVARIANT_VIOLATED,
            metadata={"invariant": broken, "transaction_id": transaction.id},
        )
    last_payment_failed = transaction.last_payment_failed
    if kind is MovementKind.FAILURE:
        last_payment_failed = True
    elif kind is MovementKind.AUTHORIZATION:
        last_payment_failed = False
    cancelled = transaction.cancelled or kind is MovementKind.CANCELLATION
    status = derive_status(
        cancelled=cancelled,
        authorized=authorized,
        captured=captured,
        refunded=refunded,
        last_payment_failed=last_payment_failed,
    )
    check_transition(transaction.status, status)
    return dataclasses.replace(
        transaction,
        authorized_amount=authorized,
        captured_amount=captured,
        refunded_amount=refunded,
        last_payment_failed=last_payment_failed,
        status=status,
        update_time=transaction.update_time if now is None else now,
    )
