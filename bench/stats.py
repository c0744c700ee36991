"""Latency summaries: exact percentiles (nearest rank) over recorded samples."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

PERCENTILES = (50, 95, 99)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize_us(samples_us: Iterable[float]) -> dict[str, Any]:
    """count, mean, p50/p95/p99/max in milliseconds from microsecond samples."""
    values = sorted(samples_us)
    if not values:
        return {
            "count": 0,
            "mean_ms": None,
            "p50_ms": None,
            "p95_ms": None,
            "p99_ms": None,
            "max_ms": None,
        }
    out: dict[str, Any] = {
        "count": len(values),
        "mean_ms": round(sum(values) / len(values) / 1000, 3),
    }
    for pct in PERCENTILES:
        out[f"p{pct}_ms"] = round(percentile(values, pct) / 1000, 3)
    out["max_ms"] = round(values[-1] / 1000, 3)
    return out


def merge_counts(*counts: dict[str, int]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for c in counts:
        for key, value in c.items():
            merged[key] = merged.get(key, 0) + int(value)
    return dict(sorted(merged.items()))
