"""The observability pieces that need no network: settings, traceparent handling, the
causes of background work, idempotency counts, trace ids in logs, the receiver's span
format, the pool collector and units of work."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY, CollectorRegistry

from pi.platform.config import ConfigError
from pi.platform.kernel import idempotency
from pi.platform.kernel.causes import causes, on_behalf_of
from pi.platform.kernel.errors import AlreadyExists
from pi.platform.kernel.units import Conflict
from pi.platform.observability import tracing
from pi.platform.observability.pool import PoolCollector
from pi.platform.observability.receiver import spans_as_dicts
from pi.platform.observability.settings import ObservabilitySettings
from pi.platform.observability.telemetry import TraceFields, tracer_provider
from pi.platform.observability.units import unit_ended, unit_started

SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install(tracer_provider("test", exporter, batch=False))
    try:
        yield exporter
    finally:
        tracing.uninstall()


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_settings_default_to_the_grpc_port_plus_1000_and_read_the_switch() -> None:
    settings = ObservabilitySettings.from_env("payments", 50053, {})
    assert settings.enabled and settings.metrics_port == 51053
    assert settings.metrics_host == "127.0.0.1" and settings.otlp_endpoint is None
    assert settings.service_name == "payments"
    off = ObservabilitySettings.from_env(
        "auth", 50051, {"PI_OBSERVABILITY": "OFF", "PI_METRICS_PORT": "0"}
    )
    assert not off.enabled and off.metrics_port == 0


def test_settings_report_every_bad_variable_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        ObservabilitySettings.from_env(
            "auth",
            50051,
            {
                "PI_OBSERVABILITY": "maybe",
                "PI_METRICS_PORT": "70000",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317",
            },
        )
    assert len(error.value.problems) == 3, error.value.problems


def test_only_a_sampled_traceparent_is_followed(spans: InMemorySpanExporter) -> None:
    assert tracing.sampled_traceparent([("traceparent", SAMPLED)]) == SAMPLED
    assert tracing.sampled_traceparent([("x", "y"), ("traceparent", UNSAMPLED)]) is None
    assert tracing.sampled_traceparent([("traceparent", "garbage")]) is None
    assert tracing.sampled_traceparent(None) is None
    context = tracing.parse_traceparent(SAMPLED)
    assert context is not None and tracing.format_traceparent(context) == SAMPLED
    assert tracing.parse_traceparent("00-" + "0" * 32 + "-00f067aa0ba902b7-01") is None


def test_nothing_is_traced_until_tracing_is_installed() -> None:
    assert tracing.sampled_traceparent([("traceparent", SAMPLED)]) is None
    assert tracing.current_traceparent() is None
    assert tracing.unit_span("read") is None


def test_work_left_for_later_keeps_the_sampled_request_it_came_from(
    spans: InMemorySpanExporter,
) -> None:
    started = tracing.server_span("/pi.x.v1.X/Do", SAMPLED)
    assert started is not None
    span, token = started
    kept = tracing.current_traceparent()
    tracing.end_span(span, "OK", token)
    assert kept is not None and kept.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert kept.endswith("-01") and kept != SAMPLED
    assert tracing.current_traceparent() is None  # the request's context is gone


def test_causes_are_scoped_to_the_block() -> None:
    assert causes() == ()
    with on_behalf_of([SAMPLED, None, UNSAMPLED]):
        assert causes() == (SAMPLED, UNSAMPLED)
        with on_behalf_of([]):
            assert causes() == ()
    assert causes() == ()


def test_idempotency_replays_and_conflicts_are_reported() -> None:
    seen: list[str] = []
    idempotency.observe(seen.append)
    try:
        assert idempotency.replayed("fp", b"answer", "fp", "key") == b"answer"
        with pytest.raises(AlreadyExists):
            idempotency.replayed("fp", b"answer", "other", "key")
        idempotency.in_progress()
    finally:
        idempotency._observers.remove(seen.append)
    assert seen == ["replayed", "conflict", "in_progress"]


def test_log_records_carry_trace_ids_inside_a_sampled_span_only(
    spans: InMemorySpanExporter,
) -> None:
    record = logging.LogRecord("x", logging.INFO, "", 0, "outside", (), None)
    TraceFields().filter(record)
    assert not hasattr(record, "trace_id")
    started = tracing.server_span("/pi.x.v1.X/Do", SAMPLED)
    assert started is not None
    inside = logging.LogRecord("x", logging.INFO, "", 0, "inside", (), None)
    TraceFields().filter(inside)
    tracing.end_span(started[0], "OK", started[1])
    assert inside.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert len(inside.span_id) == 16 and inside.span_id != "00f067aa0ba902b7"


def test_the_receiver_writes_spans_with_their_parents_and_service(
    spans: InMemorySpanExporter,
) -> None:
    started = tracing.server_span("/pi.payments.v1.PaymentService/CreatePayment", SAMPLED)
    assert started is not None
    unit = tracing.unit_span("optimistic")
    assert unit is not None
    unit.end()
    tracing.end_span(started[0], "Internal", started[1])
    (written_unit, written_server) = spans_as_dicts(encode_spans(spans.get_finished_spans()))
    assert written_server["name"] == "pi.payments.v1.PaymentService/CreatePayment"
    assert written_server["kind"] == "SERVER" and written_server["service"] == "test"
    assert written_server["parent_span_id"] == "00f067aa0ba902b7"
    assert written_server["status"] == "ERROR"
    assert written_server["attributes"]["rpc.grpc.status"] == "Internal"
    assert written_unit["parent_span_id"] == written_server["span_id"]
    assert written_unit["name"] == "db.unit optimistic"


def test_units_of_work_are_timed_by_mode_and_result(spans: InMemorySpanExporter) -> None:
    before = {
        result: _value("pi_db_unit_seconds_count", mode="locked", result=result)
        for result in ("committed", "conflict", "error", "rolled_back")
    }
    for committed, error in (
        (True, None),
        (False, Conflict("x")),
        (False, ValueError()),
        (False, None),
    ):
        unit_ended(unit_started("locked"), committed=committed, error=error)
    for result, count in before.items():
        assert _value("pi_db_unit_seconds_count", mode="locked", result=result) == count + 1
    assert spans.get_finished_spans() == ()  # no request was traced


def test_the_pool_collector_reads_the_pool_at_scrape_time() -> None:
    stats = {"pool_size": 4, "pool_available": 1, "pool_max": 20, "requests_waiting": 2}
    registry = CollectorRegistry()
    registry.register(PoolCollector(lambda: stats))
    assert registry.get_sample_value("pi_db_pool_waiters") == 2
    stats["requests_waiting"] = 0
    assert registry.get_sample_value("pi_db_pool_waiters") == 0
    assert registry.get_sample_value("pi_db_pool_connections") == 4
    assert registry.get_sample_value("pi_db_pool_requests_total") == 0
