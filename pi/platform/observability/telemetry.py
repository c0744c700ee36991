"""Turning observability on in a process: the metrics port, the span exporter, the log
fields and the idempotency counters. `runtime.wiring` calls `start` once per process and
`close` at exit; a worker process would do the same.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from prometheus_client import start_http_server

from pi.platform.kernel import idempotency
from pi.platform.observability import metrics, switch, tracing
from pi.platform.observability.settings import ObservabilitySettings

__all__ = ["Telemetry", "TraceFields", "replayed_in_this_request", "start", "tracer_provider"]

log = logging.getLogger(__name__)


class TraceFields(logging.Filter):
    """Adds `trace_id` and `span_id` to records logged inside a sampled span."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.trace_flags.sampled:
            record.trace_id = f"{context.trace_id:032x}"
            record.span_id = f"{context.span_id:016x}"
        return True


class _Demoted(logging.Filter):
    """The exporter logs each failed export as an ERROR; a collector that is down is
    `pi_spans_dropped_total` and its alert, not an error of the service's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _CountingExporter(SpanExporter):
    """Counts what reached the collector and what it refused."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self._inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            metrics.spans_exported.inc(len(spans))
        else:
            metrics.spans_dropped.inc(len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _CountingBatchProcessor(BatchSpanProcessor):
    """A batch processor that counts the spans it drops because its queue is full."""

    def __init__(self, exporter: SpanExporter, max_queue_size: int = 2048) -> None:
        super().__init__(exporter, max_queue_size=max_queue_size, schedule_delay_millis=1000)
        self._capacity = max_queue_size

    def on_end(self, span: ReadableSpan) -> None:
        queue = getattr(self._batch_processor, "_queue", ())
        if len(queue) >= self._capacity:
            metrics.spans_dropped.inc()
        super().on_end(span)


def tracer_provider(
    service_name: str, exporter: SpanExporter, *, batch: bool = True
) -> TracerProvider:
    """A provider that only follows a sampled parent (the edge decides) and exports
    through `exporter` (in batches, off the event loop, unless `batch` is False)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(
        sampler=ParentBased(root=ALWAYS_OFF),
        resource=Resource.create({"service.name": service_name}),
    )
    counted = _CountingExporter(exporter)
    provider.add_span_processor(
        _CountingBatchProcessor(counted) if batch else SimpleSpanProcessor(counted)
    )
    return provider


# Set in the task of a request whose idempotency key replayed a stored answer, so that
# business counts taken from the answer do not count it twice.
_replayed: ContextVar[bool] = ContextVar("pi_replayed", default=False)


def replayed_in_this_request() -> bool:
    """Whether the current request's answer is a replay of a stored one."""
    return _replayed.get()


def _count_idempotency(result: str) -> None:
    metrics.idempotency.labels(result).inc()
    if result == "replayed":
        _replayed.set(True)


@dataclass
class Telemetry:
    """What `start` turned on; `close()` flushes spans and stops the metrics port."""

    settings: ObservabilitySettings
    metrics_port: int | None = None
    provider: TracerProvider | None = None
    _http: Any = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def metrics_url(self) -> str | None:
        if self.metrics_port is None:
            return None
        return f"http://{self.settings.metrics_host}:{self.metrics_port}/metrics"

    def close(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
            tracing.uninstall()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


def start(settings: ObservabilitySettings) -> Telemetry:
    """Serve /metrics, export sampled spans if an OTLP endpoint is set, add trace ids to
    the root logger's handlers, count idempotency replays. Nothing if disabled."""
    telemetry = Telemetry(settings)
    switch.set_enabled(settings.enabled)
    if not settings.enabled:
        return telemetry
    idempotency.observe(_count_idempotency)
    if settings.metrics_port is not None:
        server, thread = start_http_server(settings.metrics_port, settings.metrics_host)
        telemetry._http, telemetry._thread = server, thread
        telemetry.metrics_port = server.server_port
        log.info("metrics", extra={"url": telemetry.metrics_url})
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter").addFilter(_Demoted())
        insecure = settings.otlp_endpoint.startswith("http://")
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=insecure)
        telemetry.provider = tracer_provider(settings.service_name, exporter)
        tracing.install(telemetry.provider)
        for handler in logging.getLogger().handlers:
            handler.addFilter(TraceFields())
    return telemetry
