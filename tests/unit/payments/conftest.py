"""Fixtures of the payment use-case tests: the use cases on the in-memory unit of work,
with the sandbox processor, a fake transaction service and a clock the test moves.

`world` is a `World`: `world.use` (every use case), `world.pay(...)` (CreatePayment by
card, or by `bank_transfer=`/`wallet=`), `world.ledger` (the fake transaction service:
`known` transactions, `lookups`, `applied` movements), `world.state` (the memory store:
refs, payments, outbox, keys), `world.clock` and `world.nudges` (outbox wake-ups).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from pi.payments.adapters.memory import MemoryOutbox, MemoryState, MemoryUnits
from pi.payments.adapters.processor import SandboxConnector
from pi.payments.app.create_payment import CreatePaymentInput
from pi.payments.app.ports import MovementOutcome, TransactionFacts
from pi.payments.app.use_cases import PaymentUseCases, payment_use_cases
from pi.payments.domain import (
    BankTransferInput,
    CaptureMode,
    CardInput,
    Payment,
    PaymentMethodType,
    WalletInput,
    WalletType,
)
from pi.platform.kernel.errors import NotFound
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.principal import Principal
from pi.platform.ledger import Movement

M = "mer_unit"
MERCHANT = Principal.merchant(M)
SERVICE = Principal.service()
T0 = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
APPROVE = "4242424242424242"
DECLINE = "4000000000000002"
INSUFFICIENT = "4000000000009995"
TIMEOUT = "4000000000000119"


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class FakeLedger:
    """The transaction service as the payment service sees it."""

    known: dict[str, TransactionFacts] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)
    applied: list[Movement] = field(default_factory=list)

    def add(self, transaction_id: str, amount: int, *, merchant_id: str = M, **more: Any) -> None:
        facts = {"currency": "USD", "cancelled": False, **more}
        self.known[transaction_id] = TransactionFacts(transaction_id, merchant_id, amount, **facts)

    async def lookup_transaction(self, merchant_id: str, transaction_id: str) -> TransactionFacts:
        self.lookups.append(transaction_id)
        facts = self.known.get(transaction_id)
        if facts is None or facts.merchant_id != merchant_id:
            raise NotFound("The transaction does not exist.", reason="TRANSACTION_NOT_FOUND")
        return facts

    async def apply_movements(self, movements: Sequence[Movement]) -> list[MovementOutcome]:
        self.applied.extend(movements)
        return [MovementOutcome(movement.id) for movement in movements]


@dataclass
class World:
    MERCHANT: ClassVar[Principal] = MERCHANT
    SERVICE: ClassVar[Principal] = SERVICE
    APPROVE: ClassVar[str] = APPROVE
    DECLINE: ClassVar[str] = DECLINE
    INSUFFICIENT: ClassVar[str] = INSUFFICIENT
    TIMEOUT: ClassVar[str] = TIMEOUT
    BANK: ClassVar[BankTransferInput] = BankTransferInput("Ada Lovelace", "DE89370400440532013000")
    WALLET: ClassVar[WalletInput] = WalletInput(WalletType.PAYPAL, "wallet-token")

    use: PaymentUseCases
    units: MemoryUnits
    outbox: MemoryOutbox
    ledger: FakeLedger
    connector: SandboxConnector
    clock: Clock
    nudges: list[int]

    @property
    def state(self) -> MemoryState:
        return self.units.state

    async def pay(
        self,
        transaction_id: str = "txn_1",
        number: str = APPROVE,
        *,
        amount: int = 0,
        manual: bool = False,
        key: str | None = None,
        principal: Principal = MERCHANT,
        **method: Any,
    ) -> Payment:
        if method:
            kind = (
                PaymentMethodType.BANK_TRANSFER
                if "bank_transfer" in method
                else PaymentMethodType.WALLET
            )
            data = CreatePaymentInput(transaction_id, amount, kind, **method)
        else:
            data = CreatePaymentInput(
                transaction_id,
                amount,
                PaymentMethodType.CARD,
                CaptureMode.MANUAL if manual else CaptureMode.AUTOMATIC,
                card=CardInput(number, 12, 2030, "123"),
            )
        return await self.use.create_payment(principal, data, idempotency_key=key)

    def movements(self, transaction_id: str = "txn_1") -> list[tuple[str, int, int, int, int]]:
        """The transaction's outbox, in order: (kind, seq, authorized, captured, refunded)."""
        rows = sorted(
            (r for r in self.state.outbox.values() if r.transaction_id == transaction_id),
            key=lambda r: r.seq,
        )
        return [
            (
                r.movement.kind.value,
                r.seq,
                r.movement.authorized_delta,
                r.movement.captured_delta,
                r.movement.refunded_delta,
            )
            for r in rows
        ]

    def ref(self, transaction_id: str = "txn_1") -> tuple[int, int, int, bool]:
        """(held, captured, refunded, closed) of the transaction's ref."""
        ref = self.state.refs[transaction_id].ref
        return (ref.held_amount, ref.captured_amount, ref.refunded_amount, ref.closed)


@pytest.fixture
def world() -> World:
    units = MemoryUnits()
    ledger = FakeLedger()
    ledger.add("txn_1", 1000)
    clock = Clock()
    connector = SandboxConnector(settle_after=timedelta(minutes=5), clock=clock)
    nudges: list[int] = []
    use = payment_use_cases(
        units,
        connector,
        ledger,
        card_key=b"k" * 32,
        request_key=b"r" * 32,
        page_tokens=PageToken(b"p" * 32),
        notify=lambda: nudges.append(1),
        clock=clock,
    )
    return World(
        use, units, MemoryOutbox(units.state, units.lock), ledger, connector, clock, nudges
    )
