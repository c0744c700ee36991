"""The database pool's numbers, read at scrape time (no work between scrapes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["PoolCollector", "register_pool"]

# psycopg_pool's stat → (metric, help, is a counter).
_GAUGES = {
    "pool_size": ("pi_db_pool_connections", "Connections the pool holds (in use or idle)."),
    "pool_available": ("pi_db_pool_idle_connections", "Idle connections in the pool."),
    "pool_max": ("pi_db_pool_max_connections", "The most connections the pool may hold."),
    "requests_waiting": (
        "pi_db_pool_waiters",
        "Units of work waiting for a connection right now.",
    ),
}
_COUNTERS = {
    "requests_num": ("pi_db_pool_requests", "Connections asked of the pool."),
    "requests_queued": ("pi_db_pool_requests_queued", "Requests that had to wait."),
    "requests_wait_ms": ("pi_db_pool_wait_milliseconds", "Time requests spent waiting."),
    "requests_errors": ("pi_db_pool_request_errors", "Requests that failed (timeout, ...)."),
}


class PoolCollector(Collector):
    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            stats = self._stats()
        except Exception:  # a closed pool: nothing to report
            return
        for key, (name, text) in _GAUGES.items():
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], float(stats.get(key, 0)))
            yield gauge
        for key, (name, text) in _COUNTERS.items():
            counter = CounterMetricFamily(name, text)
            counter.add_metric([], float(stats.get(key, 0)))
            yield counter


_registered: list[PoolCollector] = []


def register_pool(stats: Callable[[], Mapping[str, int]]) -> None:
    """Report the pool `stats()` describes (one per process; a later one replaces it)."""
    for old in _registered:
        REGISTRY.unregister(old)
    _registered.clear()
    collector = PoolCollector(stats)
    REGISTRY.register(collector)
    _registered.append(collector)
