"""The overload manager: Envoy protects itself before the machine runs out of memory."""

from __future__ import annotations

from typing import Any

from pi.edge._values import type_url
from pi.edge.config import EdgeConfig

_CONNECTIONS = (
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
_FIXED_HEAP = "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"


def overload_manager(config: EdgeConfig) -> dict[str, Any]:
    heap = "envoy.resource_monitors.fixed_heap"
    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": type_url(_CONNECTIONS),
                    "max_active_downstream_connections": config.max_downstream_connections,
                },
            },
            {
                "name": heap,
                "typed_config": {
                    "@type": type_url(_FIXED_HEAP),
                    "max_heap_size_bytes": config.max_heap_bytes,
                },
            },
        ],
        "actions": [
            {
                "name": "envoy.overload_actions.shrink_heap",
                "triggers": [{"name": heap, "threshold": {"value": 0.95}}],
            },
            {
                "name": "envoy.overload_actions.stop_accepting_requests",
                "triggers": [{"name": heap, "threshold": {"value": 0.98}}],
            },
        ],
    }
