"""The idempotency key and fingerprint of a gRPC request (AIP-155), for servicers.

    key = key_from(request.request_id, context)    # request_id, or the Idempotency-Key header
    fp = fingerprint(request)                      # the request minus request_id

The key is claimed, and the fingerprint stored with it, by the service's storage
(`pi.platform.db.idempotency`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from google.protobuf.message import Message

from pi.platform.kernel.errors import InvalidArgument
from pi.platform.kernel.idempotency import MAX_KEY_LENGTH

__all__ = ["METADATA_KEY", "fingerprint", "key_from", "validate_key"]

METADATA_KEY = "idempotency-key"
"""The gRPC metadata Envoy forwards the HTTP `Idempotency-Key` header as."""


def fingerprint(request: Message, *, exclude: tuple[str, ...] = ("request_id",)) -> str:
    """sha256 hex of the request's deterministic serialization, `request_id` cleared.

    The message's full name is included so two RPCs never share a fingerprint.
    """
    fields = request.DESCRIPTOR.fields_by_name
    if any(name in fields for name in exclude):
        request = _copy(request)
        for name in exclude:
            if name in fields:
                request.ClearField(name)
    digest = hashlib.sha256(request.DESCRIPTOR.full_name.encode() + b"\x00")
    digest.update(request.SerializeToString(deterministic=True))
    return digest.hexdigest()


def validate_key(key: str, field: str = "request_id") -> str:
    """A key must be 1..255 visible ASCII characters (0x21-0x7E)."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all("!" <= c <= "~" for c in key):
        raise InvalidArgument.field(
            field,
            f"must be 1 to {MAX_KEY_LENGTH} visible ASCII characters (no spaces).",
        )
    return key


def key_from(request_id: str, context: Any = None) -> str | None:
    """The idempotency key of a call: `request_id`, or the `idempotency-key` header.

    Both given and different → `InvalidArgument`. Neither → None (not idempotent).
    `context` is a `grpc.aio.ServicerContext` (anything with `invocation_metadata()`).
    """
    header: str | None = None
    if context is not None:
        for name, value in context.invocation_metadata() or ():
            if name == METADATA_KEY and isinstance(value, str):
                header = value or None
                break
    if request_id and header is not None and header != request_id:
        raise InvalidArgument.field(
            "request_id", "differs from the Idempotency-Key header; send one or make them equal."
        )
    if request_id:
        return validate_key(request_id, "request_id")
    if header is not None:
        return validate_key(header, "idempotency_key")
    return None


def _copy(request: Message) -> Any:
    clone = type(request)()
    clone.CopyFrom(request)
    return clone
