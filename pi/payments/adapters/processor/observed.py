"""A connector that times every processor call and counts authorizations.

Wraps any `Connector` (the bootstrap wraps the configured one): `pi_processor_call_seconds`
by operation and outcome, `pi_authorizations_total` by outcome and decline reason. The
labels come from enums only; nothing of the request (card, amount, merchant) is recorded.
"""

from __future__ import annotations

from collections.abc import Awaitable
from time import perf_counter

from pi.payments.app.ports import Connector
from pi.payments.domain.processor import (
    AuthorizeRequest,
    CaptureRequest,
    ConnectorResult,
    RefundRequest,
    VoidRequest,
)
from pi.platform.observability import metrics

__all__ = ["ObservedConnector"]


class ObservedConnector:
    def __init__(self, inner: Connector) -> None:
        self._inner = inner

    @property
    def name(self) -> str:
        return self._inner.name

    async def _timed(self, operation: str, call: Awaitable[ConnectorResult]) -> ConnectorResult:
        start = perf_counter()
        outcome = "ERROR"
        try:
            result = await call
            outcome = result.outcome.value
            return result
        finally:
            metrics.processor_seconds.labels(self.name, operation, outcome).observe(
                perf_counter() - start
            )

    async def authorize(self, request: AuthorizeRequest) -> ConnectorResult:
        result = await self._timed("authorize", self._inner.authorize(request))
        reason = result.failure_reason.value if result.failure_reason is not None else ""
        metrics.authorizations.labels(self.name, result.outcome.value, reason).inc()
        return result

    async def capture(self, request: CaptureRequest) -> ConnectorResult:
        return await self._timed("capture", self._inner.capture(request))

    async def void(self, request: VoidRequest) -> ConnectorResult:
        return await self._timed("void", self._inner.void(request))

    async def refund(self, request: RefundRequest) -> ConnectorResult:
        return await self._timed("refund", self._inner.refund(request))

    async def status(self, payment_id: str) -> ConnectorResult:
        return await self._timed("status", self._inner.status(payment_id))

    async def close(self) -> None:
        """Close the connector it wraps, if that holds anything (the sandbox's ledger pool)."""
        close = getattr(self._inner, "close", None)
        if close is not None:
            await close()
