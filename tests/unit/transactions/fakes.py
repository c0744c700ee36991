"""Fakes for the transaction service's tests (imported by both tiers' conftests): a clock
the test moves, the payment service in memory, and a facts queue that records."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pi.transactions.app.ports import ClosedTransaction, TransactionFacts
from pi.transactions.domain import Transaction


class Clock:
    """Real time plus an offset; `freeze()` makes every call return one instant."""

    def __init__(self) -> None:
        self.offset = timedelta(0)
        self.frozen: datetime | None = None

    def __call__(self) -> datetime:
        if self.frozen is not None:
            return self.frozen
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta
        if self.frozen is not None:
            self.frozen += delta

    def freeze(self, at: datetime | None = None) -> datetime:
        self.frozen = at or datetime.now(UTC) + self.offset
        return self.frozen


@dataclass
class FakePaymentLedger:
    """`PaymentLedger` in memory: closes transactions, or fails with `error`; records the
    batches of `register_transactions` in `registered`."""

    error: Exception | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    registered: list[list[TransactionFacts]] = field(default_factory=list)

    async def close_transaction(
        self, *, merchant_id: str, transaction_id: str, amount: int, currency: str
    ) -> ClosedTransaction:
        self.calls.append(
            {
                "merchant_id": merchant_id,
                "transaction_id": transaction_id,
                "amount": amount,
                "currency": currency,
            }
        )
        if self.error is not None:
            raise self.error
        return ClosedTransaction(movement_id=f"mov_cancel_{transaction_id}", voided_payment_ids=())

    async def register_transactions(self, transactions: Sequence[TransactionFacts]) -> int:
        self.registered.append(list(transactions))
        if self.error is not None:
            raise self.error
        return len(transactions)


@dataclass
class RecordingFacts:
    """`FactsQueue` that records what is published and hands out futures the test
    resolves (`acknowledge`); with `waits` False it hands out none."""

    waits: bool = True
    published: list[Transaction] = field(default_factory=list)
    futures: list[asyncio.Future[bool]] = field(default_factory=list)

    def publish(self, transaction: Transaction) -> asyncio.Future[bool] | None:
        self.published.append(transaction)
        if not self.waits:
            return None
        done = asyncio.get_running_loop().create_future()
        self.futures.append(done)
        return done

    def acknowledge(self) -> None:
        for done in self.futures:
            if not done.done():
                done.set_result(True)
