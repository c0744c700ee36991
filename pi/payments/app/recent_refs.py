"""Refs this process registered moments ago, so that a transaction's first payment starts
from its ref without reading it.

The transaction service pushes every new transaction (RegisterTransactions) right after
creating it, and the merchant's CreatePayment follows a moment later: reading back the
row just inserted was one statement and one round trip per payment. Remembering the refs
as inserted is safe because of what CreatePayment does with one:

- a ref's facts (merchant, amount, currency) never change, and only refs this process
  inserted are remembered, so the facts are the row's;
- its amounts (held, captured, closed) are only the optimistic guess T1 writes against:
  the write is conditional on the row still holding them, and if another payment got
  there first (on another replica, or after a lookup), the unit conflicts and T1 decides
  again on the locked row. A stale entry costs a retry, never a wrong decision.

Each entry is taken once (the first payment; later ones read the row, which their
predecessors changed), and the oldest go first past `capacity` (transactions that never
get a payment). Per process: with replicas, a push that went to another one is a miss,
and a miss reads the row as before.
"""

from __future__ import annotations

from collections.abc import Iterable

from pi.payments.domain import TransactionRef

__all__ = ["RecentRefs"]


class RecentRefs:
    def __init__(self, capacity: int = 8192) -> None:
        self._capacity = capacity
        self._refs: dict[str, TransactionRef] = {}  # insertion order: oldest first

    def __len__(self) -> int:
        return len(self._refs)

    def remember(self, refs: Iterable[TransactionRef]) -> None:
        """Refs just inserted by a committed unit, holding nothing."""
        for ref in refs:
            self._refs[ref.transaction_id] = ref
        while len(self._refs) > self._capacity:
            del self._refs[next(iter(self._refs))]

    def take(self, transaction_id: str) -> TransactionRef | None:
        """The ref as remembered, forgotten from now on; None if it is not here."""
        return self._refs.pop(transaction_id, None)
