"""Time-ordered identifiers: `<prefix>_<26 Crockford base32 chars>` (ULID layout).

Time-ordered so that B-tree indexes stay hot as tables grow (inserts land at the end),
and so that ids sort by creation time for cursor pagination.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    """A new identifier whose first 10 characters encode the creation time in ms."""
    millis = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    randomness = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_encode(millis, 10)}{_encode(randomness, 16)}"


def is_valid_id(value: str, prefix: str) -> bool:
    """Whether `value` has the shape of an id with this prefix (cheap input check)."""
    head, sep, body = value.partition("_")
    return sep == "_" and head == prefix and len(body) == 26 and all(c in _ALPHABET for c in body)
