"""The edge: Envoy bootstrap generation, the development certificate, the Envoy binary."""

from pi.edge.certs import DevCert, ensure_dev_cert
from pi.edge.config import (
    ADMIN_HOST,
    ADMIN_METHODS,
    INTERNAL_GRPC_SERVICES,
    PUBLIC_GRPC_SERVICES,
    REPLICA_PORT_STEP,
    EdgeConfig,
    Endpoint,
    HealthCheck,
    RateLimit,
    Timeouts,
    UpstreamTls,
    local_upstreams,
    render_bootstrap,
)
from pi.edge.envoy import EnvoyNotFound, envoy_command, find_envoy, validate
from pi.edge.files import write_bootstrap

__all__ = [
    "ADMIN_HOST",
    "ADMIN_METHODS",
    "INTERNAL_GRPC_SERVICES",
    "PUBLIC_GRPC_SERVICES",
    "REPLICA_PORT_STEP",
    "DevCert",
    "EdgeConfig",
    "Endpoint",
    "EnvoyNotFound",
    "HealthCheck",
    "RateLimit",
    "Timeouts",
    "UpstreamTls",
    "ensure_dev_cert",
    "envoy_command",
    "find_envoy",
    "local_upstreams",
    "render_bootstrap",
    "validate",
    "write_bootstrap",
]
