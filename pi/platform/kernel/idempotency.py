"""The idempotency rule (AIP-155) every store follows, whatever keeps the keys.

Same key and same request: the first response. Same key, different request:
`AlreadyExists(IDEMPOTENCY_KEY_REUSED)`. A key claimed whose response is not stored yet
(the first request is still running): `Aborted(IDEMPOTENCY_KEY_IN_USE)`, which the
client may retry. Keys are kept at least `RETENTION`.

Standard library only: the PostgreSQL keys (`pi.platform.db.idempotency`) and the
services' in-memory units of work apply the same rule with the same errors.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from pi.platform.kernel.errors import Aborted, AlreadyExists

__all__ = [
    "MAX_KEY_LENGTH",
    "REASON_KEY_IN_USE",
    "REASON_KEY_REUSED",
    "RETENTION",
    "check_same_request",
    "in_progress",
    "observe",
    "replayed",
]

RETENTION = timedelta(hours=24)
MAX_KEY_LENGTH = 255
REASON_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
REASON_KEY_IN_USE = "IDEMPOTENCY_KEY_IN_USE"

# Told "replayed", "conflict" or "in_progress" each time a key was seen before: how
# metrics count replays without every store reporting them (see `observe`).
_observers: list[Callable[[str], None]] = []


def observe(observer: Callable[[str], None]) -> None:
    """Call `observer` with "replayed", "conflict" or "in_progress" whenever a request
    comes with a key seen before (observability's counters; never raise from it)."""
    if observer not in _observers:
        _observers.append(observer)


def _seen(result: str) -> None:
    for observer in _observers:
        observer(result)


def check_same_request(stored_fingerprint: str | None, fingerprint: str, key: str | None) -> None:
    """Raise `AlreadyExists(IDEMPOTENCY_KEY_REUSED)` unless the key was stored for this
    request (`fingerprint`)."""
    if stored_fingerprint != fingerprint:
        _seen("conflict")
        raise AlreadyExists(
            "This idempotency key was already used with a different request.",
            reason=REASON_KEY_REUSED,
            metadata={"idempotency_key": key or ""},
        )


def in_progress() -> Aborted:
    """The error for a key whose first request has not stored its response yet."""
    _seen("in_progress")
    return Aborted(
        "A request with this idempotency key is in progress; retry.", reason=REASON_KEY_IN_USE
    )


def replayed(
    stored_fingerprint: str | None, response: bytes | None, fingerprint: str, key: str | None
) -> bytes:
    """The stored `response` to replay for the request `fingerprint` under `key`, or the
    error the key calls for."""
    check_same_request(stored_fingerprint, fingerprint, key)
    if response is None:
        raise in_progress()
    _seen("replayed")
    return response
