"""What `make run` starts and where: services, replicas, ports, the var dir."""

from __future__ import annotations

import importlib.resources
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pi.edge import REPLICA_PORT_STEP, Endpoint
from pi.platform.config import SERVICE_PORTS
from pi.platform.observability.settings import METRICS_PORT_OFFSET

SERVICES = tuple(SERVICE_PORTS)
"""In port order: auth on the base port, transactions on base + 1, payments on base + 2."""
DEFAULT_GRPC_PORT_BASE = SERVICE_PORTS[SERVICES[0]]


def generated_dir() -> Path:
    """The `generated` package's directory (descriptor set, OpenAPI), wherever it is installed."""
    return Path(str(importlib.resources.files("generated")))


def web_dist_dir() -> Path:
    """`web/dist` of the checkout `pi` runs from (`make web` builds it)."""
    return Path(__file__).resolve().parents[2] / "web" / "dist"


@dataclass(frozen=True)
class LaunchOptions:
    """What to start and where; `root` is the working directory of every child."""

    root: Path = field(default_factory=Path.cwd)
    var_dir: Path = Path("var")
    replicas: int = 1
    grpc_port_base: int = DEFAULT_GRPC_PORT_BASE
    http_port: int = 8080
    https_port: int = 8443
    admin_port: int = 9901
    # Observability: Envoy's /stats/prometheus, the local OTLP receiver (traces to
    # <var>/traces/spans.jsonl) and the share of requests the edge traces.
    edge_metrics_port: int = 9902
    otlp_port: int = 4317
    trace_sample_percent: float = 100.0
    startup_timeout: float = 90.0
    grace: float = 15.0
    python: str = sys.executable
    generated: Path = field(default_factory=generated_dir)
    web_dist: Path = field(default_factory=web_dist_dir)

    @property
    def serves_web(self) -> bool:
        """Whether the dashboard is built, so that Envoy serves it."""
        return (self.web_dist / "index.html").is_file()

    @property
    def var(self) -> Path:
        """The var dir as an absolute path (a relative `var_dir` is under `root`)."""
        return (self.root / self.var_dir).absolute()

    def port(self, service: str, replica: int) -> int:
        """Base + 0/1/2 for auth/transactions/payments, plus 100 per replica."""
        return self.grpc_port_base + SERVICES.index(service) + REPLICA_PORT_STEP * replica

    def metrics_port(self, service: str, replica: int) -> int:
        """Where a replica serves /metrics: its gRPC port + 1000 (the services' default)."""
        return self.port(service, replica) + METRICS_PORT_OFFSET

    def ports(self) -> list[int]:
        """Every port the launcher listens on: the services' (gRPC and metrics), Envoy's
        and the trace receiver's."""
        services = [self.port(s, i) for s in SERVICES for i in range(self.replicas)]
        metrics = [self.metrics_port(s, i) for s in SERVICES for i in range(self.replicas)]
        return [
            self.http_port,
            self.https_port,
            self.admin_port,
            self.edge_metrics_port,
            self.otlp_port,
            *services,
            *metrics,
        ]

    @property
    def traces_path(self) -> Path:
        """Where the local OTLP receiver writes the spans, one JSON object per line."""
        return self.var / "traces" / "spans.jsonl"

    def upstreams(self) -> dict[str, tuple[Endpoint, ...]]:
        """What Envoy routes to: every replica of every service."""
        return {
            service: tuple(
                Endpoint("127.0.0.1", self.port(service, i)) for i in range(self.replicas)
            )
            for service in SERVICES
        }

    @property
    def postgres_dir(self) -> Path:
        """The embedded PostgreSQL's data directory (when DATABASE_URL is unset)."""
        return self.var / "postgres"

    def target(self, service: str) -> str:
        """How services reach each other: one address, or all replicas (gRPC ipv4: list)."""
        addresses = [f"127.0.0.1:{self.port(service, i)}" for i in range(self.replicas)]
        return addresses[0] if self.replicas == 1 else "ipv4:" + ",".join(addresses)
