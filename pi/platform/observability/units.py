"""Database units of work, timed and (in a traced request) spanned.

`PostgresUnitOfWork` calls `unit_started` when its block starts and `unit_ended` when it
ends: one histogram observation per unit (`pi_db_unit_seconds` by mode and result), and a
span only when the request is sampled. Statements are not spanned one by one: a unit is
what the use case sees, and a span per statement would cost more than the statement.
"""

from __future__ import annotations

from time import perf_counter

from opentelemetry.trace import Span, Status, StatusCode

from pi.platform.kernel.units import Conflict
from pi.platform.observability import metrics, tracing

__all__ = ["UnitObservation", "unit_ended", "unit_started"]


class UnitObservation:
    __slots__ = ("mode", "span", "start")

    def __init__(self, mode: str, span: Span | None) -> None:
        self.mode = mode
        self.span = span
        self.start = perf_counter()


def unit_started(mode: str) -> UnitObservation:
    return UnitObservation(mode, tracing.unit_span(mode))


def unit_ended(
    observation: UnitObservation, *, committed: bool, error: BaseException | None
) -> None:
    if committed:
        result = "committed"
    elif error is None and observation.mode == "read":
        result = "read"
    elif error is None:
        result = "rolled_back"
    elif isinstance(error, Conflict):
        result = "conflict"
    else:
        result = "error"
    metrics.db_units.labels(observation.mode, result).observe(perf_counter() - observation.start)
    span = observation.span
    if span is not None:
        span.set_attribute("pi.unit.result", result)
        if result == "error":
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()
