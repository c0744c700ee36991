"""The sandbox processor's fault knobs: off by default; a lost request does nothing, a
lost answer does it all the same; a crash comes after the processor recorded its
approval (before the caller can record it)."""

from __future__ import annotations

import pytest

from pi.payments.adapters.processor import SandboxConnector
from pi.payments.adapters.processor.book import MemoryBook
from pi.payments.adapters.processor.faults import NO_FAULTS, Fault, SandboxFaults
from pi.payments.domain import FailureReason, ProcessorOutcome
from tests.support.sandbox import capture_of, card_authorization, refund_of

DECLINE_CARD = "4000000000000002"


class Draws:
    """A random.Random stand-in answering the given numbers in turn."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


class Crashed(Exception):
    pass


def test_no_fault_unless_asked() -> None:
    assert not NO_FAULTS.enabled
    assert all(NO_FAULTS.draw() is None for _ in range(1000))
    assert SandboxFaults(unknown_percent=10).enabled
    assert SandboxFaults(crash_percent=1).enabled


def test_a_share_of_calls_is_lost_half_before_half_after() -> None:
    faults = SandboxFaults(unknown_percent=10, rng=Draws(0.05, 0.2, 0.05, 0.7, 0.5))
    assert faults.draw() is Fault.LOST_REQUEST
    assert faults.draw() is Fault.LOST_ANSWER
    assert faults.draw() is None  # 0.5 * 100 >= 10


async def test_a_lost_request_charges_nothing() -> None:
    book = MemoryBook()
    lossy = SandboxConnector(book=book, faults=SandboxFaults(100, rng=Draws(0.0, 0.1)))
    assert (await lossy.authorize(card_authorization("pay_1"))).outcome is ProcessorOutcome.TIMEOUT
    status = await SandboxConnector(book=book).status("pay_1")
    assert (status.outcome, status.failure_reason) == (
        ProcessorOutcome.DECLINED,
        FailureReason.PROCESSOR_UNAVAILABLE,
    )


async def test_a_lost_answer_is_done_and_replayed_by_key() -> None:
    book = MemoryBook()
    clean = SandboxConnector(book=book)
    await clean.authorize(card_authorization("pay_1", 1000))
    lossy = SandboxConnector(book=book, faults=SandboxFaults(100, rng=Draws(0.0, 0.9)))
    lost = await lossy.capture(capture_of("pay_1", 1000))
    assert lost.outcome is ProcessorOutcome.TIMEOUT
    auth = await book.authorization("pay_1")
    assert auth is not None and auth.captured == 1000  # the processor did capture
    again = await clean.capture(capture_of("pay_1", 1000))
    assert again.outcome is ProcessorOutcome.APPROVED
    assert (await book.authorization("pay_1")).captured == 1000  # type: ignore[union-attr]


async def test_a_crash_comes_after_the_approval_is_recorded() -> None:
    book = MemoryBook()
    seen: list[int] = []

    def crash() -> None:
        auth = book._authorizations["pay_1"]
        seen.append(auth.captured)
        raise Crashed

    faults = SandboxFaults(crash_percent=100, rng=Draws(0.0, 0.0, 0.0), crash=crash)
    connector = SandboxConnector(book=book, faults=faults)
    with pytest.raises(Crashed):
        await connector.authorize(card_authorization("pay_1", 1000, capture=True))
    assert seen == [1000]
    with pytest.raises(Crashed):
        await connector.refund(refund_of("pay_1", 300, "r1"))
    assert book._authorizations["pay_1"].refunded == 300


async def test_a_decline_never_crashes() -> None:
    faults = SandboxFaults(crash_percent=100, rng=Draws(0.0), crash=lambda: pytest.fail("crashed"))
    connector = SandboxConnector(faults=faults)
    result = await connector.authorize(card_authorization("pay_1", number=DECLINE_CARD))
    assert result.outcome is ProcessorOutcome.DECLINED
