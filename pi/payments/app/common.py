"""What several payment use cases share: their errors, request fingerprints, identifier
checks and the locked unit of work."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pi.payments.app.ports import REASON_TRANSACTION_NOT_FOUND, PaymentsUnit, UnitsOfWork
from pi.payments.domain import ConnectorResult, ProcessorOutcome
from pi.platform.kernel.errors import Aborted, FailedPrecondition, NotFound, Unavailable
from pi.platform.kernel.units import Conflict, Mode

__all__ = [
    "MAX_ID_LENGTH",
    "REASON_CONCURRENT_MODIFICATION",
    "REASON_PAYMENT_NOT_FOUND",
    "REASON_PROCESSOR_DECLINED",
    "REASON_PROCESSOR_UNAVAILABLE",
    "RequestFingerprints",
    "id_problem",
    "locked",
    "payment_not_found",
    "processor_refused",
    "transaction_not_found",
]

REASON_PAYMENT_NOT_FOUND = "PAYMENT_NOT_FOUND"
REASON_PROCESSOR_DECLINED = "PROCESSOR_DECLINED"
REASON_PROCESSOR_UNAVAILABLE = "PROCESSOR_UNAVAILABLE"
REASON_CONCURRENT_MODIFICATION = "CONCURRENT_MODIFICATION"

MAX_ID_LENGTH = 64

_T = TypeVar("_T")


def payment_not_found() -> NotFound:
    return NotFound("The payment does not exist.", reason=REASON_PAYMENT_NOT_FOUND)


def transaction_not_found() -> NotFound:
    return NotFound("The transaction does not exist.", reason=REASON_TRANSACTION_NOT_FOUND)


def processor_refused(operation: str, result: ConnectorResult) -> FailedPrecondition | Unavailable:
    if result.outcome is ProcessorOutcome.DECLINED:
        return FailedPrecondition(
            f"The processor declined the {operation}.",
            reason=REASON_PROCESSOR_DECLINED,
            metadata={"failure_reason": (result.failure_reason or "PROCESSOR_DECLINED")},
        )
    return Unavailable(
        f"The processor did not confirm the {operation}; retry with the same idempotency key.",
        reason=REASON_PROCESSOR_UNAVAILABLE,
    )


def id_problem(value: str) -> str | None:
    """What is wrong with an identifier a client or service sent, if anything."""
    if not value:
        return "is required"
    if len(value) > MAX_ID_LENGTH or not all("!" <= c <= "~" for c in value):
        return f"must be an identifier of at most {MAX_ID_LENGTH} visible ASCII characters"
    return None


class RequestFingerprints:
    """Keyed hashes of requests, stored with their idempotency keys (64 hex characters).
    Keyed because they cover card numbers: a plain hash of one could be brute-forced."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, operation: str, fields: dict[str, Any]) -> str:
        body = json.dumps(
            {"op": operation, "fields": fields},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        )
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()


async def locked(units: UnitsOfWork, step: Callable[[PaymentsUnit], Awaitable[_T]]) -> _T:
    """`step` on a LOCKED unit. Its rows are locked as it reads them, so a conditional
    write can only miss if a writer skipped the locks: reported as retryable."""
    try:
        return await step(units(Mode.LOCKED))
    except Conflict as conflict:
        raise Aborted(
            "The payment changed concurrently; retry.", reason=REASON_CONCURRENT_MODIFICATION
        ) from conflict
