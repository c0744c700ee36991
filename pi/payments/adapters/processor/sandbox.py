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

State lives in this process only (one instance per payment service process). It keeps,
per payment id, the reference, the outcome and the amounts: never a card number, CVC,
account number or wallet token. After a restart it no longer knows earlier payments, so
`status()` of one answers DECLINED PROCESSOR_UNAVAILABLE, as a real processor would for a
payment it never received.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

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


@dataclass(slots=True)
class _Authorization:
    reference: str
    final: ConnectorResult | None  # None while a PENDING method has not settled
    settles_at: datetime
    amount: int
    capture: bool
    captured: int = 0
    refunded: int = 0
    voided: bool = False


class SandboxConnector:
    """In-memory test processor; see the module docstring for its outcomes."""

    def __init__(
        self,
        *,
        settle_after: timedelta = timedelta(0),
        clock: Callable[[], datetime] = _utc_now,
        new_reference: Callable[[], str] = _new_reference,
    ) -> None:
        self._settle_after = settle_after
        self._clock = clock
        self._new_reference = new_reference
        self._authorizations: dict[str, _Authorization] = {}
        self._operations: dict[tuple[str, str], ConnectorResult] = {}

    @property
    def name(self) -> str:
        return "sandbox"

    async def authorize(self, request: AuthorizeRequest) -> ConnectorResult:
        known = self._authorizations.get(request.payment_id)
        if known is not None:
            return self._current(known)
        now = self._clock()
        reference = self._new_reference()
        details = request.details
        if not isinstance(details, CardDetails):
            self._authorizations[request.payment_id] = _Authorization(
                reference=reference,
                final=None,
                settles_at=now + self._settle_after,
                amount=request.amount,
                capture=request.capture,
            )
            return ConnectorResult.pending(reference)
        verdict = TEST_CARDS.get(details.number, ProcessorOutcome.APPROVED)
        if verdict is ProcessorOutcome.TIMEOUT:
            # The request "never reached" the sandbox: nothing charged, no reference given.
            final = ConnectorResult.declined(FailureReason.PROCESSOR_UNAVAILABLE)
            self._authorizations[request.payment_id] = _Authorization(
                reference=reference, final=final, settles_at=now, amount=0, capture=False
            )
            return ConnectorResult.timeout()
        if isinstance(verdict, FailureReason):
            final = ConnectorResult.declined(verdict, reference)
        else:
            final = ConnectorResult.approved(reference)
        authorization = _Authorization(
            reference=reference,
            final=final,
            settles_at=now,
            amount=request.amount,
            capture=request.capture,
        )
        if final.outcome is ProcessorOutcome.APPROVED and request.capture:
            authorization.captured = request.amount
        self._authorizations[request.payment_id] = authorization
        return final

    async def status(self, payment_id: str) -> ConnectorResult:
        known = self._authorizations.get(payment_id)
        if known is None:
            return ConnectorResult.declined(FailureReason.PROCESSOR_UNAVAILABLE)
        return self._current(known)

    async def capture(self, request: CaptureRequest) -> ConnectorResult:
        key = ("capture", request.idempotency_key)
        if key in self._operations:
            return self._operations[key]
        auth = self._approved(request.payment_id)
        if auth is None or auth.voided or auth.captured > 0 or request.amount > auth.amount:
            result = ConnectorResult.declined(FailureReason.PROCESSOR_DECLINED)
        else:
            auth.captured = request.amount
            result = ConnectorResult.approved(self._new_reference())
        self._operations[key] = result
        return result

    async def void(self, request: VoidRequest) -> ConnectorResult:
        key = ("void", request.idempotency_key)
        if key in self._operations:
            return self._operations[key]
        auth = self._authorizations.get(request.payment_id)
        if auth is None:
            result = ConnectorResult.approved(self._new_reference())  # nothing was held
        elif auth.captured > 0:
            result = ConnectorResult.declined(FailureReason.PROCESSOR_DECLINED)
        else:
            if auth.final is None:  # a pending transfer stopped before it settled
                auth.final = ConnectorResult.declined(FailureReason.PROCESSOR_UNAVAILABLE)
            auth.voided = True
            result = ConnectorResult.approved(self._new_reference())
        self._operations[key] = result
        return result

    async def refund(self, request: RefundRequest) -> ConnectorResult:
        key = ("refund", request.idempotency_key)
        if key in self._operations:
            return self._operations[key]
        auth = self._approved(request.payment_id)
        if auth is None or request.amount <= 0 or auth.refunded + request.amount > auth.captured:
            result = ConnectorResult.declined(FailureReason.PROCESSOR_DECLINED)
        else:
            auth.refunded += request.amount
            result = ConnectorResult.approved(self._new_reference())
        self._operations[key] = result
        return result

    def _current(self, auth: _Authorization) -> ConnectorResult:
        if auth.final is None:
            if self._clock() < auth.settles_at:
                return ConnectorResult.pending(auth.reference)
            auth.final = ConnectorResult.approved(auth.reference)
            if auth.capture:
                auth.captured = auth.amount
        return auth.final

    def _approved(self, payment_id: str) -> _Authorization | None:
        auth = self._authorizations.get(payment_id)
        if auth is None or self._current(auth).outcome is not ProcessorOutcome.APPROVED:
            return None
        return auth
