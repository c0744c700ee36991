"""Finding 1 (and 4, 11 as the edge renders them): in production the public edge serves
TLS only, with HSTS; plain HTTP reaches no service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pi.edge import EdgeConfig, render_bootstrap
from pi.edge.profiles import kubernetes_config, local_config

REPO = Path(__file__).resolve().parents[3]
RENDERED = REPO / "k8s" / "base" / "generated" / "envoy.json"


def _listener(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [x for x in bootstrap["static_resources"]["listeners"] if x["name"] == name]
    return found


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    (chain,) = listener["filter_chains"]
    (manager,) = chain["filters"]
    return dict(manager["typed_config"])


def test_the_prod_load_balancer_publishes_no_plaintext_port(build_kustomization: Any) -> None:
    objects = build_kustomization("overlays/prod")
    (edge,) = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "edge"]
    assert edge["spec"]["type"] == "LoadBalancer"
    ports = edge["spec"]["ports"]
    assert [(p["port"], p["targetPort"]) for p in ports] == [(443, "https")]


def test_the_kubernetes_edge_proxies_nothing_in_clear() -> None:
    bootstrap = json.loads(RENDERED.read_text())
    http = _hcm(_listener(bootstrap, "http"))
    routes = http["route_config"]["virtual_hosts"][0]["routes"]
    assert all("route" not in r for r in routes)  # no route forwards to a service
    redirect, refuse = routes
    assert redirect["redirect"]["https_redirect"] is True
    assert refuse["direct_response"]["status"] == 403
    filters = [f["name"] for f in http["http_filters"]]
    assert "envoy.filters.http.grpc_json_transcoder" not in filters


def test_the_kubernetes_edge_sends_hsts_over_tls_and_trusts_no_forwarded_for() -> None:
    bootstrap = json.loads(RENDERED.read_text())
    https = _hcm(_listener(bootstrap, "https"))
    headers = {
        h["header"]["key"]: h["header"]["value"]
        for h in https["route_config"]["response_headers_to_add"]
    }
    assert headers["strict-transport-security"].startswith("max-age=63072000")
    for name in ("http", "https"):
        manager = _hcm(_listener(bootstrap, name))
        assert manager["use_remote_address"] is True
        assert manager["xff_num_trusted_hops"] == 0


def test_the_access_log_drops_query_strings() -> None:
    bootstrap = json.loads(RENDERED.read_text())
    log = _hcm(_listener(bootstrap, "https"))["access_log"][0]["typed_config"]["log_format"]
    fields = log["json_format"]
    assert fields["path"] == "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%"
    assert fields["rpc"] == "%REQ_WITHOUT_QUERY(:PATH)%"
    assert not [v for v in fields.values() if v.startswith("%REQ(") and "PATH)" in v]


def test_plain_http_is_proxied_only_on_loopback() -> None:
    local = local_config("d.binpb")
    assert local.plaintext == "serve" and not local.hsts
    with pytest.raises(ValueError, match="loopback"):
        EdgeConfig(descriptor_path="d", upstreams=local.upstreams, listen_host="0.0.0.0")
    assert kubernetes_config().plaintext == "redirect"
    rendered = render_bootstrap(kubernetes_config())
    assert "to-https" in json.dumps(_listener(rendered, "http"))
