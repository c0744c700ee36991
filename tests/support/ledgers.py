"""A payment ledger the transaction service's facts tests can hold back or fail."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pi.transactions.app.ports import ClosedTransaction, TransactionFacts


class GatedLedger:
    """A payment ledger whose RegisterTransactions calls are recorded, batch by batch, then
    fail with `error` if set, else wait for `gate` (open unless closed)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.batches: list[list[TransactionFacts]] = []
        self.error: Exception | None = None

    async def close_transaction(self, **_: object) -> ClosedTransaction:
        raise AssertionError("not used")

    async def register_transactions(self, transactions: Sequence[TransactionFacts]) -> int:
        self.batches.append(list(transactions))
        if self.error is not None:
            raise self.error
        await self.gate.wait()
        return len(transactions)

    @property
    def registered(self) -> list[str]:
        return [facts.transaction_id for batch in self.batches for facts in batch]
