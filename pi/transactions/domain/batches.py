"""Batches of movements (ApplyMovements): the rules of `apply_movement` over a whole batch.

Each movement of a batch gets the outcome `apply_movement` would give it alone, in the
given order; once a movement of a transaction is refused, the later ones of that
transaction are not attempted (ABORTED), while other transactions go on. A movement id
applied before (by an earlier call, or earlier in the batch) is a redelivery: applied
once, or ALREADY_EXISTS if its contents differ.

A store applies a batch in three moves, whatever it is: it locks the transactions and
records the candidate ids (`candidates`), learning which ids were new; `plan_batch`
decides everything in memory; the store forgets the ids that did not apply after all and
writes each transaction's chain of states.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from pi.platform.kernel.errors import Aborted, DomainError, InvalidArgument
from pi.platform.ledger import Movement
from pi.transactions.domain.movements import (
    AppliedMovement,
    apply_movement,
    movement_id_reused,
    same_movement,
    validate_movement,
)
from pi.transactions.domain.transactions import Transaction, transaction_not_found

__all__ = [
    "REASON_EARLIER_MOVEMENT_NOT_APPLIED",
    "BatchPlan",
    "UnreadableMovement",
    "candidates",
    "earlier_movement_not_applied",
    "invalid_movement",
    "plan_batch",
    "readable",
]

REASON_EARLIER_MOVEMENT_NOT_APPLIED = "EARLIER_MOVEMENT_NOT_APPLIED"


@dataclass(frozen=True, slots=True)
class UnreadableMovement:
    """A movement of a batch that the transport could not turn into a `Movement` (bad
    kind or time): it is reported `error`, like any invalid one."""

    id: str
    transaction_id: str
    error: InvalidArgument


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """`plan_batch`'s answer: per movement its error (None: applied), the ids that are
    applied (by this batch or before), and per transaction its chain of states, from the
    locked one through one per movement applied (only transactions that change)."""

    errors: list[Exception | None]
    applied: set[str]
    chains: dict[str, list[Transaction]]


def invalid_movement(movement: Movement | UnreadableMovement) -> InvalidArgument | None:
    """Why the movement is malformed, or None."""
    if isinstance(movement, UnreadableMovement):
        return movement.error
    try:
        validate_movement(movement)
    except InvalidArgument as error:
        return error
    return None


def readable(
    movements: Sequence[Movement | UnreadableMovement], invalid: Sequence[Exception | None]
) -> list[Movement]:
    """The movements that are well formed, in order."""
    return [
        movement
        for movement, error in zip(movements, invalid, strict=True)
        if error is None and isinstance(movement, Movement)
    ]


def candidates(
    movements: Sequence[Movement | UnreadableMovement],
    invalid: Sequence[Exception | None],
    current: Mapping[str, Transaction],
) -> list[Movement]:
    """The movements a store records before `plan_batch` (distinct ids, in order): the
    first occurrence of each id, if well formed and on a transaction of its merchant.

    Recording them up front (one statement) tells which ids are redeliveries; the ids of
    those that do not apply after all are forgotten again.
    """
    seen: set[str] = set()
    chosen: list[Movement] = []
    for movement, error in zip(movements, invalid, strict=True):
        first = movement.id not in seen
        seen.add(movement.id)
        if (
            first
            and error is None
            and isinstance(movement, Movement)
            and _owner_matches(current.get(movement.transaction_id), movement)
        ):
            chosen.append(movement)
    return chosen


def plan_batch(
    movements: Sequence[Movement | UnreadableMovement],
    invalid: Sequence[Exception | None],
    current: Mapping[str, Transaction],
    recorded: set[str],
    known: Mapping[str, AppliedMovement],
    now: datetime,
) -> BatchPlan:
    """The domain rules over a batch, in memory, in the given order.

    `invalid` holds each movement's error found before (None: none), `current` the
    locked transactions by id (any merchant's), `recorded` the ids the store recorded as
    new, `known` the movements applied before the batch (for the redeliveries).
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
            errors[index] = earlier_movement_not_applied(transaction_id)
            continue
        transaction = state.get(transaction_id)
        error: Exception | None = None
        if transaction is None or not _owner_matches(transaction, movement):
            error = transaction_not_found(transaction_id)
        elif movement.id in applied:  # the same id earlier in this batch
            if not same_movement(applied[movement.id], movement):
                error = movement_id_reused(movement)
        elif not first_sight:
            # Its first occurrence in this batch did not apply: not attempted again here.
            error = earlier_movement_not_applied(transaction_id)
        elif movement.id not in recorded:  # applied by an earlier call
            earlier = known.get(movement.id)
            if earlier is None:  # pragma: no cover - the store just found it recorded
                error = earlier_movement_not_applied(transaction_id)
            elif same_movement(earlier, movement):
                applied[movement.id] = movement
            else:
                error = movement_id_reused(movement)
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
    return BatchPlan(errors, set(applied), chains)


def earlier_movement_not_applied(transaction_id: str) -> Aborted:
    return Aborted(
        "An earlier movement of this transaction in the batch was not applied, so this one "
        "was not attempted; send it again after that one.",
        reason=REASON_EARLIER_MOVEMENT_NOT_APPLIED,
        metadata={"transaction_id": transaction_id[:64]},
    )


def _owner_matches(transaction: Transaction | None, movement: Movement) -> bool:
    return transaction is not None and transaction.merchant_id == movement.merchant_id
