"""List pagination shared by every service: page sizes (AIP-158) and signed page tokens.

A service builds its `PageToken` once, from a key derived for page tokens
(`PageToken(master_keys.derive_key("page-token"))`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from pi.platform.kernel.errors import InvalidArgument

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "PageToken", "page_size"]

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_PAGE_TOKEN_LENGTH = 2048


def page_size(
    value: int,
    *,
    default: int = DEFAULT_PAGE_SIZE,
    maximum: int = MAX_PAGE_SIZE,
    field: str = "page_size",
) -> int:
    """0 → `default`; above `maximum` → `maximum` (AIP-158); negative → InvalidArgument."""
    if value < 0:
        raise InvalidArgument.field(field, "must not be negative.")
    if value == 0:
        return default
    return min(value, maximum)


class PageToken:
    """Opaque, HMAC-signed page tokens that are bound to the request's filters.

    `encode(position, filters)` → base64url(JSON) "." base64url(HMAC). `decode` rejects
    forged or corrupted tokens and tokens issued for different `filters` (list
    parameters such as status or the caller's merchant id) with InvalidArgument on
    `page_token`, so a cursor never silently applies to another query.
    """

    def __init__(self, key: bytes, *, field: str = "page_token") -> None:
        if len(key) < 32:
            raise ValueError("page token key must be at least 32 bytes")
        self._key = key
        self._field = field

    def encode(self, position: Mapping[str, Any], filters: Mapping[str, Any] | None = None) -> str:
        body = _canonical({"p": dict(position), "f": _filter_fingerprint(filters)})
        mac = hmac.new(self._key, body, hashlib.sha256).digest()[:16]
        return f"{_b64(body)}.{_b64(mac)}"

    def decode(self, token: str, filters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The position given to `encode`; InvalidArgument if forged or filters differ."""
        if len(token) > MAX_PAGE_TOKEN_LENGTH:
            raise self._invalid("is not a valid page token.")
        body_text, sep, mac_text = token.partition(".")
        try:
            body = _unb64(body_text)
            mac = _unb64(mac_text)
        except (binascii.Error, ValueError):
            raise self._invalid("is not a valid page token.") from None
        expected = hmac.new(self._key, body, hashlib.sha256).digest()[:16]
        if not sep or not hmac.compare_digest(mac, expected):
            raise self._invalid("is not a valid page token.")
        data = json.loads(body)
        if data.get("f") != _filter_fingerprint(filters):
            raise self._invalid(
                "was issued for a request with different parameters; "
                "repeat the other list parameters unchanged or start over without it."
            )
        position = data.get("p")
        if not isinstance(position, dict):
            raise self._invalid("is not a valid page token.")
        return position

    def _invalid(self, description: str) -> InvalidArgument:
        return InvalidArgument.field(self._field, description)


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _filter_fingerprint(filters: Mapping[str, Any] | None) -> str:
    return hashlib.sha256(_canonical(dict(filters or {}))).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or not all(c.isalnum() or c in "-_" for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
