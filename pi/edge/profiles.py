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
    local_upstreams,
)
from pi.platform.config import SERVICE_PORTS

# Where the Kubernetes manifests mount things into the Envoy pod.
K8S_DESCRIPTOR_PATH = "/etc/pi/edge/descriptors.binpb"
K8S_OPENAPI_PATH = "/etc/pi/edge/openapi.json"
K8S_TLS_CERT_PATH = "/etc/pi/tls/tls.crt"
K8S_TLS_KEY_PATH = "/etc/pi/tls/tls.key"


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
    requests_per_second: int = 5,
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
        rate_limit=RateLimit(requests_per_second, requests_per_second),
        health_check=HealthCheck(interval=1.0, timeout=1.0),
    )


def kubernetes_config(
    *,
    service_hosts: Mapping[str, str] | None = None,
    descriptor_path: str = K8S_DESCRIPTOR_PATH,
    openapi_path: str | None = K8S_OPENAPI_PATH,
    tls_cert_path: str | None = K8S_TLS_CERT_PATH,
    tls_key_path: str | None = K8S_TLS_KEY_PATH,
    **overrides: Any,
) -> EdgeConfig:
    """A Kubernetes pod: listens on all interfaces, services found by DNS.

    Use headless Services (clusterIP: None) so DNS returns every pod and Envoy balances
    requests across them; a ClusterIP VIP would pin each HTTP/2 connection to one pod.
    """
    hosts = dict(service_hosts or {name: name for name in SERVICE_PORTS})
    config = EdgeConfig(
        descriptor_path=descriptor_path,
        upstreams={name: (Endpoint(hosts[name], port),) for name, port in SERVICE_PORTS.items()},
        listen_host="0.0.0.0",  # inside a pod; the Service decides what is exposed
        # Public: TLS only. The cleartext port answers probes and redirects to HTTPS.
        plaintext="redirect",
        hsts=True,
        openapi_path=openapi_path,
        tls_cert_path=tls_cert_path,
        tls_key_path=tls_key_path,
    )
    return replace(config, **overrides) if overrides else config
