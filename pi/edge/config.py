"""The Envoy bootstrap for the Pi Platform edge, generated from one small dataclass.

`render_bootstrap(EdgeConfig(...))` is a pure function: the same `EdgeConfig` always
gives the same dict, and every deployment (local `make run`, tests, Kubernetes) renders
its config from here, so there is no hand-kept copy that can drift. The choices below are
documented in `envoy/README.md`; the short version:

- Two listeners share one HTTP connection manager: cleartext HTTP/1.1 + h2c (JSON and
  native gRPC) and, when a certificate is given, TLS 1.3 only with ALPN h2,http/1.1.
- `grpc_json_transcoder` maps the public services' `google.api.http` rules to gRPC. Only
  the public services are transcoded and only their gRPC paths are routed, so the
  internal services (AuthInternalService, TransactionLedgerService, PaymentLedgerService)
  are unreachable through the edge: 404 over HTTP/JSON, UNIMPLEMENTED over gRPC.
- Reads (Get*/List* RPCs) are retried on UNAVAILABLE, resets and connect failures; mutating
  calls only where the request provably never reached a service.
- Local replies (unknown route, rate limited, malformed JSON, ...) to HTTP/JSON clients are
  rendered as a JSON `google.rpc.Status`, the same shape the transcoder gives service
  errors.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PUBLIC_GRPC_SERVICES: Mapping[str, str] = {
    "auth": "pi.auth.v1.AuthService",
    "transactions": "pi.transactions.v1.TransactionService",
    "payments": "pi.payments.v1.PaymentService",
}
"""The gRPC service each platform service exposes through the edge, by service name."""

INTERNAL_GRPC_SERVICES: tuple[str, ...] = (
    "pi.auth.v1.AuthInternalService",
    "pi.transactions.v1.TransactionLedgerService",
    "pi.payments.v1.PaymentLedgerService",
)
"""Service-to-service APIs that the edge must never route."""

DEFAULT_GRPC_PORTS: Mapping[str, int] = {"auth": 50051, "transactions": 50052, "payments": 50053}
REPLICA_PORT_STEP = 100
"""Replica i of a service listens on its default port + i * REPLICA_PORT_STEP."""

ADMIN_HOST = "127.0.0.1"
"""The admin interface can reconfigure and stop Envoy: it is never bound beyond loopback."""

# RPC name prefixes that only read (AIP-131/132): safe to retry after a partial failure.
_READ_METHOD_PREFIXES = ("Get", "List")

# Envoy API types used in the bootstrap (for the "@type" of typed configs).
_TLS = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_HEALTH_CHECK = "envoy.extensions.filters.http.health_check.v3.HealthCheck"
_LOCAL_RATE_LIMIT = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
_BUFFER = "envoy.extensions.filters.http.buffer.v3.Buffer"
_TRANSCODER = "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
_ROUTER = "envoy.extensions.filters.http.router.v3.Router"
_FILTER_CONFIG = "envoy.config.route.v3.FilterConfig"
_PREVIOUS_HOSTS = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
_STDOUT_LOG = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_CONNECTIONS = (
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
_FIXED_HEAP = "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"

_KIB = 1024
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Endpoint:
    """One upstream replica: an IP address or a DNS name (e.g. a headless k8s Service)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RateLimit:
    """The edge-wide token bucket, a coarse backstop in front of per-merchant limits."""

    requests_per_second: int = 5000
    burst: int = 5000


@dataclass(frozen=True)
class Timeouts:
    """Seconds. Downstream limits protect Envoy; route limits bound a call's latency."""

    request_headers: float = 10.0
    request: float = 30.0
    stream_idle: float = 60.0
    connection_idle: float = 600.0
    read_route: float = 10.0
    read_per_try: float = 4.0
    write_route: float = 30.0
    upstream_connect: float = 1.0
    drain: float = 5.0


@dataclass(frozen=True)
class HealthCheck:
    """Active gRPC health checking (grpc.health.v1, service name "") of every replica."""

    interval: float = 5.0
    # Generous: a Python service at full CPU answers late, and ejecting it for that only
    # moves its load onto the others.
    timeout: float = 2.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 1


