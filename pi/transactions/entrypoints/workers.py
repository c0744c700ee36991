"""The transaction service's background workers: the facts publisher, and the purge of
old idempotency keys (`purge_idempotency_keys`, run periodically by the bootstrap).

The facts publisher pushes the facts of new transactions to the payment service before
their first payment.

CreatePayment needs a transaction's owner, amount and currency. Without them it asks this
service (`LookupTransaction`): a round trip, on the CPU of both services, for the first
payment of every transaction. So after CreateTransaction commits, `publish` queues the
new transaction's facts (in memory: it never blocks and never fails), and the background
task `run` sends whatever is queued as one `RegisterTransactions` call, waiting for each
call to end before it sends the next. While a call is in flight the queue fills, so under
load the calls batch themselves; when idle, each transaction goes out at once.

It is only a warm-up: a payment whose transaction was not pushed (yet) falls back to the
lookup. So nothing here is persisted or retried, and losing facts is cheap:

- the queue is bounded: when full, the oldest facts are dropped (`stats.dropped`); the
  newest transactions are the likeliest to be paid next;
- a call that fails or passes its deadline loses its facts (`stats.lost`), and the next
  call waits a short backoff (doubling up to `max_backoff`), so a payment service that is
  down gets one call per backoff, not a pile of them.

Under load a client pays within milliseconds of creating, before the call carrying its
transaction has even started. So `publish` also returns a future that says how the push
ended (True: acknowledged; False: dropped, lost, or the publisher stopped first), which
CreateTransaction awaits for a few tens of milliseconds. The future is never failed or
cancelled by the publisher, so nobody has to retrieve an exception. While the publisher is
unhealthy (its last call failed) or not running, `publish` returns None instead: a waiter
would only pay its whole cap for nothing.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from dataclasses import dataclass
from datetime import timedelta

from pi.platform.kernel.causes import on_behalf_of
from pi.platform.kernel.idempotency import RETENTION
from pi.platform.kernel.units import Mode
from pi.platform.observability import metrics
from pi.platform.observability.tracing import current_traceparent
from pi.transactions.app.ports import (
    MAX_FACTS_PER_CALL,
    REGISTER_DEADLINE_SECONDS,
    PaymentLedger,
    TransactionFacts,
    UnitsOfWork,
)
from pi.transactions.domain import Transaction

__all__ = ["IDEMPOTENCY_RETENTION", "FactsPublisher", "FactsStats", "purge_idempotency_keys"]

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000
IDEMPOTENCY_RETENTION = RETENTION
"""How long an idempotency key is kept (AIP-155: at least 24 hours)."""

# The facts, and the future of whoever waits for them (None: nobody does).
_Entry = tuple[TransactionFacts, asyncio.Future[bool] | None]


@dataclass
class FactsStats:
    """What the publisher did since it was built: transactions `published` (queued),
    `sent` (in a call that succeeded), `dropped` (the queue was full) and `lost` (in a
    call that failed); `calls` that succeeded and `failed_calls`."""

    published: int = 0
    sent: int = 0
    dropped: int = 0
    lost: int = 0
    calls: int = 0
    failed_calls: int = 0


class FactsPublisher:
    """Queues new transactions' facts (`publish`) and sends them in batches (`run`)."""

    def __init__(
        self,
        ledger: PaymentLedger,
        *,
        capacity: int = DEFAULT_CAPACITY,
        per_call: int = MAX_FACTS_PER_CALL,
        deadline: float = REGISTER_DEADLINE_SECONDS,
        base_backoff: float = 0.1,
        max_backoff: float = 2.0,
    ) -> None:
        if capacity < 1 or not 1 <= per_call <= MAX_FACTS_PER_CALL:
            raise ValueError("capacity must be positive, per_call 1 to MAX_FACTS_PER_CALL")
        self._ledger = ledger
        self._capacity = capacity
        self._per_call = per_call
        self._deadline = deadline
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._queue: collections.deque[_Entry] = collections.deque()
        self._in_flight: list[_Entry] = []
        self._wake = asyncio.Event()
        self._running = False
        self._failures = 0
        self.stats = FactsStats()

    @property
    def queued(self) -> int:
        """How many transactions wait to be sent."""
        return len(self._queue)

    @property
    def healthy(self) -> bool:
        """Running, and its last call (if any) succeeded: worth waiting for."""
        return self._running and not self._failures

    @property
    def waiting(self) -> int:
        """How many futures returned by `publish` are not resolved yet."""
        entries = itertools.chain(self._queue, self._in_flight)
        return sum(1 for _, done in entries if done is not None and not done.done())

    def publish(self, transaction: Transaction) -> asyncio.Future[bool] | None:
        """Queue a committed new transaction's facts; never blocks, never raises.

        Returns a future resolved True once a call carrying them succeeded, False if they
        were dropped or lost or the publisher stopped first; None (nothing to wait for)
        while the publisher is unhealthy or not running. A waiter may cancel the future
        (a timeout, its request gone): the publisher does not mind.
        """
        if len(self._queue) >= self._capacity:
            _, dropped = self._queue.popleft()
            _resolve(dropped, False)
            self.stats.dropped += 1
        done = asyncio.get_running_loop().create_future() if self.healthy else None
        facts = TransactionFacts(
            transaction_id=transaction.id,
            merchant_id=transaction.merchant_id,
            amount=transaction.amount,
            currency=transaction.currency,
            traceparent=current_traceparent(),
        )
        self._queue.append((facts, done))
        self.stats.published += 1
        self._wake.set()
        return done

    async def run(self) -> None:
        """Send queued facts until cancelled, one call at a time.

        On the way out every future still pending is resolved False, so none leaks and
        no waiter outlives the loop.
        """
        if self._running:
            raise RuntimeError("the facts publisher is already running")
        self._running = True
        self._failures = 0
        try:
            await self._send_until_cancelled()
        finally:
            self._running = False
            for _, done in itertools.chain(self._in_flight, self._queue):
                _resolve(done, False)
            self._in_flight = []
            # Facts queued from now on have no future (not running): nothing to resolve.
            self._queue = collections.deque((facts, None) for facts, _ in self._queue)

    async def _send_until_cancelled(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            count = min(self._per_call, len(self._queue))
            self._in_flight = [self._queue.popleft() for _ in range(count)]
            batch = [facts for facts, _ in self._in_flight]
            try:
                # Whatever the adapter does about deadlines, a call never holds up the
                # queue for longer than this. asyncio.timeout, not wait_for: on Python
                # 3.11 wait_for can swallow a cancellation that races with its timeout.
                async with asyncio.timeout(self._deadline):
                    with on_behalf_of(facts.traceparent for facts in batch):
                        await self._ledger.register_transactions(batch)
            except Exception as error:
                metrics.outbox_failures.labels("facts").inc(len(batch))
                self._failures += 1
                failures = self._failures
                self.stats.failed_calls += 1
                self.stats.lost += len(batch)
                self._settle(False)
                if failures == 1 or failures % 100 == 0:
                    log.warning(
                        "cannot register transactions at the payment service; their first "
                        "payments will look them up",
                        extra={
                            "transactions": len(batch),
                            "failures": failures,
                            "error": type(error).__name__,
                        },
                    )
                await asyncio.sleep(
                    min(self._max_backoff, self._base_backoff * 2 ** min(failures - 1, 16))
                )
                continue
            if self._failures:
                log.info("registering transactions works again", extra={"failures": self._failures})
                self._failures = 0
            self.stats.calls += 1
            self.stats.sent += len(batch)
            metrics.outbox_delivered.labels("facts").inc(len(batch))
            self._settle(True)

    def _settle(self, acknowledged: bool) -> None:
        for _, done in self._in_flight:
            _resolve(done, acknowledged)
        self._in_flight = []


def _resolve(done: asyncio.Future[bool] | None, acknowledged: bool) -> None:
    # A waiter that timed out or whose request went away has cancelled its future.
    if done is not None and not done.done():
        done.set_result(acknowledged)


async def purge_idempotency_keys(
    units: UnitsOfWork, older_than: timedelta = IDEMPOTENCY_RETENTION
) -> int:
    """Forget the idempotency keys older than the retention; how many."""
    async with units(Mode.LOCKED) as uow:
        purged = await uow.idempotency.purge(older_than)
        await uow.commit()
    return purged
