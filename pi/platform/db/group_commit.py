"""Group commit: the OPTIMISTIC units of concurrent requests committed together.

An OPTIMISTIC unit ends with a batch of writes and the checks to make on their results
(`pi.platform.db.unit_of_work`). Alone, each such unit costs a BEGIN, its statements and a
COMMIT: two round trips, a transaction and a WAL flush (an fsync) of its own. Here
concurrent units hand their batch to the process's `GroupCommit`, which sends whatever is
waiting as one database transaction:

    BEGIN; unit 1's statements; unit 2's statements; ...    one round trip (a pipeline)
    each unit's checks on its own results
    COMMIT                                                  one round trip, one fsync

and answers each unit after that COMMIT. Units of the same step (the same statements in
the same order) go position by position, and a statement they all run goes once for all
of them as a set-based statement where it has one (`pi.platform.db.merging`): sixteen
idempotency claims are one INSERT .. SELECT FROM unnest(..).

What makes it adapt to load without a timer: a unit that finds fewer than `max_groups`
groups in flight starts one at once (at idle a single request commits without waiting, as
before), and a unit that finds them all busy waits for the next, which takes every unit
that arrived meanwhile (up to `max_units`). The busier the process, the larger the groups.

One unit's failure does not fail the others:

- a check that fails (a conditional write that missed: `Conflict`) fails its unit only;
  the transaction is rolled back and the other units run again as a new group (their
  statements are conditional on what they read, so a second run decides the same way,
  or misses in turn). Each rerun leaves out at least one unit, and after `MAX_ROUNDS`
  the rest commit one by one;
- an error from PostgreSQL (a constraint, a value it refuses) cannot be pinned on a unit
  from a pipeline, so the transaction is rolled back and each unit runs alone, in its own
  transaction on its own connection, as it would without grouping: the one at fault gets
  its error, the others commit;
- a group waits at most 100 ms for a row lock (held by a LOCKED unit of another
  request); then its units run alone the same way, so no unit queues behind another's
  lock wait.

Sending units side by side in one transaction is as safe as running them in concurrent
READ COMMITTED transactions, which interleave their statements too: a unit's writes are
conditional on what it read, so a unit whose rows another changed misses and is rerun;
within one transaction a later statement sees an earlier unit's write at once instead of
waiting for its lock and then seeing it.

The choice against savepoints per unit: a SAVEPOINT is a subtransaction on the server
(its own XID once it writes, and past 64 per transaction every snapshot pays for the
overflow), while a rollback and rerun costs nothing until a unit fails, which under the
optimistic tactic is the rare case.

A unit whose caller is cancelled while it waits is still committed if its group already
took it: as with a COMMIT in flight, the client sees an unknown outcome and retries with
its idempotency key. A crash before the COMMIT loses only units nobody was answered for.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from pi.platform.db.batch import Batch
from pi.platform.db.statements import Conn

__all__ = ["DEFAULT_MAX_GROUPS", "DEFAULT_MAX_UNITS", "MAX_ROUNDS", "GroupCommit", "GroupStats"]

# Groups in flight at once, each on a connection of its own: while one waits for its
# COMMIT's fsync, the next is sent. More would split the waiting units into smaller groups.
DEFAULT_MAX_GROUPS = 2
# Units in one transaction at most: bounds the time a group holds the rows it writes and
# the size of one pipeline.
DEFAULT_MAX_UNITS = 64
# Reruns of a group after some of its units failed their checks, before the rest commit
# one at a time.
MAX_ROUNDS = 3
# A group waits this long for a row lock (one a LOCKED unit of another request holds)
# before its units are committed alone: the other units of the group must not queue
# behind that lock, nor the units waiting for the committer behind the group.
_LOCK_TIMEOUT = b"SET LOCAL lock_timeout = '100ms'"

_Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]


@dataclasses.dataclass
class GroupStats:
    """What the committer did: for tests, logs and the benchmark."""

    groups: int = 0  # transactions committed for groups (reruns included)
    units: int = 0  # units committed in them
    largest: int = 0  # the most units one committed group held
    reruns: int = 0  # groups sent again after a unit failed its checks
    alone: int = 0  # units sent alone after a database error in their group
    merged: int = 0  # statement runs of committed groups sent merged with others


class _Waiting:
    __slots__ = ("batch", "check", "done")

    def __init__(self, batch: Batch, check: Callable[[], None], done: asyncio.Future[None]):
        self.batch = batch
        self.check = check
        self.done = done


class _StatementFailed(Exception):
    """The group's transaction failed on a statement; it was rolled back."""


