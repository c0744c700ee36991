"""What observability reads from the environment, once, at a process's start.

- PI_OBSERVABILITY: `on` (default), or `off`: no metrics port, interceptors or traces
  (the bench's "off" run).
- PI_METRICS_HOST / PI_METRICS_PORT: where the process serves `/metrics` (127.0.0.1 and
  the gRPC port + 1000 by default; port 0 picks a free one).
- OTEL_EXPORTER_OTLP_ENDPOINT: the OTLP/gRPC collector for sampled spans, e.g.
  `http://127.0.0.1:4317`; unset, no spans are made.
- OTEL_SERVICE_NAME: the spans' `service.name` (default: the service's name).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from pi.platform.config import ConfigError, Environment

METRICS_PORT_OFFSET = 1000
"""A service's metrics port is its gRPC port + 1000 unless PI_METRICS_PORT says otherwise."""


@dataclass(frozen=True, kw_only=True)
class ObservabilitySettings:
    enabled: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    otlp_endpoint: str | None = None
    service_name: str = "pi"

    @classmethod
    def from_env(
        cls, service: str, grpc_port: int, environ: Mapping[str, str] | None = None
    ) -> ObservabilitySettings:
        env = Environment(os.environ if environ is None else environ)
        switch = env.text("PI_OBSERVABILITY", "on").lower()
        if switch not in ("on", "off"):
            env.problem(f"PI_OBSERVABILITY must be on or off (got {switch!r}).")
        default_port = grpc_port + METRICS_PORT_OFFSET if grpc_port else 0
        port = env.integer("PI_METRICS_PORT", min(default_port, 65535), 0, 65535)
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            env.problem("OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// URL.")
        if env.problems:
            raise ConfigError(env.problems)
        return cls(
            enabled=switch == "on",
            metrics_host=env.text("PI_METRICS_HOST", "127.0.0.1"),
            metrics_port=port,
            otlp_endpoint=endpoint,
            service_name=env.text("OTEL_SERVICE_NAME", service),
        )
