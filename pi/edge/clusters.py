"""One upstream cluster per public service: balancing, health checks, ejection, limits."""

from __future__ import annotations

import ipaddress
from typing import Any

from pi.edge._values import KIB, MIB, duration, socket_address, type_url
from pi.edge.config import EdgeConfig, Endpoint, UpstreamTls
from pi.platform.security.mesh import spiffe_id

_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_UPSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def service_cluster(
    name: str, endpoints: tuple[Endpoint, ...], config: EdgeConfig
) -> dict[str, Any]:
    hc = config.health_check
    uses_dns = any(not _is_ip_literal(e.host) for e in endpoints)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS" if uses_dns else "STATIC",
        "connect_timeout": duration(config.timeouts.upstream_connect),
        "lb_policy": "LEAST_REQUEST",
        "per_connection_buffer_limit_bytes": 32 * KIB,
        "upstream_connection_options": {
            "tcp_keepalive": {"keepalive_time": 60, "keepalive_interval": 10, "keepalive_probes": 3}
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": socket_address(e.host, e.port)}} for e in endpoints
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": type_url(_HTTP_OPTIONS),
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "initial_stream_window_size": 64 * KIB,
                        "initial_connection_window_size": 1 * MIB,
                        # No HTTP/2 keepalive PINGs: gRPC servers answer PINGs on idle
                        # connections with GOAWAY too_many_pings. Health checks and TCP
                        # keepalive find dead replicas instead.
                    }
                },
            }
        },
        "health_checks": [
            {
                "timeout": duration(hc.timeout),
                "interval": duration(hc.interval),
                "no_traffic_interval": duration(hc.interval),
                "unhealthy_interval": duration(hc.interval),
                "interval_jitter": "0.1s",
                "unhealthy_threshold": hc.unhealthy_threshold,
                "healthy_threshold": hc.healthy_threshold,
                "grpc_health_check": {"service_name": ""},
            }
        ],
        # Eject a replica for connection-level failures (refused, reset, timed out), not
        # for gRPC errors it returns: an UNAVAILABLE caused by a dependency being down
        # says nothing about this replica. Process health is the health check's job.
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 5,
            "enforcing_consecutive_local_origin_failure": 100,
            "enforcing_consecutive_5xx": 0,
            "enforcing_consecutive_gateway_failure": 0,
            "enforcing_success_rate": 0,
            "enforcing_local_origin_success_rate": 0,
            "interval": "5s",
            "base_ejection_time": "10s",
            "max_ejection_time": "60s",
            "max_ejection_percent": 50,
        },
        # The edge's load shedding: past these, a call is answered 503 (flag UO) with a
        # Retry-After rather than queued until its route timeout (see EdgeConfig).
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": config.max_upstream_requests,
                    "max_pending_requests": config.max_upstream_requests,
                    "max_requests": config.max_upstream_requests,
                    "retry_budget": {
                        "budget_percent": {"value": 20.0},
                        "min_retry_concurrency": 10,
                    },
                }
            ]
        },
    }
    if config.upstream_tls is not None:
        cluster["transport_socket"] = _mesh_tls(name, config.upstream_tls)
    if uses_dns:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
        cluster["dns_refresh_rate"] = "5s"
        cluster["respect_dns_ttl"] = True
    return cluster


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _mesh_tls(service: str, tls: UpstreamTls) -> dict[str, Any]:
    """Mutual TLS to `service` (health checks included): the edge's certificate, and the
    server must prove it is `service` (its SPIFFE ID), not merely someone the CA signed."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": type_url(_UPSTREAM_TLS),
            "sni": service,
            "common_tls_context": {
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_3",
                    "tls_maximum_protocol_version": "TLSv1_3",
                },
                # gRPC servers refuse a TLS connection that did not negotiate h2.
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": tls.cert_path},
                        "private_key": {"filename": tls.key_path},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": tls.ca_path},
                    "match_typed_subject_alt_names": [
                        {
                            "san_type": "URI",
                            "matcher": {"exact": spiffe_id(service)},
                        }
                    ],
                },
            },
        },
    }
