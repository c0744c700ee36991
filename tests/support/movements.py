"""Movements as the transaction service's tests write them, and what they read back, for
the use-case tests on memory and the batch tests on PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pi.platform.kernel.errors import DomainError
from pi.platform.kernel.principal import Principal
from pi.transactions.app.apply_movements import MovementResult
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.domain import Movement, MovementKind, Transaction, TransactionStatus

ALICE = Principal.merchant("mer_alice")


def move(
    transaction: Transaction,
    kind: MovementKind,
    id: str,
    a: int = 0,
    c: int = 0,
    r: int = 0,
    *,
    merchant_id: str | None = None,
) -> Movement:
    return Movement(
        id=id,
        merchant_id=transaction.merchant_id if merchant_id is None else merchant_id,
        transaction_id=transaction.id,
        payment_id="pay_1",
        kind=kind,
        authorized_delta=a,
        captured_delta=c,
        refunded_delta=r,
        occur_time=datetime.now(UTC),
    )


async def create(service: TransactionUseCases, amount: int = 1000) -> Transaction:
    return await service.create_transaction(
        ALICE, amount=amount, currency="USD", description="", metadata={}
    )


def outcome(result: MovementResult) -> tuple[str, str | None]:
    """(code, reason) of a result; ("OK", None) if applied."""
    if result.error is None:
        return ("OK", None)
    assert isinstance(result.error, DomainError), result.error
    return (result.error.code.value, result.error.reason)


def amounts(transaction: Transaction) -> tuple[TransactionStatus, int, int, int]:
    return (
        transaction.status,
        transaction.authorized_amount,
        transaction.captured_amount,
        transaction.refunded_amount,
    )


def interleave(chains: Sequence[Sequence[Movement]]) -> list[Movement]:
    """Round-robin over the chains: each keeps its order, transactions are mixed."""
    longest = max(len(chain) for chain in chains)
    return [chain[i] for i in range(longest) for chain in chains if i < len(chain)]
