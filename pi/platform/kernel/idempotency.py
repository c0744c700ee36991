"""The idempotency rule (AIP-155) every store follows, whatever keeps the keys.

Same key and same request: the first response. Same key, different request:
`AlreadyExists(IDEMPOTENCY_KEY_REUSED)`. A key claimed whose response is not stored yet
(the first request is still running): `Aborted(IDEMPOTENCY_KEY_IN_USE)`, which the
client may retry. Keys are kept at least `RETENTION`.

Standard library only: the PostgreSQL keys (`pi.platform.db.idempotency`) and the
services' in-memory units of work apply the same rule with the same errors.
"""

from __future__ import annotations

from datetime import timedelta

from pi.platform.kernel.errors import Aborted, AlreadyExists

__all__ = [
    "MAX_KEY_LENGTH",
    "REASON_KEY_IN_USE",
    "REASON_KEY_REUSED",
    "RETENTION",
    "check_same_request",
    "in_progress",
    "replayed",
]

RETENTION = timedelta(hours=24)
MAX_KEY_LENGTH = 255
REASON_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
REASON_KEY_IN_USE = "IDEMPOTENCY_KEY_IN_USE"


def check_same_request(stored_fingerprint: str | None, fingerprint: str, key: str | None) -> None:
    """Raise `AlreadyExists(IDEMPOTENCY_KEY_REUSED)` unless the key was stored for this
    request (`fingerprint`)."""
    if stored_fingerprint != fingerprint:
        raise AlreadyExists(
            "This idempotency key was already used with a different request.",
            reason=REASON_KEY_REUSED,
            metadata={"idempotency_key": key or ""},
        )


def in_progress() -> Aborted:
    """The error for a key whose first request has not stored its response yet."""
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
    return response
