"""Small Envoy v3 API values that several parts of the bootstrap spell the same way."""

from __future__ import annotations

from typing import Any

KIB = 1024
MIB = 1024 * 1024


def type_url(type_name: str) -> str:
    return f"type.googleapis.com/{type_name}"


def socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def duration(seconds: float) -> str:
    return f"{seconds:g}s"