@dataclass(frozen=True)
class EdgeConfig:
    """Everything that differs between deployments of the edge; the rest is policy."""

    descriptor_path: str
    upstreams: Mapping[str, tuple[Endpoint, ...]]
    listen_host: str = "127.0.0.1"
    http_port: int = 8080
    https_port: int = 8443
    admin_port: int = 9901
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    openapi_path: str | None = None
    rate_limit: RateLimit = field(default_factory=RateLimit)
    timeouts: Timeouts = field(default_factory=Timeouts)
    health_check: HealthCheck = field(default_factory=HealthCheck)
    max_downstream_connections: int = 50_000
    max_request_body_bytes: int = 1 * _MIB
    max_response_body_bytes: int = 4 * _MIB
    max_request_headers_kib: int = 32
    max_upstream_requests: int = 10_000
    max_heap_bytes: int = 1024 * _MIB
    xff_num_trusted_hops: int = 0
    access_log: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.upstreams) - set(PUBLIC_GRPC_SERVICES)
        missing = set(PUBLIC_GRPC_SERVICES) - set(self.upstreams)
        if unknown or missing:
            raise ValueError(
                f"upstreams must name exactly {sorted(PUBLIC_GRPC_SERVICES)}; "
                f"unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        empty = [name for name, endpoints in self.upstreams.items() if not endpoints]
        if empty:
            raise ValueError(f"services without endpoints: {sorted(empty)}")
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("tls_cert_path and tls_key_path are given together or not at all")
        if self.rate_limit.requests_per_second < 1 or self.rate_limit.burst < 1:
            raise ValueError("rate limit numbers must be positive")

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_path is not None


def local_upstreams(replicas: int = 1, host: str = "127.0.0.1") -> dict[str, tuple[Endpoint, ...]]:
    """Endpoints of `make run`: replica i of a service on its default port + 100 * i."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    return {
        name: tuple(Endpoint(host, port + REPLICA_PORT_STEP * i) for i in range(replicas))
        for name, port in DEFAULT_GRPC_PORTS.items()
    }


def render_bootstrap(config: EdgeConfig) -> dict[str, Any]:
    """The Envoy v3 bootstrap for `config`, as plain JSON-serialisable data."""
    listeners = [_listener("http", config, config.http_port, tls=False)]
    if config.tls_enabled:
        listeners.append(_listener("https", config, config.https_port, tls=True))
    return {
        "node": {"id": "pi-edge", "cluster": "pi-edge"},
        "admin": {
            "address": _socket_address(ADMIN_HOST, config.admin_port),
        },
        "static_resources": {
            "listeners": listeners,
            "clusters": [
                _cluster(name, config.upstreams[name], config) for name in PUBLIC_GRPC_SERVICES
            ],
        },
        "overload_manager": _overload_manager(config),
        "layered_runtime": {
            "layers": [{"name": "static", "static_layer": {}}],
        },
    }


# --- listeners and the HTTP connection manager -------------------------------------------


def _listener(name: str, config: EdgeConfig, port: int, *, tls: bool) -> dict[str, Any]:
    chain: dict[str, Any] = {
        "filters": [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": _http_connection_manager(name, config),
            }
        ]
    }
    if tls:
        chain["transport_socket"] = _downstream_tls(config)
    return {
        "name": name,
        "address": _socket_address(config.listen_host, port),
        "per_connection_buffer_limit_bytes": 32 * _KIB,
        "filter_chains": [chain],
    }


def _downstream_tls(config: EdgeConfig) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _type_url(_TLS),
            "common_tls_context": {
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_3",
                    "tls_maximum_protocol_version": "TLSv1_3",
                },
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": config.tls_cert_path},
                        "private_key": {"filename": config.tls_key_path},
                    }
                ],
            },
        },
    }


def _http_connection_manager(name: str, config: EdgeConfig) -> dict[str, Any]:
    t = config.timeouts
    hcm: dict[str, Any] = {
        "@type": _type_url(_HCM),
        "stat_prefix": name,
        "codec_type": "AUTO",
        "server_name": "pi-edge",
        "use_remote_address": True,
        "xff_num_trusted_hops": config.xff_num_trusted_hops,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "always_set_request_id_in_response": True,
        "request_headers_timeout": _duration(t.request_headers),
        "request_timeout": _duration(t.request),
        "stream_idle_timeout": _duration(t.stream_idle),
        "drain_timeout": _duration(t.drain),
        "max_request_headers_kb": config.max_request_headers_kib,
        "common_http_protocol_options": {
            "idle_timeout": _duration(t.connection_idle),
            "headers_with_underscores_action": "REJECT_REQUEST",
            "max_headers_count": 100,
        },
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 64 * _KIB,
            "initial_connection_window_size": 1 * _MIB,
        },
        "route_config": _route_config(config),
        "http_filters": _http_filters(config),
        "local_reply_config": _local_reply_config(),
    }
    if config.access_log:
        hcm["access_log"] = [_access_log()]
    return hcm


def _http_filters(config: EdgeConfig) -> list[dict[str, Any]]:
    rate = config.rate_limit
    return [
        {
            # Answers GET /healthz itself (200, or 503 while draining) for load balancer
            # and k8s probes; never reaches a service, never rate limited.
            "name": "envoy.filters.http.health_check",
            "typed_config": {
                "@type": _type_url(_HEALTH_CHECK),
                "pass_through_mode": False,
                "headers": [{"name": ":path", "string_match": {"exact": "/healthz"}}],
            },
        },
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": _type_url(_LOCAL_RATE_LIMIT),
                "stat_prefix": "edge_rate_limit",
                "token_bucket": {
                    "max_tokens": rate.burst,
                    "tokens_per_fill": rate.requests_per_second,
                    "fill_interval": "1s",
                },
                "filter_enabled": _percent_runtime("edge_rate_limit.enabled"),
                "filter_enforced": _percent_runtime("edge_rate_limit.enforced"),
                "rate_limited_as_resource_exhausted": True,
                "response_headers_to_add": [
                    {
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        "header": {"key": "retry-after", "value": "1"},
                    }
                ],
            },
        },
        {
            # The whole request is read before it goes upstream: 413 above the limit, for
            # JSON and native gRPC alike (the transcoder streams and would not enforce it).
            "name": "envoy.filters.http.buffer",
            "typed_config": {
                "@type": _type_url(_BUFFER),
                "max_request_bytes": config.max_request_body_bytes,
            },
        },
        {
            "name": "envoy.filters.http.grpc_json_transcoder",
            "typed_config": _transcoder(config),
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": _type_url(_ROUTER),
                "suppress_envoy_headers": True,
            },
        },
    ]


def _transcoder(config: EdgeConfig) -> dict[str, Any]:
    return {
        "@type": _type_url(_TRANSCODER),
        "proto_descriptor": config.descriptor_path,
        "services": list(PUBLIC_GRPC_SERVICES.values()),
        "print_options": {
            "add_whitespace": False,
            # Zero amounts, false flags and empty strings are printed, so a merchant
            # never has to guess whether a field is 0 or missing.
            "always_print_primitive_fields": True,
            # Enums as their names ("TRANSACTION_STATUS_COMPLETED"), as in the OpenAPI.
            "always_print_enums_as_ints": False,
            # lowerCamelCase JSON names (proto3 JSON mapping), as in the OpenAPI.
            "preserve_proto_field_names": False,
        },
        "convert_grpc_status": True,
        "auto_mapping": False,
        "match_incoming_request_route": False,
        "request_validation_options": {
            "reject_unknown_method": True,
            "reject_unknown_query_parameters": True,
            "reject_binding_body_field_collisions": True,
        },
        "max_request_body_size": config.max_request_body_bytes,
        "max_response_body_size": config.max_response_body_bytes,
    }


# --- routes ------------------------------------------------------------------------------


def _route_config(config: EdgeConfig) -> dict[str, Any]:
    routes: list[dict[str, Any]] = []
    if config.openapi_path is not None:
        routes.append(_openapi_route(config.openapi_path))
    for name, grpc_service in PUBLIC_GRPC_SERVICES.items():
        for prefix in _READ_METHOD_PREFIXES:
            routes.append(_grpc_route(f"/{grpc_service}/{prefix}", name, config, read=True))
        routes.append(_grpc_route(f"/{grpc_service}/", name, config, read=False))
    return {
        "name": "pi",
        # The OpenAPI document is served from a file; Envoy's default cap is 4 KiB.
        "max_direct_response_body_size_bytes": 4 * _MIB,
        "virtual_hosts": [
            {
                "name": "pi",
                "domains": ["*"],
                "routes": routes,
                "response_headers_to_add": [
                    {
                        "append_action": "ADD_IF_ABSENT",
                        "header": {"key": "cache-control", "value": "no-store"},
                    },
                    {
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        "header": {"key": "x-content-type-options", "value": "nosniff"},
                    },
                ],
            }
        ],
    }


def _openapi_route(openapi_path: str) -> dict[str, Any]:
    return {
        "name": "openapi",
        "match": {"path": "/openapi.json", "headers": [_method_is("GET")]},
        "direct_response": {"status": 200, "body": {"filename": openapi_path}},
        "response_headers_to_add": [
            {
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                "header": {"key": "content-type", "value": "application/json"},
            },
            {
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                "header": {"key": "cache-control", "value": "no-cache"},
            },
        ],
        # Not a gRPC method, so the transcoder (which rejects unknown methods) stays out.
        "typed_per_filter_config": {
            "envoy.filters.http.grpc_json_transcoder": {
                "@type": _type_url(_FILTER_CONFIG),
                "disabled": True,
            }
        },
    }


def _grpc_route(prefix: str, cluster: str, config: EdgeConfig, *, read: bool) -> dict[str, Any]:
    t = config.timeouts
    timeout = t.read_route if read else t.write_route
    retry: dict[str, Any] = {
        # Reads may be retried whatever happened. A mutating call is retried only when it
        # provably never reached a service (no connection, stream refused or reset before
        # the request was sent): a client without an idempotency key must never be
        # charged twice because of the edge.
        "retry_on": (
            "unavailable,reset,connect-failure,refused-stream"
            if read
            else "connect-failure,refused-stream,reset-before-request"
        ),
        "num_retries": 2,
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": _type_url(_PREVIOUS_HOSTS)},
            }
        ],
        "host_selection_retry_max_attempts": 5,
    }
    if read:
        retry["per_try_timeout"] = _duration(t.read_per_try)
    return {
        "name": f"{cluster}-{'read' if read else 'call'}:{prefix}",
        "match": {"prefix": prefix, "grpc": {}},
        "route": {
            "cluster": cluster,
            "timeout": _duration(timeout),
            # A gRPC client's own deadline (grpc-timeout) is honoured up to the route's.
            "max_stream_duration": {"grpc_timeout_header_max": _duration(timeout)},
            "retry_policy": retry,
        },
    }


def _method_is(method: str) -> dict[str, Any]:
    return {"name": ":method", "string_match": {"exact": method}}


# --- local replies and access log --------------------------------------------------------

# HTTP status of a local reply -> google.rpc.Code, for the JSON body HTTP clients get.
_LOCAL_REPLY_CODES: tuple[tuple[int, int], ...] = (
    (400, 3),  # INVALID_ARGUMENT: malformed JSON, unknown query parameter, bad path
    (401, 16),  # UNAUTHENTICATED
    (403, 7),  # PERMISSION_DENIED
    (404, 5),  # NOT_FOUND: no such route
    (408, 4),  # DEADLINE_EXCEEDED: request not received in time
    (413, 3),  # INVALID_ARGUMENT: body too large
    (429, 8),  # RESOURCE_EXHAUSTED: rate limited
    (431, 3),  # INVALID_ARGUMENT: headers too large
    (503, 14),  # UNAVAILABLE
    (504, 4),  # DEADLINE_EXCEEDED
)

_LOCAL_REPLY_MESSAGES: Mapping[int, str] = {
    429: "Too many requests: retry after the number of seconds in Retry-After.",
}


def _local_reply_config() -> dict[str, Any]:
    """JSON `google.rpc.Status` bodies for Envoy's own error replies to HTTP clients.

    Native gRPC requests are excluded: Envoy answers them with grpc-status and
    grpc-message, which a JSON body would garble.
    """
    mappers = [
        _status_mapper(
            {
                "status_code_filter": {
                    "comparison": {
                        "op": "EQ",
                        "value": _runtime_uint(f"pi.local_reply.{http}", http),
                    }
                }
            },
            grpc_code,
            message=_LOCAL_REPLY_MESSAGES.get(http),
        )
        for http, grpc_code in _LOCAL_REPLY_CODES
    ]
    mappers.append(
        _status_mapper(
            {
                "status_code_filter": {
                    "comparison": {"op": "GE", "value": _runtime_uint("pi.local_reply.other", 400)}
                }
            },
            2,  # UNKNOWN
        )
    )
    return {"mappers": mappers}


def _status_mapper(
    status_filter: dict[str, Any], grpc_code: int, message: str | None = None
) -> dict[str, Any]:
    mapper: dict[str, Any] = {
        "filter": {"and_filter": {"filters": [status_filter, _not_native_grpc()]}},
        "body_format_override": {
            "json_format": {"code": grpc_code, "message": "%LOCAL_REPLY_BODY%", "details": []},
            "content_type": "application/json",
        },
    }
    if message is not None:
        mapper["body"] = {"inline_string": message}
    return mapper


def _not_native_grpc() -> dict[str, Any]:
    """Matches requests from HTTP/JSON clients, transcoded or not.

    The transcoder rewrites content-type to application/grpc and records the client's
    method in x-envoy-original-method, so "not gRPC, or transcoded" is the HTTP client.
    """
    return {
        "or_filter": {
            "filters": [
                {
                    "header_filter": {
                        "header": {
                            "name": "content-type",
                            "string_match": {"prefix": "application/grpc"},
                            "invert_match": True,
                            "treat_missing_header_as_empty": True,
                        }
                    }
                },
                {
                    "header_filter": {
                        "header": {"name": "x-envoy-original-method", "present_match": True}
                    }
                },
            ]
        }
    }


def _access_log() -> dict[str, Any]:
    # Deliberately no Authorization, cookies or request bodies.
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": _type_url(_STDOUT_LOG),
            "log_format": {
                "json_format": {
                    "time": "%START_TIME%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                    "protocol": "%PROTOCOL%",
                    "method": "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%",
                    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "rpc": "%REQ(:PATH)%",
                    "status": "%RESPONSE_CODE%",
                    # Exact for native gRPC; for HTTP/JSON calls `status` is the truth and
                    # this is derived from it.
                    "grpc_status": "%GRPC_STATUS(NUMBER)%",
                    "flags": "%RESPONSE_FLAGS%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "bytes_in": "%BYTES_RECEIVED%",
                    "bytes_out": "%BYTES_SENT%",
                    "duration_ms": "%DURATION%",
                    "upstream": "%UPSTREAM_HOST%",
                    "user_agent": "%REQ(USER-AGENT)%",
                }
            },
        },
    }


# --- clusters ----------------------------------------------------------------------------


def _cluster(name: str, endpoints: tuple[Endpoint, ...], config: EdgeConfig) -> dict[str, Any]:
    hc = config.health_check
    uses_dns = any(not _is_ip_literal(e.host) for e in endpoints)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS" if uses_dns else "STATIC",
        "connect_timeout": _duration(config.timeouts.upstream_connect),
        "lb_policy": "LEAST_REQUEST",
        "per_connection_buffer_limit_bytes": 32 * _KIB,
        "upstream_connection_options": {
            "tcp_keepalive": {"keepalive_time": 60, "keepalive_interval": 10, "keepalive_probes": 3}
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket_address(e.host, e.port)}}
                        for e in endpoints
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": _type_url(_HTTP_OPTIONS),
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "initial_stream_window_size": 64 * _KIB,
                        "initial_connection_window_size": 1 * _MIB,
                        # No HTTP/2 keepalive PINGs: gRPC servers answer PINGs on idle
                        # connections with GOAWAY too_many_pings. Health checks and TCP
                        # keepalive find dead replicas instead.
                    }
                },
            }
        },
        "health_checks": [
            {
                "timeout": _duration(hc.timeout),
                "interval": _duration(hc.interval),
                "no_traffic_interval": _duration(hc.interval),
                "unhealthy_interval": _duration(hc.interval),
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
    if uses_dns:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
        cluster["dns_refresh_rate"] = "5s"
        cluster["respect_dns_ttl"] = True
    return cluster


# --- overload manager --------------------------------------------------------------------


def _overload_manager(config: EdgeConfig) -> dict[str, Any]:
    heap = "envoy.resource_monitors.fixed_heap"
    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": _type_url(_CONNECTIONS),
                    "max_active_downstream_connections": config.max_downstream_connections,
                },
            },
            {
                "name": heap,
                "typed_config": {
                    "@type": _type_url(_FIXED_HEAP),
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


# --- small helpers -----------------------------------------------------------------------


def _type_url(type_name: str) -> str:
    return f"type.googleapis.com/{type_name}"


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _percent_runtime(key: str) -> dict[str, Any]:
    return {"runtime_key": key, "default_value": {"numerator": 100, "denominator": "HUNDRED"}}


def _runtime_uint(key: str, value: int) -> dict[str, Any]:
    return {"runtime_key": key, "default_value": value}


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
