"""The edge configurations the project runs, one function per deployment.

Every config Envoy ever loads is built by one of these (and rendered by
`config.render_bootstrap`), so `tests/unit/edge` can validate each of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pi.edge.config import (
    EdgeConfig,
    Endpoint,
    HealthCheck,
    RateLimit,
    UpstreamTls,
    local_upstreams,
)
from pi.edge.observability import Tracing
from pi.edge.static import StaticSite
from pi.platform.config import SERVICE_PORTS

# Where the Kubernetes manifests mount things into the Envoy pod.
K8S_DESCRIPTOR_PATH = "/etc/pi/edge/descriptors.binpb"
K8S_OPENAPI_PATH = "/etc/pi/edge/openapi.json"
K8S_TLS_CERT_PATH = "/etc/pi/tls/tls.crt"
K8S_TLS_KEY_PATH = "/etc/pi/tls/tls.key"
# The edge's mesh identity (the cert-manager Secret pi-edge-mesh-tls), to call the services.
K8S_UPSTREAM_TLS = UpstreamTls(
    ca_path="/etc/pi/mesh/ca.crt",
    cert_path="/etc/pi/mesh/tls.crt",
    key_path="/etc/pi/mesh/tls.key",
)

# Observability in a cluster: Prometheus scrapes the edge's metrics port, spans go to the
# OpenTelemetry Collector of k8s/monitoring, and 1% of requests are traced (the one
# number to turn tracing up or down: the services follow the edge's decision).
K8S_METRICS_PORT = 9902
K8S_COLLECTOR_HOST = "otel-collector.pi-monitoring.svc.cluster.local"
K8S_TRACE_SAMPLE_PERCENT = 1.0


def local_config(
    descriptor_path: str,
    *,
    replicas: int = 1,
    openapi_path: str | None = None,
    tls_cert_path: str | None = None,
    tls_key_path: str | None = None,
    **overrides: Any,
) -> EdgeConfig:
    """`make run`: loopback only, `replicas` processes per service on ports base + 100*i."""
    return EdgeConfig(
        descriptor_path=descriptor_path,
        upstreams=local_upstreams(replicas),
        openapi_path=openapi_path,
        tls_cert_path=tls_cert_path,
        tls_key_path=tls_key_path,
        **overrides,
    )


def e2e_config(
    descriptor_path: str,
    *,
    upstreams: Mapping[str, tuple[Endpoint, ...]],
    http_port: int,
    https_port: int,
    admin_port: int,
    openapi_path: str | None = None,
    tls_cert_path: str | None = None,
    tls_key_path: str | None = None,
    upstream_tls: UpstreamTls | None = None,
    requests_per_second: int = 5,
    web: StaticSite | None = None,
    metrics_port: int | None = None,
    tracing: Tracing | None = None,
) -> EdgeConfig:
    """End-to-end tests: free ports, fast health checks, a rate limit a test can exceed."""
    return EdgeConfig(
        descriptor_path=descriptor_path,
        upstreams=upstreams,
        http_port=http_port,
        https_port=https_port,
        admin_port=admin_port,
        openapi_path=openapi_path,
        tls_cert_path=tls_cert_path,
        tls_key_path=tls_key_path,
        upstream_tls=upstream_tls,
        rate_limit=RateLimit(requests_per_second, requests_per_second),
        health_check=HealthCheck(interval=1.0, timeout=1.0),
        web=web,
        metrics_port=metrics_port,
        tracing=tracing,
    )


def kubernetes_config(
    *,
    service_hosts: Mapping[str, str] | None = None,
    descriptor_path: str = K8S_DESCRIPTOR_PATH,
    openapi_path: str | None = K8S_OPENAPI_PATH,
    tls_cert_path: str | None = K8S_TLS_CERT_PATH,
    tls_key_path: str | None = K8S_TLS_KEY_PATH,
    upstream_tls: UpstreamTls | None = K8S_UPSTREAM_TLS,
    **overrides: Any,
) -> EdgeConfig:
    """A Kubernetes pod: listens on all interfaces, services found by DNS, called over
    mutual TLS.

    Use headless Services (clusterIP: None) so DNS returns every pod and Envoy balances
    requests across them; a ClusterIP VIP would pin each HTTP/2 connection to one pod.
    """
    hosts = dict(service_hosts or {name: name for name in SERVICE_PORTS})
    config = EdgeConfig(
        metrics_port=K8S_METRICS_PORT,
        tracing=Tracing(K8S_COLLECTOR_HOST, sample_percent=K8S_TRACE_SAMPLE_PERCENT),
        descriptor_path=descriptor_path,
        upstreams={name: (Endpoint(hosts[name], port),) for name, port in SERVICE_PORTS.items()},
        listen_host="0.0.0.0",  # inside a pod; the Service decides what is exposed
        # Public: TLS only. The cleartext port answers probes and redirects to HTTPS.
        plaintext="redirect",
        hsts=True,
        openapi_path=openapi_path,
        tls_cert_path=tls_cert_path,
        tls_key_path=tls_key_path,
        upstream_tls=upstream_tls,
    )
    return replace(config, **overrides) if overrides else config
