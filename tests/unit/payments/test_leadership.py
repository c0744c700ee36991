"""Leadership over a lease, with a lease in memory: workers run only while the lease is
held and alive, stop as soon as it is lost, and start again on the next term."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from pi.payments.entrypoints.leader import Leadership


class FakeLease:
    name = "fake"

    def __init__(self) -> None:
        self.free = True
        self.session_alive = True

    async def alive(self) -> bool:
        return self.session_alive

    @contextlib.asynccontextmanager
    async def try_hold(self) -> AsyncIterator[FakeLease | None]:
        if not self.free:
            yield None
            return
        self.free = False
        try:
            yield self
        finally:
            self.free = True


async def eventually(condition: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]  # a zero-argument callable
            await asyncio.sleep(0.005)


async def test_workers_run_only_while_the_lease_is_held_and_alive() -> None:
    lease = FakeLease()
    running: list[str] = []

    async def worker() -> None:
        running.append("start")
        try:
            await asyncio.Event().wait()
        finally:
            running.append("stop")

    lease.free = False  # held by another replica
    leadership = Leadership(lease, [worker, worker], retry=0.01, check=0.01)
    task = asyncio.create_task(leadership.run())
    await asyncio.sleep(0.1)
    assert (leadership.leading, running) == (False, [])

    lease.free = True  # the other replica died
    await eventually(lambda: leadership.leading and running == ["start", "start"])

    lease.session_alive = False  # our session broke: stop at once
    await eventually(lambda: running.count("stop") == 2)
    lease.session_alive = True
    await eventually(lambda: leadership.terms == 2 and running.count("start") == 4)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert running.count("stop") == 4
