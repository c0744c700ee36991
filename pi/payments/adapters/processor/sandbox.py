"""The sandbox connector: a processor's test mode, deterministic by test card number.

Cards (any valid expiry and CVC):

| number              | authorize                      | status() afterwards              |
|---------------------|--------------------------------|----------------------------------|
| 4242424242424242    | APPROVED                       | APPROVED                         |
| 4000000000000002    | DECLINED CARD_DECLINED         | DECLINED CARD_DECLINED           |
| 4000000000009995    | DECLINED INSUFFICIENT_FUNDS    | DECLINED INSUFFICIENT_FUNDS      |
| 4000000000000119    | TIMEOUT (nothing charged)      | DECLINED PROCESSOR_UNAVAILABLE   |
| any other valid card| APPROVED                       | APPROVED                         |

Bank transfers and wallets: authorize answers PENDING; `status()` answers PENDING until
`settle_after` has passed since the authorization, then APPROVED (settled).

Its ledger is a `SandboxBook` (`book.py`): by default in this process only, forgotten on
restart (then `status()` of an earlier payment answers DECLINED PROCESSOR_UNAVAILABLE, as a
real processor would for a payment it never received); with `PI_SANDBOX_LEDGER=postgres`
in its own schema, shared by replicas and kept across restarts. It keeps, per payment id,
the reference, the outcome and the amounts: never a card number, CVC, account number or
wallet token.

Faults (`SandboxFaults`, all off unless set explicitly; `make chaos` turns them on):
a share of calls answers TIMEOUT, half of them before doing anything (the request was
lost) and half after (the answer was lost); and a share of approvals kills the process
right after the processor recorded them, before the caller can write them down.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from pi.payments.adapters.processor.book import Authorization, MemoryBook, SandboxBook
from pi.payments.adapters.processor.faults import NO_FAULTS, Fault, SandboxFaults
from pi.payments.domain import (
    AuthorizeRequest,
    CaptureRequest,
    CardDetails,
    ConnectorResult,
    FailureReason,
    ProcessorOutcome,
    RefundRequest,
    VoidRequest,
)
from pi.platform.kernel.ids import new_id

__all__ = ["TEST_CARDS", "SandboxConnector"]

APPROVE_CARD = "4242424242424242"
DECLINE_CARD = "4000000000000002"
INSUFFICIENT_FUNDS_CARD = "4000000000009995"
TIMEOUT_CARD = "4000000000000119"

TEST_CARDS: MappingProxyType[str, ProcessorOutcome | FailureReason] = MappingProxyType(
    {
        APPROVE_CARD: ProcessorOutcome.APPROVED,
        DECLINE_CARD: FailureReason.CARD_DECLINED,
        INSUFFICIENT_FUNDS_CARD: FailureReason.INSUFFICIENT_FUNDS,
        TIMEOUT_CARD: ProcessorOutcome.TIMEOUT,
    }
)
"""Test card number -> what authorize answers (a FailureReason means DECLINED with it)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _new_reference() -> str:
    return new_id("sbx")


