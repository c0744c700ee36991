"""The plaintext listener of a public edge: health checks and a redirect, nothing else.

Outside loopback the edge never proxies plain HTTP (finding 1: a card payment must not
succeed in clear). Its cleartext port then answers only:

- `GET /healthz` (the load balancer's and the kubelet's probe), from the health filter;
- `GET`/`HEAD` anything else: 301 to the same path on `https://` (a browser that typed
  the bare host lands on TLS, and gets HSTS there);
- any other method: 403 with a JSON `google.rpc.Status` saying to use HTTPS, and no
  redirect, so a client that sent a body (card data, a secret) in clear is told, instead
  of being silently re-sent over TLS where the mistake would go unnoticed. No route
  reaches a service, so no request body is ever forwarded.

HSTS (`Strict-Transport-Security`) is added by the TLS listener (`listeners`).
"""

from __future__ import annotations

import json
from typing import Any

from pi.edge._values import KIB, duration, socket_address, type_url
from pi.edge.config import EdgeConfig

_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_HEALTH_CHECK = "envoy.extensions.filters.http.health_check.v3.HealthCheck"
_ROUTER = "envoy.extensions.filters.http.router.v3.Router"

HSTS = "max-age=63072000; includeSubDomains"
"""Two years, every subdomain: what hstspreload.org asks for (without `preload`, which
is a decision for the domain's owner)."""

_USE_HTTPS = json.dumps(
    {
        "code": 7,
        "message": "Plain HTTP is not served: send this request to https:// (TLS 1.3).",
        "details": [],
    }
)


def redirect_listener(name: str, config: EdgeConfig, port: int) -> dict[str, Any]:
    hcm = {
        "@type": type_url(_HCM),
        "stat_prefix": name,
        "codec_type": "AUTO",
        "server_name": "pi-edge",
        "use_remote_address": True,
        "xff_num_trusted_hops": config.xff_num_trusted_hops,
        "request_headers_timeout": duration(config.timeouts.request_headers),
        "request_timeout": duration(config.timeouts.request_headers),
        "max_request_headers_kb": config.max_request_headers_kib,
        "common_http_protocol_options": {
            "idle_timeout": duration(config.timeouts.request_headers),
            "headers_with_underscores_action": "REJECT_REQUEST",
        },
        "route_config": {
            "name": "redirect",
            "virtual_hosts": [
                {
                    "name": "redirect",
                    "domains": ["*"],
                    "routes": [
                        {
                            "name": "to-https",
                            "match": {
                                "prefix": "/",
                                "headers": [
                                    {
                                        "name": ":method",
                                        "string_match": {"safe_regex": {"regex": "GET|HEAD"}},
                                    }
                                ],
                            },
                            "redirect": {
                                "https_redirect": True,
                                "port_redirect": config.public_https_port,
                                "response_code": "MOVED_PERMANENTLY",
                            },
                        },
                        {
                            "name": "use-https",
                            "match": {"prefix": "/"},
                            "direct_response": {
                                "status": 403,
                                "body": {"inline_string": _USE_HTTPS},
                            },
                            "response_headers_to_add": [
                                {
                                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                    "header": {
                                        "key": "content-type",
                                        "value": "application/json",
                                    },
                                },
                                {
                                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                    "header": {"key": "connection", "value": "close"},
                                },
                            ],
                        },
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.health_check",
                "typed_config": {
                    "@type": type_url(_HEALTH_CHECK),
                    "pass_through_mode": False,
                    "headers": [{"name": ":path", "string_match": {"exact": "/healthz"}}],
                },
            },
            {"name": "envoy.filters.http.router", "typed_config": {"@type": type_url(_ROUTER)}},
        ],
    }
    return {
        "name": name,
        "address": socket_address(config.listen_host, port),
        # Nothing here needs a body: the smallest buffer Envoy accepts.
        "per_connection_buffer_limit_bytes": 1 * KIB,
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
