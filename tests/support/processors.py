"""A processor that fails on demand, for the tests of what the payment service does when
the processor does not answer, declines, or answers and the service dies at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pi.payments.adapters.processor import SandboxConnector
from pi.payments.domain import (
    CaptureRequest,
    ConnectorResult,
    FailureReason,
    RefundRequest,
    VoidRequest,
)

__all__ = ["Crash", "Faulty"]


class Crash(BaseException):
    """The process dies: nothing after it runs (not an exception a use case handles)."""


@dataclass
class Faulty:
    """The sandbox behind a switchboard: per operation ("capture", "void", "refund"),
    `crash` (the processor does it, then the service dies), `silent` (no answer; for
    "authorize", the request never reaches the processor) or `decline` (a decline without
    asking the sandbox). `calls` records (operation, key), `authorizations` payment ids."""

    sandbox: SandboxConnector
    crash: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    decline: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)  # payment ids asked for

    @property
    def name(self) -> str:
        return "faulty"

    async def authorize(self, request: Any) -> ConnectorResult:
        self.authorizations.append(request.payment_id)
        if "authorize" in self.silent:  # lost on the way: the processor never saw it
            raise TimeoutError("no answer")
        if "authorize" in self.crash:  # the service dies as it sends it: never seen
            raise Crash
        return await self.sandbox.authorize(request)

    async def status(self, payment_id: str) -> ConnectorResult:
        return await self.sandbox.status(payment_id)

    async def capture(self, request: CaptureRequest) -> ConnectorResult:
        return await self._call("capture", request.idempotency_key, self.sandbox.capture(request))

    async def void(self, request: VoidRequest) -> ConnectorResult:
        return await self._call("void", request.idempotency_key, self.sandbox.void(request))

    async def refund(self, request: RefundRequest) -> ConnectorResult:
        return await self._call("refund", request.idempotency_key, self.sandbox.refund(request))

    async def _call(self, operation: str, key: str, call: Any) -> ConnectorResult:
        self.calls.append((operation, key))
        if operation in self.silent:
            call.close()
            raise TimeoutError("no answer")
        if operation in self.decline:
            call.close()
            return ConnectorResult.declined(FailureReason.PROCESSOR_DECLINED)
        result: ConnectorResult = await call
        if operation in self.crash:
            raise Crash
        return result
