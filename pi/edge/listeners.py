"""A listener and its HTTP connection manager: protocol limits, filters, access log.

Both listeners (cleartext HTTP/1.1 + h2c, and TLS when a certificate is given) share one
connection manager, so JSON and native gRPC clients meet the same policy on either.
"""

from __future__ import annotations

from typing import Any

from pi.edge._values import KIB, MIB, duration, socket_address, type_url
from pi.edge.config import PUBLIC_GRPC_SERVICES, EdgeConfig
from pi.edge.header_names import header_names_filter
from pi.edge.local_replies import local_reply_config
from pi.edge.observability import tracing_config
from pi.edge.plaintext import HSTS
from pi.edge.routes import route_config
from pi.edge.static import compressor_filter

_TLS = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_HEALTH_CHECK = "envoy.extensions.filters.http.health_check.v3.HealthCheck"
_LOCAL_RATE_LIMIT = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
_BUFFER = "envoy.extensions.filters.http.buffer.v3.Buffer"
_TRANSCODER = "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
_ROUTER = "envoy.extensions.filters.http.router.v3.Router"
_STDOUT_LOG = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_REQ_WITHOUT_QUERY = "envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"


def listener(name: str, config: EdgeConfig, port: int, *, tls: bool) -> dict[str, Any]:
    chain: dict[str, Any] = {
        "filters": [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": _http_connection_manager(name, config, tls=tls),
            }
        ]
    }
    if tls:
        chain["transport_socket"] = _downstream_tls(config)
    return {
        "name": name,
        "address": socket_address(config.listen_host, port),
        "per_connection_buffer_limit_bytes": 32 * KIB,
        "filter_chains": [chain],
    }


def _downstream_tls(config: EdgeConfig) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": type_url(_TLS),
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


def _with_hsts(routes: dict[str, Any]) -> dict[str, Any]:
    hsts = {
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        "header": {"key": "strict-transport-security", "value": HSTS},
    }
    return {**routes, "response_headers_to_add": [*routes.get("response_headers_to_add", []), hsts]}


def _http_connection_manager(name: str, config: EdgeConfig, *, tls: bool) -> dict[str, Any]:
    t = config.timeouts
    hcm: dict[str, Any] = {
        "@type": type_url(_HCM),
        "stat_prefix": name,
        "codec_type": "AUTO",
        "server_name": "pi-edge",
        "use_remote_address": True,
        "xff_num_trusted_hops": config.xff_num_trusted_hops,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "always_set_request_id_in_response": True,
        "request_headers_timeout": duration(t.request_headers),
        "request_timeout": duration(t.request),
        "stream_idle_timeout": duration(t.stream_idle),
        "drain_timeout": duration(t.drain),
        "max_request_headers_kb": config.max_request_headers_kib,
        "common_http_protocol_options": {
            "idle_timeout": duration(t.connection_idle),
            "headers_with_underscores_action": "REJECT_REQUEST",
            "max_headers_count": 100,
        },
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 64 * KIB,
            "initial_connection_window_size": 1 * MIB,
        },
        "route_config": _with_hsts(route_config(config))
        if tls and config.hsts
        else (route_config(config)),
        "http_filters": _http_filters(config),
        "local_reply_config": local_reply_config(),
    }
    if config.access_log:
        hcm["access_log"] = [_access_log()]
    if config.tracing is not None:
        hcm["tracing"] = tracing_config(config.tracing)
    return hcm


def _http_filters(config: EdgeConfig) -> list[dict[str, Any]]:
    rate = config.rate_limit
    return [
        {
            # Answers GET /healthz itself (200, or 503 while draining) for load balancer
            # and k8s probes; never reaches a service, never rate limited.
            "name": "envoy.filters.http.health_check",
            "typed_config": {
                "@type": type_url(_HEALTH_CHECK),
                "pass_through_mode": False,
                "headers": [{"name": ":path", "string_match": {"exact": "/healthz"}}],
            },
        },
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": type_url(_LOCAL_RATE_LIMIT),
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
                "@type": type_url(_BUFFER),
                "max_request_bytes": config.max_request_body_bytes,
            },
        },
        header_names_filter(),
        *([compressor_filter()] if config.web is not None else []),
        {
            "name": "envoy.filters.http.grpc_json_transcoder",
            "typed_config": _transcoder(config),
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": type_url(_ROUTER),
                "suppress_envoy_headers": True,
            },
        },
    ]


def _transcoder(config: EdgeConfig) -> dict[str, Any]:
    return {
        "@type": type_url(_TRANSCODER),
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


def _access_log() -> dict[str, Any]:
    # Deliberately no Authorization, cookies, request bodies or query strings (they may
    # carry ids, page tokens or whatever a client puts there): paths are logged without
    # the query by the req_without_query formatter.
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": type_url(_STDOUT_LOG),
            "log_format": {
                "json_format": {
                    "time": "%START_TIME%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                    "protocol": "%PROTOCOL%",
                    "method": "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%",
                    "path": "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "rpc": "%REQ_WITHOUT_QUERY(:PATH)%",
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
                    "traceparent": "%REQ(TRACEPARENT)%",
                },
                "formatters": [
                    {
                        "name": "envoy.formatter.req_without_query",
                        "typed_config": {"@type": type_url(_REQ_WITHOUT_QUERY)},
                    }
                ],
            },
        },
    }


def _percent_runtime(key: str) -> dict[str, Any]:
    return {"runtime_key": key, "default_value": {"numerator": 100, "denominator": "HUNDRED"}}
