"""The edge's one virtual host: the OpenAPI document and a route per public gRPC service.

Only the public services' gRPC paths are routed, so the internal services are
unreachable through the edge. Reads (Get*/List* RPCs) get their own routes because they
are retried more freely than calls that change something.
"""

from __future__ import annotations

from typing import Any

from pi.edge._values import MIB, duration, type_url
from pi.edge.config import ADMIN_METHODS, PUBLIC_GRPC_SERVICES, EdgeConfig
from pi.edge.guards import guard_routes
from pi.edge.static import static_routes

# gRPC paths callable without a token: the auth service's own list.
PUBLIC_METHODS = ("/pi.auth.v1.AuthService/IssueToken", "/pi.auth.v1.AuthService/GetJwks")
# RPC name prefixes that only read (AIP-131/132): safe to retry after a partial failure.
_READ_METHOD_PREFIXES = ("Get", "List")

_FILTER_CONFIG = "envoy.config.route.v3.FilterConfig"
_PREVIOUS_HOSTS = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"


def route_config(config: EdgeConfig) -> dict[str, Any]:
    routes = guard_routes(PUBLIC_METHODS, openapi=config.openapi_path is not None)
    if config.openapi_path is not None:
        routes.append(_openapi_route(config.openapi_path))
    routes.extend(_not_routed(method) for method in ADMIN_METHODS)
    if config.web is not None:
        routes.extend(static_routes(config.web))
    for name, grpc_service in PUBLIC_GRPC_SERVICES.items():
        for prefix in _READ_METHOD_PREFIXES:
            routes.append(_grpc_route(f"/{grpc_service}/{prefix}", name, config, read=True))
        routes.append(_grpc_route(f"/{grpc_service}/", name, config, read=False))
    return {
        "name": "pi",
        # The OpenAPI document is served from a file; Envoy's default cap is 4 KiB.
        "max_direct_response_body_size_bytes": 4 * MIB,
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


def _not_routed(method: str) -> dict[str, Any]:
    """The admin API stays inside the mesh: answered here as if the route did not exist
    (HTTP/JSON clients reach it as the transcoded gRPC path too)."""
    return {
        "name": f"not-routed:{method}",
        "match": {"path": method},
        "direct_response": {"status": 404, "body": {"inline_string": "No such method."}},
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
                "@type": type_url(_FILTER_CONFIG),
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
                "typed_config": {"@type": type_url(_PREVIOUS_HOSTS)},
            }
        ],
        "host_selection_retry_max_attempts": 5,
    }
    if read:
        retry["per_try_timeout"] = duration(t.read_per_try)
    return {
        "name": f"{cluster}-{'read' if read else 'call'}:{prefix}",
        "match": {"prefix": prefix, "grpc": {}},
        "route": {
            "cluster": cluster,
            "timeout": duration(timeout),
            # A gRPC client's own deadline (grpc-timeout) is honoured up to the route's.
            "max_stream_duration": {"grpc_timeout_header_max": duration(timeout)},
            "retry_policy": retry,
        },
    }


def _method_is(method: str) -> dict[str, Any]:
    return {"name": ":method", "string_match": {"exact": method}}
