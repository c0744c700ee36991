"""The rendered Envoy bootstrap: policy that must hold in every deployment."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pi.edge import (
    INTERNAL_GRPC_SERVICES,
    PUBLIC_GRPC_SERVICES,
    EdgeConfig,
    Endpoint,
    local_upstreams,
    render_bootstrap,
)
from pi.edge.profiles import kubernetes_config, local_config

DESCRIPTOR = "/srv/pi/descriptors.binpb"


def _config(**overrides: Any) -> EdgeConfig:
    base: dict[str, Any] = {
        "descriptor_path": DESCRIPTOR,
        "upstreams": local_upstreams(1),
        "tls_cert_path": "/certs/cert.pem",
        "tls_key_path": "/certs/key.pem",
        "openapi_path": "/srv/pi/openapi.json",
    }
    base.update(overrides)
    return EdgeConfig(**base)


def _listener(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    (listener,) = [x for x in bootstrap["static_resources"]["listeners"] if x["name"] == name]
    return listener


def _hcm(bootstrap: dict[str, Any], name: str = "http") -> dict[str, Any]:
    chain = _listener(bootstrap, name)["filter_chains"][0]
    return chain["filters"][0]["typed_config"]


def _http_filter(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [f for f in _hcm(bootstrap)["http_filters"] if f["name"] == name]
    return found["typed_config"]


def _routes(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    return _hcm(bootstrap)["route_config"]["virtual_hosts"][0]["routes"]


def _clusters(bootstrap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}


def test_rendering_is_a_pure_function_of_the_config() -> None:
    assert json.dumps(render_bootstrap(_config())) == json.dumps(render_bootstrap(_config()))


def test_cleartext_listener_speaks_http1_and_h2c_on_the_configured_address() -> None:
    bootstrap = render_bootstrap(_config(http_port=18080))
    listener = _listener(bootstrap, "http")
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 18080}
    assert _hcm(bootstrap)["codec_type"] == "AUTO"
    assert "transport_socket" not in listener["filter_chains"][0]


def test_tls_listener_accepts_only_tls_1_3_with_h2_and_http1_alpn() -> None:
    listener = _listener(render_bootstrap(_config(https_port=18443)), "https")
    assert listener["address"]["socket_address"]["port_value"] == 18443
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_3"
    assert tls["tls_params"]["tls_maximum_protocol_version"] == "TLSv1_3"
    assert tls["alpn_protocols"] == ["h2", "http/1.1"]
    assert tls["tls_certificates"][0]["certificate_chain"]["filename"] == "/certs/cert.pem"
    assert tls["tls_certificates"][0]["private_key"]["filename"] == "/certs/key.pem"


def test_without_a_certificate_there_is_no_tls_listener() -> None:
    bootstrap = render_bootstrap(_config(tls_cert_path=None, tls_key_path=None))
    assert [x["name"] for x in bootstrap["static_resources"]["listeners"]] == ["http"]


def test_admin_interface_is_bound_to_loopback_even_when_listeners_are_not() -> None:
    bootstrap = render_bootstrap(kubernetes_config(descriptor_path=DESCRIPTOR))
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert _listener(bootstrap, "http")["address"]["socket_address"]["address"] == "0.0.0.0"


def test_transcoder_exposes_only_the_public_services() -> None:
    transcoder = _http_filter(
        render_bootstrap(_config()), "envoy.filters.http.grpc_json_transcoder"
    )
    assert transcoder["services"] == list(PUBLIC_GRPC_SERVICES.values())
    assert not set(transcoder["services"]) & set(INTERNAL_GRPC_SERVICES)
    assert transcoder["proto_descriptor"] == DESCRIPTOR
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["auto_mapping"] is False
    assert transcoder["request_validation_options"]["reject_unknown_method"] is True
    assert transcoder["request_validation_options"]["reject_unknown_query_parameters"] is True
    assert transcoder["print_options"] == {
        "add_whitespace": False,
        "always_print_primitive_fields": True,
        "always_print_enums_as_ints": False,
        "preserve_proto_field_names": False,
    }


def test_no_route_reaches_an_internal_service() -> None:
    matches = [r["match"] for r in _routes(render_bootstrap(_config()))]
    prefixes = [m["prefix"] for m in matches if "prefix" in m]
    for internal in INTERNAL_GRPC_SERVICES:
        assert not [p for p in prefixes if f"/{internal}/ListSomething".startswith(p)]
    assert "/" not in prefixes  # no catch-all route


def test_each_public_service_routes_to_its_own_cluster_as_grpc() -> None:
    bootstrap = render_bootstrap(_config())
    routes = [r for r in _routes(bootstrap) if "route" in r]
    for name, grpc_service in PUBLIC_GRPC_SERVICES.items():
        mine = [r for r in routes if r["match"]["prefix"].startswith(f"/{grpc_service}/")]
        assert {r["route"]["cluster"] for r in mine} == {name}
        assert all(r["match"]["grpc"] == {} for r in mine)
        assert f"/{grpc_service}/" in [r["match"]["prefix"] for r in mine]


def test_reads_are_retried_on_unavailable_but_mutations_only_when_nothing_was_sent() -> None:
    routes = {
        r["match"]["prefix"]: r["route"]
        for r in _routes(render_bootstrap(_config()))
        if "route" in r
    }
    read = routes["/pi.transactions.v1.TransactionService/List"]["retry_policy"]
    call = routes["/pi.transactions.v1.TransactionService/"]["retry_policy"]
    assert set(read["retry_on"].split(",")) == {
        "unavailable",
        "reset",
        "connect-failure",
        "refused-stream",
    }
    assert "per_try_timeout" in read
    assert set(call["retry_on"].split(",")) == {
        "connect-failure",
        "refused-stream",
        "reset-before-request",
    }
    # Get*/List* routes come first so they win over the service-wide route.
    order = list(routes)
    assert order.index("/pi.payments.v1.PaymentService/Get") < order.index(
        "/pi.payments.v1.PaymentService/"
    )


def test_every_route_has_a_timeout_that_also_caps_grpc_deadlines() -> None:
    for route in (r["route"] for r in _routes(render_bootstrap(_config())) if "route" in r):
        assert route["timeout"] == route["max_stream_duration"]["grpc_timeout_header_max"]


def test_openapi_document_is_served_by_envoy_as_json() -> None:
    (route,) = [r for r in _routes(render_bootstrap(_config())) if r.get("name") == "openapi"]
    assert route["match"]["path"] == "/openapi.json"
    assert route["direct_response"] == {"status": 200, "body": {"filename": "/srv/pi/openapi.json"}}
    headers = {h["header"]["key"]: h["header"]["value"] for h in route["response_headers_to_add"]}
    assert headers["content-type"] == "application/json"
    route_config = _hcm(render_bootstrap(_config()))["route_config"]
    assert route_config["max_direct_response_body_size_bytes"] >= 1024 * 1024


def test_clusters_speak_http2_with_grpc_health_checks_and_outlier_detection() -> None:
    clusters = _clusters(render_bootstrap(_config()))
    assert set(clusters) == set(PUBLIC_GRPC_SERVICES)
    for cluster in clusters.values():
        options = cluster["typed_extension_protocol_options"]
        (http,) = options.values()
        assert "http2_protocol_options" in http["explicit_http_config"]
        (check,) = cluster["health_checks"]
        assert check["grpc_health_check"] == {"service_name": ""}
        assert cluster["outlier_detection"]["max_ejection_percent"] <= 50
        assert cluster["type"] == "STATIC"


def test_every_cluster_sheds_load_past_its_circuit_breaker_cap() -> None:
    config = _config()
    assert 64 < config.max_upstream_requests <= 1024  # above the bench, far below 10,000
    for cluster in _clusters(render_bootstrap(config)).values():
        (limits,) = cluster["circuit_breakers"]["thresholds"]
        assert limits["max_requests"] == config.max_upstream_requests
        assert limits["max_pending_requests"] == config.max_upstream_requests
    smaller = _clusters(render_bootstrap(_config(max_upstream_requests=7)))
    assert {c["circuit_breakers"]["thresholds"][0]["max_requests"] for c in smaller.values()} == {7}


def test_overflow_is_a_503_json_unavailable_with_retry_after() -> None:
    mappers = _hcm(render_bootstrap(_config()))["local_reply_config"]["mappers"]
    overflow = [
        m
        for m in mappers
        if {"response_flag_filter": {"flags": ["UO"]}} in m["filter"]["and_filter"]["filters"]
    ]
    (mapper,) = overflow
    plain_503 = [m for m in mappers if m is not mapper and "503" in json.dumps(m["filter"])]
    assert mappers.index(mapper) < mappers.index(plain_503[0])  # the first match wins
    assert mapper["body_format_override"]["json_format"]["code"] == 14  # UNAVAILABLE
    assert mapper["body_format_override"]["content_type"] == "application/json"
    (header,) = mapper["headers_to_add"]
    assert header["header"]["key"] == "retry-after"


def test_replicas_become_endpoints_of_one_cluster_on_ports_100_apart() -> None:
    clusters = _clusters(render_bootstrap(local_config(DESCRIPTOR, replicas=3)))
    endpoints = clusters["payments"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [
        50053,
        50153,
        50253,
    ]


def test_dns_names_make_a_strict_dns_cluster() -> None:
    config = kubernetes_config(
        descriptor_path=DESCRIPTOR,
        service_hosts={
            "auth": "auth.pi.svc",
            "transactions": "transactions",
            "payments": "payments",
        },
    )
    cluster = _clusters(render_bootstrap(config))["auth"]
    assert cluster["type"] == "STRICT_DNS"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "auth.pi.svc", "port_value": 50051}


def test_connection_manager_follows_edge_hardening_practice() -> None:
    bootstrap = render_bootstrap(_config())
    for listener in ("http", "https"):
        hcm = _hcm(bootstrap, listener)
        assert hcm["use_remote_address"] is True
        assert hcm["normalize_path"] is True
        assert hcm["merge_slashes"] is True
        assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
        assert (
            hcm["common_http_protocol_options"]["headers_with_underscores_action"]
            == "REJECT_REQUEST"
        )
        for timeout in ("request_timeout", "request_headers_timeout", "stream_idle_timeout"):
            assert hcm[timeout].endswith("s")
        assert "idle_timeout" in hcm["common_http_protocol_options"]
        assert hcm["max_request_headers_kb"] <= 60
        assert hcm["http2_protocol_options"] == {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        }
        assert _listener(bootstrap, listener)["per_connection_buffer_limit_bytes"] == 32768


def test_connection_limit_fits_the_ten_thousand_connection_benchmark() -> None:
    monitors = render_bootstrap(_config())["overload_manager"]["resource_monitors"]
    (limit,) = [
        m
        for m in monitors
        if m["name"] == "envoy.resource_monitors.global_downstream_max_connections"
    ]
    assert limit["typed_config"]["max_active_downstream_connections"] >= 10_000


def test_request_bodies_are_capped() -> None:
    bootstrap = render_bootstrap(_config(max_request_body_bytes=1024 * 1024))
    assert _http_filter(bootstrap, "envoy.filters.http.buffer")["max_request_bytes"] == 1024 * 1024


def test_rate_limit_is_a_shared_token_bucket_answering_resource_exhausted() -> None:
    from pi.edge import RateLimit

    bootstrap = render_bootstrap(_config(rate_limit=RateLimit(requests_per_second=7, burst=9)))
    limit = _http_filter(bootstrap, "envoy.filters.http.local_ratelimit")
    assert limit["token_bucket"] == {"max_tokens": 9, "tokens_per_fill": 7, "fill_interval": "1s"}
    assert limit["filter_enforced"]["default_value"]["numerator"] == 100
    assert limit["rate_limited_as_resource_exhausted"] is True


def test_filters_run_cheapest_rejection_first_and_router_last() -> None:
    names = [f["name"] for f in _hcm(render_bootstrap(_config()))["http_filters"]]
    assert names == [
        "envoy.filters.http.health_check",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.buffer",
        "envoy.filters.http.lua",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.router",
    ]
    assert "envoy.filters.http.cors" not in names


def test_access_log_is_json_on_stdout_without_credentials() -> None:
    (log,) = _hcm(render_bootstrap(_config()))["access_log"]
    assert log["name"] == "envoy.access_loggers.stdout"
    fields = json.dumps(log["typed_config"]["log_format"]["json_format"]).upper()
    assert "AUTHORIZATION" not in fields
    assert "COOKIE" not in fields


def test_local_replies_to_http_clients_are_json_status_bodies() -> None:
    mappers = _hcm(render_bootstrap(_config()))["local_reply_config"]["mappers"]
    codes = {}
    for mapper in mappers:
        comparison = mapper["filter"]["and_filter"]["filters"][0]["status_code_filter"][
            "comparison"
        ]
        if comparison["op"] == "EQ":
            codes[comparison["value"]["default_value"]] = mapper["body_format_override"][
                "json_format"
            ]["code"]
    assert codes[404] == 5  # NOT_FOUND
    assert codes[429] == 8  # RESOURCE_EXHAUSTED
    assert codes[400] == 3  # INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"upstreams": {"auth": (Endpoint("h", 1),)}}, "upstreams must name exactly"),
        ({"upstreams": {**local_upstreams(1), "payments": ()}}, "without endpoints"),
        ({"tls_key_path": None}, "together"),
    ],
)
def test_inconsistent_configs_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**overrides)
