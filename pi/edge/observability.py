"""The edge's part in observability: it decides which requests are traced, and it serves
its stats to Prometheus without exposing the admin interface.

- Tracing: Envoy's OpenTelemetry tracer (`envoy.tracers.opentelemetry`) starts the trace
  of `sample_percent` % of requests (`random_sampling`), exports its spans over OTLP/gRPC
  to the collector and sends `traceparent` upstream with the sampled flag set
  accordingly. The services only follow that flag (`ParentBased`): turning tracing up or
  down in production is this one number.
- Metrics: a listener of its own (`metrics_port`) whose only route is
  `GET /stats/prometheus`, proxied to the admin interface, which stays on loopback.
  Per-method numbers come from the services (Envoy's gRPC stats garble dotted service
  names); this is for the edge's own: downstream requests and codes, upstream health,
  overload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pi.edge._values import duration, socket_address, type_url

__all__ = [
    "COLLECTOR_CLUSTER",
    "Tracing",
    "collector_cluster",
    "metrics_clusters",
    "metrics_listener",
    "tracing_config",
]

COLLECTOR_CLUSTER = "otel_collector"
ADMIN_CLUSTER = "envoy_admin"
PROMETHEUS_PATH = "/stats/prometheus"

_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "envoy.extensions.filters.http.router.v3.Router"
_OTEL = "envoy.config.trace.v3.OpenTelemetryConfig"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True)
class Tracing:
    """Where the edge sends spans, and how many requests it traces."""

    collector_host: str
    collector_port: int = 4317
    sample_percent: float = 1.0
    service_name: str = "pi-edge"

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_percent <= 100.0:
            raise ValueError("sample_percent must be between 0 and 100")


def tracing_config(tracing: Tracing) -> dict[str, Any]:
    """The HTTP connection manager's `tracing`."""
    return {
        "random_sampling": {"value": tracing.sample_percent},
        "spawn_upstream_span": False,
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": type_url(_OTEL),
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER},
                    "timeout": "1s",
                },
                "service_name": tracing.service_name,
            },
        },
    }


def collector_cluster(tracing: Tracing, connect_timeout: float) -> dict[str, Any]:
    """The OTLP/gRPC collector (HTTP/2), found by DNS when it is a name."""
    host = tracing.collector_host
    is_ip = host.replace(".", "").isdigit() or ":" in host
    return {
        "name": COLLECTOR_CLUSTER,
        "type": "STATIC" if is_ip else "STRICT_DNS",
        "connect_timeout": duration(connect_timeout),
        "load_assignment": {
            "cluster_name": COLLECTOR_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": socket_address(host, tracing.collector_port)}}
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": type_url(_HTTP_OPTIONS),
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }


def metrics_listener(listen_host: str, port: int) -> dict[str, Any]:
    """A listener answering only GET /stats/prometheus (from the admin); 404 otherwise."""
    return {
        "name": "metrics",
        "address": socket_address(listen_host, port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": type_url(_HCM),
                            "stat_prefix": "metrics",
                            "codec_type": "AUTO",
                            "route_config": {
                                "name": "metrics",
                                "virtual_hosts": [
                                    {
                                        "name": "metrics",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {
                                                    "path": PROMETHEUS_PATH,
                                                    "headers": [
                                                        {
                                                            "name": ":method",
                                                            "string_match": {"exact": "GET"},
                                                        }
                                                    ],
                                                },
                                                "route": {"cluster": ADMIN_CLUSTER},
                                            }
                                        ],
                                    }
                                ],
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": type_url(_ROUTER)},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


def metrics_clusters(admin_host: str, admin_port: int) -> list[dict[str, Any]]:
    """The admin interface, as the metrics listener's only upstream."""
    return [
        {
            "name": ADMIN_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "0.25s",
            "load_assignment": {
                "cluster_name": ADMIN_CLUSTER,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {"endpoint": {"address": socket_address(admin_host, admin_port)}}
                        ]
                    }
                ],
            },
        }
    ]
