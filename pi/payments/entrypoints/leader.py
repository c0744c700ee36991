"""One leader among the replicas of the payment service runs its background workers (the
outbox dispatcher and the reconciler), so their work is not done once per replica.

`Leadership.run` tries the lease every `retry` seconds. Holding it, it runs the workers
and checks every `check` seconds that the lease's session still answers; when it does
not (the connection broke, the database restarted), it stops the workers at once: the
lock went with the session and another replica may take over. A replica that dies frees
the lease with its connection, and the next replica to try (within `retry` seconds) takes
it over. Movements committed by a replica that is not leading are found by the leader's
polling (`OutboxDispatcher` polls every second without a nudge).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

__all__ = ["Leadership", "Lease"]

log = logging.getLogger(__name__)


class HeldLease(Protocol):
    async def alive(self) -> bool: ...


class Lease(Protocol):
    name: str

    def try_hold(self) -> AbstractAsyncContextManager[HeldLease | None]:
        """The lease for the block, or None if another holder has it."""
        ...


class Leadership:
    def __init__(
        self,
        lease: Lease,
        workers: Sequence[Callable[[], Awaitable[None]]],
        *,
        retry: float = 2.0,
        check: float = 1.0,
    ) -> None:
        self._lease = lease
        self._workers = workers
        self._retry = retry
        self._check = check
        self.leading = False
        self.terms = 0
        """How many times this replica took the lease."""

    async def run(self) -> None:
        """Lead whenever the lease is free, forever (until cancelled)."""
        while True:
            try:
                await self._term()
            except Exception:
                log.exception("lease failed", extra={"lease": self._lease.name})
            await asyncio.sleep(self._retry)

    async def _term(self) -> None:
        async with self._lease.try_hold() as held:
            if held is None:
                return
            self.leading = True
            self.terms += 1
            log.info("leading: background workers started", extra={"lease": self._lease.name})
            workers = [asyncio.ensure_future(worker()) for worker in self._workers]
            try:
                while not any(w.done() for w in workers) and await self._alive(held):
                    await asyncio.sleep(self._check)
            finally:
                self.leading = False
                for worker in workers:
                    worker.cancel()
                for worker in workers:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await worker
            log.warning("lease lost: background workers stopped", extra={"lease": self._lease.name})

    async def _alive(self, held: HeldLease) -> bool:
        try:
            async with asyncio.timeout(max(self._check, 1.0) * 5):
                return await held.alive()
        except TimeoutError:
            return False
