"""Metrics, traces and log fields for every Pi process, on by default and cheap.

- `metrics`: every Prometheus metric, declared once (go-grpc-prometheus names for RPCs).
- `interceptors`: `ServerObservability` / `ClientObservability`, RED metrics and spans.
- `tracing`: spans only for requests the edge sampled; `current_traceparent` for work
  left for later.
- `telemetry.start(settings)`: the metrics port, the OTLP exporter, trace ids in logs.
- `pool`: the database pool's numbers at scrape time.
- `receiver`: a small OTLP receiver writing spans to a file (`make run`'s traces).

See docs/observability.md.
"""

from pi.platform.observability.interceptors import ClientObservability, ServerObservability
from pi.platform.observability.settings import ObservabilitySettings
from pi.platform.observability.telemetry import Telemetry, start
from pi.platform.observability.tracing import current_traceparent

__all__ = [
    "ClientObservability",
    "ObservabilitySettings",
    "ServerObservability",
    "Telemetry",
    "current_traceparent",
    "start",
]