class SandboxConnector:
    """Test processor; see the module docstring for its outcomes."""

    def __init__(
        self,
        *,
        settle_after: timedelta = timedelta(0),
        clock: Callable[[], datetime] = _utc_now,
        new_reference: Callable[[], str] = _new_reference,
        book: SandboxBook | None = None,
        faults: SandboxFaults = NO_FAULTS,
    ) -> None:
        self._settle_after = settle_after
        self._clock = clock
        self._new_reference = new_reference
        self._book: SandboxBook = book or MemoryBook()
        self._faults = faults

    @property
    def name(self) -> str:
        return "sandbox"

    async def close(self) -> None:
        await self._book.close()

    async def authorize(self, request: AuthorizeRequest) -> ConnectorResult:
        fault = self._faults.draw()
        if fault is Fault.LOST_REQUEST:
            return ConnectorResult.timeout()
        try:
            result = await self._authorize(request)
        except Exception:  # the book could not be written: the outcome is unknown
            return ConnectorResult.timeout()
        return self._faults.answer(result, fault)

    async def _authorize(self, request: AuthorizeRequest) -> ConnectorResult:
        known = await self._book.authorization(request.payment_id)
        if known is not None:
            return await self._current(request.payment_id, known)
        now = self._clock()
        reference = self._new_reference()
        details = request.details
        timed_out = False
        if not isinstance(details, CardDetails):
            new = Authorization(
                reference=reference,
                final=None,
                settles_at=now + self._settle_after,
                amount=request.amount,
                capture=request.capture,
            )
        else:
            verdict = TEST_CARDS.get(details.number, ProcessorOutcome.APPROVED)
            if verdict is ProcessorOutcome.TIMEOUT:
                # The request "never reached" the sandbox: nothing charged, no reference given.
                timed_out = True
                final = ConnectorResult.declined(FailureReason.PROCESSOR_UNAVAILABLE)
                new = Authorization(
                    reference=reference, final=final, settles_at=now, amount=0, capture=False
                )
            else:
                if isinstance(verdict, FailureReason):
                    final = ConnectorResult.declined(verdict, reference)
                else:
                    final = ConnectorResult.approved(reference)
                approved = final.outcome is ProcessorOutcome.APPROVED
                new = Authorization(
                    reference=reference,
                    final=final,
                    settles_at=now,
                    amount=request.amount if approved else 0,
                    capture=request.capture,
                    captured=request.amount if approved and request.capture else 0,
                )
        kept = await self._book.add_authorization(request.payment_id, request.merchant_id, new)
        if kept.reference != new.reference:  # another call for this payment came first
            return await self._current(request.payment_id, kept)
        if timed_out:
            return ConnectorResult.timeout()
        if kept.final is None:
            return ConnectorResult.pending(reference)
        return kept.final

    async def status(self, payment_id: str) -> ConnectorResult:
        try:
            known = await self._book.authorization(payment_id)
            if known is None:
                known = await self._fence(payment_id)
            return await self._current(payment_id, known)
        except Exception:
            return ConnectorResult.timeout()

    async def _fence(self, payment_id: str) -> Authorization:
        """Answer "never received" for good: record the payment as refused, so that an
        authorize still on its way (a slow first call, a client's retry) is declined
        rather than charging a card the caller has been told was not charged (a real
        processor's "technical cancel" by reference). Whichever comes first, this or the
        authorize, is what both answer."""
        now = self._clock()
        refused = Authorization(
            reference=self._new_reference(),
            final=ConnectorResult.declined(FailureReason.PROCESSOR_UNAVAILABLE),
            settles_at=now,
            amount=0,
            capture=False,
        )
        # A status question names no merchant: the refusal is kept without one.
        return await self._book.add_authorization(payment_id, "", refused)

    async def capture(self, request: CaptureRequest) -> ConnectorResult:
        def decide(auth: Authorization | None) -> ConnectorResult:
            if (
                not self._approved(auth)
                or auth is None
                or auth.voided
                or auth.captured > 0
                or request.amount > auth.amount
            ):
                return ConnectorResult.declined(FailureReason.PROCESSOR_DECLINED)
            auth.captured = request.amount
            return ConnectorResult.approved(self._new_reference())

        return await self._operate("capture", request.idempotency_key, request, decide)

    async def void(self, request: VoidRequest) -> ConnectorResult:
        def decide(auth: Authorization | None) -> ConnectorResult:
            if auth is None:
                return ConnectorResult.approved(self._new_reference())  # nothing was held
            if auth.captured > 0:
                return ConnectorResult.declined(FailureReason.PROCESSOR_DECLINED)
            self._settle(auth)
            if auth.final is None:  # a pending transfer stopped before it settled
                auth.final = ConnectorResult.declined(FailureReason.PROCESSOR_UNAVAILABLE)
            auth.voided = True
            return ConnectorResult.approved(self._new_reference())

        return await self._operate("void", request.idempotency_key, request, decide)

    async def refund(self, request: RefundRequest) -> ConnectorResult:
        def decide(auth: Authorization | None) -> ConnectorResult:
            if (
                not self._approved(auth)
                or auth is None
                or request.amount <= 0
                or auth.refunded + request.amount > auth.captured
            ):
                return ConnectorResult.declined(FailureReason.PROCESSOR_DECLINED)
            auth.refunded += request.amount
            return ConnectorResult.approved(self._new_reference())

        return await self._operate("refund", request.idempotency_key, request, decide)

    async def _operate(
        self,
        kind: str,
        key: str,
        request: CaptureRequest | VoidRequest | RefundRequest,
        decide: Callable[[Authorization | None], ConnectorResult],
    ) -> ConnectorResult:
        fault = self._faults.draw()
        if fault is Fault.LOST_REQUEST:
            return ConnectorResult.timeout()
        amount = getattr(request, "amount", 0)
        try:
            result = await self._book.apply(kind, key, request.payment_id, amount, decide)
        except Exception:  # the book could not be written: the outcome is unknown
            return ConnectorResult.timeout()
        return self._faults.answer(result, fault)

    def _settle(self, auth: Authorization) -> bool:
        """Settle a PENDING authorization whose time has come; whether it changed."""
        if auth.final is not None or self._clock() < auth.settles_at:
            return False
        auth.final = ConnectorResult.approved(auth.reference)
        if auth.capture:
            auth.captured = auth.amount
        return True

    async def _current(self, payment_id: str, auth: Authorization) -> ConnectorResult:
        if self._settle(auth):
            await self._book.save_authorization(payment_id, auth)
        if auth.final is None:
            return ConnectorResult.pending(auth.reference)
        return auth.final

    def _approved(self, auth: Authorization | None) -> bool:
        if auth is None:
            return False
        self._settle(auth)
        return auth.final is not None and auth.final.outcome is ProcessorOutcome.APPROVED
