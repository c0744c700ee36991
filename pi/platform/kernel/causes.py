"""Which requests a piece of background work is done for, as opaque trace references.

A request that leaves work for later (an outbox row, queued facts) keeps a reference to
itself with that work: its W3C `traceparent`, or None when the request was not traced.
When a worker does the work, it names those references around the call that does it:

    with on_behalf_of(row.traceparent for row in batch):
        await ledger.apply_movements(movements)

Observability (`pi.platform.observability`) reads them back, so the delivery shows up in
the trace of the request that caused it. Use cases handle the references as plain
strings and never look inside; with nothing traced this costs one context variable set.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["causes", "on_behalf_of"]

_causes: ContextVar[tuple[str, ...]] = ContextVar("pi_causes", default=())


@contextmanager
def on_behalf_of(references: Iterable[str | None]) -> Iterator[None]:
    """Within the block, `causes()` is the non-empty references given, in order."""
    token = _causes.set(tuple(r for r in references if r))
    try:
        yield
    finally:
        _causes.reset(token)


def causes() -> tuple[str, ...]:
    """The references of the requests the current work is done for (empty if none)."""
    return _causes.get()
