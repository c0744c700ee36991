"""Movements: the only way money on a transaction changes, and the rules they obey.

The movement types (`MovementKind`, `MovementDelta`, `Movement`) are the money-flow
contract of transactions.proto, shared with the payment service in `pi.platform.ledger`.
`apply_movement` gives the transaction after a movement, or the error that refuses it; a
movement id is applied at most once (`AppliedMovement` is what is remembered of it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Protocol

from pi.platform.kernel.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ValidationErrors,
)
from pi.platform.ledger import Movement, MovementKind
from pi.transactions.domain.transactions import (
    ID_LENGTH,
    MERCHANT_ID_LENGTH,
    Transaction,
    check_transition,
    derive_status,
)

__all__ = [
    "MOVEMENT_ID_LENGTH",
    "REASON_LEDGER_INVARIANT_VIOLATED",
    "REASON_MOVEMENT_ID_REUSED",
    "REASON_TRANSACTION_CANCELLED",
    "REASON_TRANSACTION_CAPTURED",
    "AppliedMovement",
    "apply_movement",
    "cancellation",
    "invariant_violated",
    "movement_id_reused",
    "same_movement",
    "validate_movement",
    "validate_movement_shape",
]

MOVEMENT_ID_LENGTH = 128

REASON_LEDGER_INVARIANT_VIOLATED = "LEDGER_INVARIANT_VIOLATED"
"""A movement would break 0 <= refunded <= captured <= authorized <= amount."""
REASON_TRANSACTION_CANCELLED = "TRANSACTION_CANCELLED"
"""Money cannot be captured or refunded on a cancelled transaction."""
REASON_TRANSACTION_CAPTURED = "TRANSACTION_CAPTURED"
"""A transaction on which money was captured cannot be cancelled."""
REASON_MOVEMENT_ID_REUSED = "MOVEMENT_ID_REUSED"
"""A movement id applied before came again with other contents (a caller's bug)."""


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
class AppliedMovement:
    """A movement as it was applied: its id is never applied again."""

    id: str
    transaction_id: str
    payment_id: str | None
    kind: MovementKind
    authorized_delta: int
    captured_delta: int
    refunded_delta: int
    occur_time: datetime
    apply_time: datetime

    @classmethod
    def of(cls, movement: Movement, apply_time: datetime) -> AppliedMovement:
        return cls(
            id=movement.id,
            transaction_id=movement.transaction_id,
            payment_id=movement.payment_id,
            kind=movement.kind,
            authorized_delta=movement.authorized_delta,
            captured_delta=movement.captured_delta,
            refunded_delta=movement.refunded_delta,
            occur_time=movement.occur_time,
            apply_time=apply_time,
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


def _visible_ascii(value: str) -> bool:
    return all("!" <= c <= "~" for c in value)


def validate_movement(movement: Movement) -> None:
    """Raise InvalidArgument listing every malformed field: the ids (required, at most
    their column's length of visible ASCII; the payment id is optional) and the shape."""
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


def cancellation(
    movement_id: str, *, merchant_id: str, transaction_id: str, now: datetime
) -> Movement:
    """The CANCELLATION movement the payment service answered a close with."""
    return Movement(
        id=movement_id,
        merchant_id=merchant_id,
        transaction_id=transaction_id,
        payment_id=None,
        kind=MovementKind.CANCELLATION,
        authorized_delta=0,
        captured_delta=0,
        refunded_delta=0,
        occur_time=now,
    )


def same_movement(earlier: AppliedMovement | Movement, movement: Movement) -> bool:
    """Whether a movement id seen before named this very movement (a redelivery)."""
    return bool(
        earlier.transaction_id == movement.transaction_id
        and earlier.kind == movement.kind
        and earlier.authorized_delta == movement.authorized_delta
        and earlier.captured_delta == movement.captured_delta
        and earlier.refunded_delta == movement.refunded_delta
    )


def movement_id_reused(movement: Movement) -> AlreadyExists:
    return AlreadyExists(
        "This movement id was already applied with different contents.",
        reason=REASON_MOVEMENT_ID_REUSED,
        metadata={"movement_id": movement.id},
    )


def invariant_violated(transaction_id: str) -> FailedPrecondition:
    """What a write the stored invariants refuse is reported as (the domain rules let
    it through: they were bypassed or are out of step with the database's)."""
    return FailedPrecondition(
        f"The movement would break an invariant of transaction {transaction_id}.",
        reason=REASON_LEDGER_INVARIANT_VIOLATED,
        metadata={"transaction_id": transaction_id},
    )