class GroupCommit:
    """Commits the batches of concurrent OPTIMISTIC units together (module docstring)."""

    def __init__(
        self,
        pool: _Pool,
        *,
        max_groups: int = DEFAULT_MAX_GROUPS,
        max_units: int = DEFAULT_MAX_UNITS,
    ) -> None:
        if max_groups < 1 or max_units < 1:
            raise ValueError("a group commit needs at least one group of one unit")
        self._pool = pool
        self._max_groups = max_groups
        self._max_units = max_units
        self._waiting: deque[_Waiting] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = GroupStats()

    async def commit(self, batch: Batch, check: Callable[[], None]) -> None:
        """Run `batch` in a transaction shared with other units, call `check` once its
        results are in (raise to reject this unit: nothing of it is kept), and return once
        the transaction committed; raise what `check` or the database raised otherwise."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(batch, check, done))
        if self._in_flight < self._max_groups:
            self._in_flight += 1
            task = asyncio.create_task(self._drain(), name="pi-group-commit")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await done

    async def _drain(self) -> None:
        # Commits groups while units wait, then gives its place back.
        try:
            while self._waiting:
                group: list[_Waiting] = []
                while self._waiting and len(group) < self._max_units:
                    unit = self._waiting.popleft()
                    # A caller cancelled before its unit was taken: nobody will be told.
                    if not unit.done.cancelled():
                        group.append(unit)
                try:
                    await self._commit_group(group)
                except BaseException as error:
                    for unit in group:
                        _fail(unit, error)
                    if not isinstance(error, Exception):
                        raise
        finally:
            self._in_flight -= 1

    async def close(self) -> None:
        """Wait for the groups in flight (their callers are being answered); for
        `Database.close`, before the pool goes."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _commit_group(self, group: list[_Waiting]) -> None:
        conn = await self._pool.getconn()
        try:
            for _ in range(MAX_ROUNDS):
                try:
                    group = await self._round(conn, group, _LOCK_TIMEOUT)
                except _StatementFailed:
                    break
                if not group:
                    return
                self.stats.reruns += 1
        finally:
            await self._pool.putconn(conn)
        await self._one_by_one(group)

    async def _round(
        self, conn: Conn, group: list[_Waiting], setting: bytes | None = None
    ) -> list[_Waiting]:
        """One transaction for `group`: committed if every unit passed its checks (they
        are answered), else rolled back; the units still to commit."""
        sendable = [unit for unit in group if _bound(unit)]
        if not sendable:
            return []
        try:
            async with conn.pipeline() as pipeline:
                merged = await Batch.begin_many_in_pipeline(
                    conn, pipeline, [unit.batch for unit in sendable], setting=setting
                )
                failed = [unit for unit in sendable if not _passes(unit)]
                if not failed:
                    await Batch.commit_in_pipeline_of(conn)
        except psycopg.Error as error:
            await _rollback(conn)
            waited = setting is not None and isinstance(error, psycopg.errors.LockNotAvailable)
            if conn.closed or (len(sendable) == 1 and not waited):
                # The connection is gone (with it the transaction, or its COMMIT may have
                # gone through), or the unit alone got its own error. Either way the
                # callers learn it (unknown outcome: they retry with their idempotency
                # keys), and nothing runs twice here. A unit alone that only gave up
                # waiting for a lock is no failure: it runs again without the timeout.
                for unit in sendable:
                    _fail(unit, error)
                return []
            raise _StatementFailed from error
        except BaseException:
            # Cancelled (the process is stopping) with the transaction open: it must not
            # stay open, holding its locks, on a connection going back to the pool.
            await _rollback(conn)
            raise
        if failed:
            await _rollback(conn)
            return [unit for unit in sendable if not unit.done.done()]
        self._record(len(sendable))
        self.stats.merged += merged
        for unit in sendable:
            _succeed(unit)
        return []

    async def _one_by_one(self, group: list[_Waiting]) -> None:
        # Each unit in a transaction of its own, concurrently and with no lock timeout,
        # as without grouping: the one at fault gets its error, a unit that waits for a
        # lock waits alone.
        async def alone(unit: _Waiting) -> None:
            async with self._pool.connection() as conn:
                await self._round(conn, [unit])
            self.stats.alone += 1

        await asyncio.gather(*(alone(unit) for unit in group if not unit.done.done()))

    def _record(self, size: int) -> None:
        stats = self.stats
        stats.groups += 1
        stats.units += size
        stats.largest = max(stats.largest, size)


def _bound(unit: _Waiting) -> bool:
    # A value no statement can take (a naive datetime) fails its unit before anything is
    # sent, as it does without grouping.
    try:
        unit.batch.bind()
    except (ValueError, TypeError, OverflowError) as error:
        _fail(unit, error)
        return False
    return True


def _passes(unit: _Waiting) -> bool:
    try:
        unit.check()
    except Exception as error:
        _fail(unit, error)
        return False
    return True


def _succeed(unit: _Waiting) -> None:
    if not unit.done.done():
        unit.done.set_result(None)


def _fail(unit: _Waiting, error: BaseException) -> None:
    if not unit.done.done():
        unit.done.set_exception(error)


async def _rollback(conn: Conn) -> None:
    # Out of pipeline mode; `rollback()` also forgets prepared statements a failed
    # pipeline may not have prepared. If it fails the connection is broken: the pool
    # replaces it, and the next round gets a connection error of its own.
    with suppress(psycopg.Error):
        await conn.rollback()
