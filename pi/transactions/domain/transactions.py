"""Transactions: what a merchant is owed, its running amounts and the status they give.

A transaction's status is never set directly: it is derived from the running amounts by
`derive_status` each time a movement is applied (`pi.transactions.domain.movements`).
See docs/state-machines.md.

Invariants of a transaction's running amounts (also CHECK constraints in the database):

    0 <= refunded <= captured <= authorized <= amount,   amount > 0

`authorized` is the amount held by authorizations that were not voided, captured part
included: a capture moves nothing out of `authorized` except the released rest.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from pi.platform.kernel.errors import FailedPrecondition, NotFound, ValidationErrors
from pi.platform.kernel.money import amount_problem, currency_problem
from pi.platform.kernel.text import text_problem

__all__ = [
    "ALLOWED_TRANSITIONS",
    "ID_LENGTH",
    "ID_PREFIX",
    "MAX_DESCRIPTION_LENGTH",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_KEY_LENGTH",
    "MAX_METADATA_VALUE_LENGTH",
    "MERCHANT_ID_LENGTH",
    "REASON_INVALID_STATUS_TRANSITION",
    "REASON_TRANSACTION_NOT_FOUND",
    "Transaction",
    "TransactionStatus",
    "check_transition",
    "derive_status",
    "metadata_problems",
    "new_transaction",
    "transaction_not_found",
]

ID_PREFIX = "txn"
ID_LENGTH = 40
"""At most this many characters in a transaction (or payment) id."""
MERCHANT_ID_LENGTH = 64
MAX_DESCRIPTION_LENGTH = 1000
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LENGTH = 40
MAX_METADATA_VALUE_LENGTH = 500

REASON_TRANSACTION_NOT_FOUND = "TRANSACTION_NOT_FOUND"
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
# `derive_status` over every reachable state; tests/unit/transactions checks it stays so.
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

    At most 50 keys; a key is 1 to 40 printable characters (`str.isprintable`); keys and
    values (at most 500 characters, may be empty) pass the platform's text rules
    (`pi.platform.kernel.text`: no control or bidi characters, no card numbers).
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
        elif (key_problem := text_problem(key, max_length=MAX_METADATA_KEY_LENGTH)) is not None:
            problems.append(f"key {key_problem}")
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


def transaction_not_found(transaction_id: str) -> NotFound:
    """The answer for an unknown transaction and for another merchant's alike."""
    return NotFound(
        "No such transaction.",
        reason=REASON_TRANSACTION_NOT_FOUND,
        metadata={"transaction_id": transaction_id[:64]},
    )
