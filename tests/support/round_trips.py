"""Counting PostgreSQL round trips, as psycopg waits for them.

Tests import this (`from tests.support.round_trips import count_round_trips`):

    with count_round_trips() as trips:
        async with database.transaction(batch): ...
    assert trips.count == 2

Every wait for the server goes through `psycopg.waiting.wait_async` (the async
connection's `wait`). A round trip is counted when psycopg reads what the server sent in
one such wait: sending alone (a statement queued in a pipeline, flushed without waiting
for its result) is not one; a sync, a plain statement, BEGIN or COMMIT each is.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg.connection_async
from psycopg.waiting import Ready


@dataclass
class RoundTrips:
    count: int = 0


@contextmanager
def count_round_trips() -> Iterator[RoundTrips]:
    """Count the round trips of every psycopg async connection in the block."""
    waiting = psycopg.connection_async.waiting
    original = waiting.wait_async
    trips = RoundTrips()

    def counted(gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
        read = False
        try:
            state = next(gen)
        except StopIteration as done:
            return done.value
        while True:
            ready = yield state
            if ready & Ready.R and not read:
                read = True
                trips.count += 1
            try:
                state = gen.send(ready)
            except StopIteration as done:
                return done.value

    async def wait_async(gen: Any, fileno: int, *args: Any, **kwargs: Any) -> Any:
        return await original(counted(gen), fileno, *args, **kwargs)

    waiting.wait_async = wait_async  # type: ignore[assignment]
    try:
        yield trips
    finally:
        waiting.wait_async = original
