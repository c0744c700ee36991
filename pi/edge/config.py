"""The Envoy bootstrap for the Pi Platform edge, generated from one small dataclass.

`render_bootstrap(EdgeConfig(...))` is a pure function: the same `EdgeConfig` always
gives the same dict, and every deployment (local `make run`, tests, Kubernetes) renders
its config from here, so there is no hand-kept copy that can drift. The choices below are
documented in `envoy/README.md`; the short version:

- Two listeners share one HTTP connection manager: cleartext HTTP/1.1 + h2c (JSON and
  native gRPC) and, when a certificate is given, TLS 1.3 only with ALPN h2,http/1.1.
  Cleartext is proxied only on loopback (`make run`, tests): anywhere else the cleartext
  port only answers health checks and redirects to HTTPS (`plaintext`), and the TLS
  listener sends HSTS.
- `grpc_json_transcoder` maps the public services' `google.api.http` rules to gRPC. Only
  the public services are transcoded and only their gRPC paths are routed, so the
  internal services (AuthInternalService, TransactionLedgerService, PaymentLedgerService)
  are unreachable through the edge: 404 over HTTP/JSON, UNIMPLEMENTED over gRPC.
- Reads (Get*/List* RPCs) are retried on UNAVAILABLE, resets and connect failures; mutating
  calls only where the request provably never reached a service.
- Local replies (unknown route, rate limited, malformed JSON, ...) to HTTP/JSON clients are
  rendered as a JSON `google.rpc.Status`, the same shape the transcoder gives service
  errors.

This module holds what a deployment decides (`EdgeConfig`) and puts the bootstrap
together; its parts are built in `listeners` (with `routes` and `local_replies`),
`clusters` and `overload`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pi.edge.observability import Tracing
from pi.edge.static import StaticSite
from pi.platform.config import SERVICE_PORTS

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

ADMIN_METHODS: tuple[str, ...] = ("/pi.auth.v1.AuthService/CreateMerchant",)
"""Admin RPCs of the public services that the edge never routes: the admin API is called
inside the mesh only, with an admin certificate (pi.platform.runtime.callers)."""

REPLICA_PORT_STEP = 100
"""Replica i of a service listens on its default port (`SERVICE_PORTS`) + i * REPLICA_PORT_STEP."""

ADMIN_HOST = "127.0.0.1"
"""The admin interface can reconfigure and stop Envoy: it is never bound beyond loopback."""

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
class UpstreamTls:
    """The edge's mesh identity: Envoy calls the services over mutual TLS with this
    certificate and accepts only a server whose certificate, from the CA in `ca_path`,
    carries the service's SPIFFE ID (`pi.platform.security.mesh`)."""

    ca_path: str
    cert_path: str
    key_path: str


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
    upstream_tls: UpstreamTls | None = None
    openapi_path: str | None = None
    # The web front end (web/dist), served by `pi.edge.static`; None serves none.
    web: StaticSite | None = None
    rate_limit: RateLimit = field(default_factory=RateLimit)
    timeouts: Timeouts = field(default_factory=Timeouts)
    health_check: HealthCheck = field(default_factory=HealthCheck)
    max_downstream_connections: int = 50_000
    max_request_body_bytes: int = 1 * _MIB
    max_response_body_bytes: int = 4 * _MIB
    max_request_headers_kib: int = 32
    # Requests in flight to one service (all its replicas), and as many waiting for a
    # connection: beyond that Envoy answers 503 at once (circuit breaker overflow,
    # `local_replies.py`) instead of queueing work the service will finish too late.
    # A call admitted waits about cap / throughput: one Python replica on the 2-core box
    # does ~100 payment calls/s under overload, so 256 is ~2.5 s, inside the reads'
    # 4 s per-try timeout (512 measured p99 7.3 s in `make chaos` F8). The bench's
    # 64-connection flow and a healthy 10,000-connection run (~1,000 calls/s at tens of
    # ms: tens in flight) stay far below it; more replicas drain the same cap faster.
    max_upstream_requests: int = 256
    max_heap_bytes: int = 1024 * _MIB
    xff_num_trusted_hops: int = 0
    access_log: bool = True
    # Observability (pi.edge.observability): GET /stats/prometheus on this port, and the
    # tracer that decides which requests are traced. None: neither.
    metrics_port: int | None = None
    tracing: Tracing | None = None
    #: "serve": the cleartext port proxies like the TLS one (loopback only);
    #: "redirect": it answers health checks and redirects to HTTPS, nothing else.
    plaintext: str = "serve"
    #: Where "redirect" sends clients: the port clients reach TLS on (the load balancer's).
    public_https_port: int = 443
    #: Send Strict-Transport-Security on TLS responses (not on a developer's localhost,
    #: where it would pin every localhost port of the browser to HTTPS).
    hsts: bool = False

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
        if self.plaintext not in ("serve", "redirect"):
            raise ValueError("plaintext is 'serve' or 'redirect'")
        if self.plaintext == "serve" and not _is_loopback(self.listen_host):
            raise ValueError(
                "plain HTTP is proxied only on loopback: use plaintext='redirect' (and TLS) "
                f"to listen on {self.listen_host}"
            )

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_path is not None


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def local_upstreams(replicas: int = 1, host: str = "127.0.0.1") -> dict[str, tuple[Endpoint, ...]]:
    """Endpoints of `make run`: replica i of a service on its default port + 100 * i."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    return {
        name: tuple(Endpoint(host, port + REPLICA_PORT_STEP * i) for i in range(replicas))
        for name, port in SERVICE_PORTS.items()
    }


def render_bootstrap(config: EdgeConfig) -> dict[str, Any]:
    """The Envoy v3 bootstrap for `config`, as plain JSON-serialisable data."""
    # The builders import this module's dataclasses and constants, so they (and their
    # helpers) are imported once it is complete: at the top, the two would import each other.
    from pi.edge._values import socket_address
    from pi.edge.clusters import service_cluster
    from pi.edge.listeners import listener
    from pi.edge.observability import collector_cluster, metrics_clusters, metrics_listener
    from pi.edge.overload import overload_manager
    from pi.edge.plaintext import redirect_listener

    if config.plaintext == "redirect":
        listeners = [redirect_listener("http", config, config.http_port)]
    else:
        listeners = [listener("http", config, config.http_port, tls=False)]
    if config.tls_enabled:
        listeners.append(listener("https", config, config.https_port, tls=True))
    clusters = [
        service_cluster(name, config.upstreams[name], config) for name in PUBLIC_GRPC_SERVICES
    ]
    if config.metrics_port is not None:
        listeners.append(metrics_listener(config.listen_host, config.metrics_port))
        clusters.extend(metrics_clusters(ADMIN_HOST, config.admin_port))
    if config.tracing is not None:
        clusters.append(collector_cluster(config.tracing, config.timeouts.upstream_connect))
    return {
        "node": {"id": "pi-edge", "cluster": "pi-edge"},
        "admin": {
            "address": socket_address(ADMIN_HOST, config.admin_port),
        },
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
        },
        "overload_manager": overload_manager(config),
        "layered_runtime": {
            "layers": [{"name": "static", "static_layer": {}}],
        },
    }
