"""Units of work on PostgreSQL, and the one concurrency tactic every service reuses.

A service's unit of work is a port (`pi/<svc>/app/ports.py`): repositories as attributes,
`async with uow:` around one business step, `await uow.commit()` to keep it; leaving the
block without a commit rolls back. Its PostgreSQL adapter subclasses `PostgresUnitOfWork`
and builds its repositories on the unit, which runs their statements:

    row = await unit.read(_GET_REF, {"p_id": ref_id})     # in LOCKED mode, `unit.locking`
    rows = await unit.read_all(_LIST, params)             #   says to add FOR UPDATE
    written = unit.hit(_UPDATE_IF_UNCHANGED, params)      # queued: Deferred[bool]
    unit.expect(written)                                  # must hold, or the unit conflicts
    unit.execute(_INSERT, values)                         # queued: Deferred[int]

One unit runs in one of three modes (`Mode`), which the use case never sees:

- `OPTIMISTIC`: reads are snapshot reads, outside any transaction and without locks;
  writes are queued. `commit()` hands them to the process's group commit
  (`pi.platform.db.group_commit`), which sends BEGIN and every queued write of the units
  committing meanwhile in one round trip, checks each unit's `expect`ed results, and
  COMMITs them together (a second round trip, one fsync); a unit whose check fails keeps
  nothing and raises `Conflict`: a row changed since it was read. Writes are conditional on
  what was read (`UPDATE .. WHERE version = :read`, `INSERT .. ON CONFLICT DO NOTHING`),
  so a miss is seen, and nothing a missed write was meant to go with is kept.
- `LOCKED`: the unit is a database transaction from its first statement; reads run in it
  and repositories lock what they read (`unit.locking`), so what was decided holds.
  Queued writes are sent, in order, before the next read and at the commit, so a read
  sees the unit's own writes.
- `READ`: autocommit reads only (queries); queuing a write is an error.

`optimistically(new_unit, step)` is the tactic (in `pi.platform.kernel.units`, with `Mode`
and `Conflict`, so that use cases name them without importing the database): run `step`
on an OPTIMISTIC unit, and if it conflicts, once more on a LOCKED one, where the answer
is final. The common case
costs the reads plus two round trips and takes no lock; only a request that met a
concurrent change pays for locks. A step must therefore be safe to run twice: decide
from what it reads, call nothing outside the database between its reads and its commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Self

from pi.platform.db.batch import Batch, Deferred
from pi.platform.db.database import Database
from pi.platform.db.statements import Conn, Record, Statement
from pi.platform.kernel.units import Conflict, Mode
from pi.platform.observability.units import UnitObservation, unit_ended, unit_started

__all__ = ["PostgresUnitOfWork"]

_NO_PARAMS: Mapping[str, Any] = {}


class _Queued:
    __slots__ = ("hit", "params", "result", "returns_row", "statement")

    def __init__(
        self,
        statement: Statement,
        params: Mapping[str, Any],
        result: Deferred[Any],
        *,
        returns_row: bool = False,
        hit: bool = False,
    ) -> None:
        self.statement = statement
        self.params = params
        self.result = result
        self.returns_row = returns_row
        self.hit = hit


class PostgresUnitOfWork:
    """The PostgreSQL side of a service's unit of work; subclasses add repositories.

    A unit is used for one `async with` block; make a new one per business step (the
    service's factory does). Subclasses build their repositories in `__init__` on
    `self` (the unit), e.g. `self.payments = PostgresPayments(self)`.
    """

    def __init__(self, database: Database, mode: Mode = Mode.LOCKED) -> None:
        self._database = database
        self._mode = mode
        self._batch = Batch()  # OPTIMISTIC: what the commit sends with its BEGIN
        self._batched = 0
        self._pending: list[_Queued] = []  # LOCKED: sent before the next read
        self._expected: list[tuple[Deferred[Any], str]] = []
        self._session: AbstractAsyncContextManager[Conn] | None = None
        self._conn: Conn | None = None
        self._entered = False
        self._committed = False
        self._observed: UnitObservation | None = None

    # -- what repositories use ---------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def locking(self) -> bool:
        """Whether reads must lock the rows they return (SELECT .. FOR UPDATE)."""
        return self._mode is Mode.LOCKED

    async def read(
        self, statement: Statement, params: Mapping[str, Any] = _NO_PARAMS
    ) -> Record | None:
        """The first row `statement` returns, or None."""
        if self._mode is Mode.LOCKED:
            conn = await self._transaction()
            await self._flush(conn)
            return await statement.first(conn, params)
        async with self._database.reading() as conn:
            return await statement.first(conn, params)

    async def read_all(
        self, statement: Statement, params: Mapping[str, Any] = _NO_PARAMS
    ) -> list[Record]:
        """Every row `statement` returns."""
        if self._mode is Mode.LOCKED:
            conn = await self._transaction()
            await self._flush(conn)
            return await statement.all(conn, params)
        async with self._database.reading() as conn:
            return await statement.all(conn, params)

    def first(
        self, statement: Statement, params: Mapping[str, Any] = _NO_PARAMS
    ) -> Deferred[Record | None]:
        """Queue a write; its first returned row (RETURNING), or None."""
        if self._mode is Mode.OPTIMISTIC:
            self._batched += 1
            return self._batch.first(statement, params)
        result: Deferred[Record | None] = Deferred()
        self._queue(_Queued(statement, params, result, returns_row=True))
        return result

    def execute(
        self, statement: Statement, params: Mapping[str, Any] = _NO_PARAMS
    ) -> Deferred[int]:
        """Queue a write; the number of rows it affected."""
        if self._mode is Mode.OPTIMISTIC:
            self._batched += 1
            return self._batch.execute(statement, params)
        result: Deferred[int] = Deferred()
        self._queue(_Queued(statement, params, result))
        return result

    def hit(self, statement: Statement, params: Mapping[str, Any] = _NO_PARAMS) -> Deferred[bool]:
        """Queue a conditional write; whether its condition held (it affected or returned
        a row)."""
        if self._mode is Mode.OPTIMISTIC:
            self._batched += 1
            return self._batch.hit(statement, params)
        result: Deferred[bool] = Deferred()
        self._queue(_Queued(statement, params, result, hit=True))
        return result

    async def connection(self) -> Conn:
        """The LOCKED unit's transaction with every queued write sent: for a write whose
        result the use case needs before it goes on, and for helpers that take a
        connection (`Idempotency.claim`, `complete`)."""
        if self._mode is not Mode.LOCKED:
            raise RuntimeError(f"a {self._mode.value} unit runs no statement in a transaction")
        conn = await self._transaction()
        await self._flush(conn)
        return conn

    def expect(self, written: Deferred[bool], what: str = "a row changed") -> None:
        """The unit conflicts (rolls back, `Conflict`) unless `written` turns out true."""
        self._expected.append((written, what))

    # -- what the use case sees --------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a unit of work is used for one block; make a new one")
        self._entered = True
        self._observed = unit_started(self._mode.value)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._observed is not None:  # one timing (and span, if traced) per unit
            unit_ended(self._observed, committed=self._committed, error=exc)
        session, self._session, self._conn = self._session, None, None
        if session is None:
            return
        if self._committed:
            await session.__aexit__(None, None, None)
        else:
            # Rolls the transaction back (a block left without commit, or an error).
            await session.__aexit__(_RolledBack, _RolledBack(), None)

    async def commit(self) -> None:
        """Keep what the block wrote; `Conflict` if an expected write missed (nothing is
        kept then)."""
        if self._mode is Mode.READ:
            raise RuntimeError("a READ unit has nothing to commit")
        if self._mode is Mode.OPTIMISTIC:
            await self._commit_batch()
        else:
            conn = await self._transaction()
            await self._flush(conn)
            self._check_expected()
            self._committed = True
            session, self._session, self._conn = self._session, None, None
            assert session is not None
            await session.__aexit__(None, None, None)

    # -- internals ---------------------------------------------------------------------

    def _queue(self, queued: _Queued) -> None:
        if self._mode is Mode.READ:
            raise RuntimeError("a READ unit cannot write")
        self._pending.append(queued)

    async def _commit_batch(self) -> None:
        if self._batched:
            # Shared with the units other requests commit meanwhile (group commit); a
            # failed check keeps nothing of this unit and raises here.
            await self._database.commit_batch(self._batch, self._check_expected)
        self._committed = True

    def _check_expected(self) -> None:
        for written, what in self._expected:
            if not written.value:
                raise Conflict(what)

    async def _transaction(self) -> Conn:
        if self._conn is None:
            self._session = self._database.transaction()
            self._conn = await self._session.__aenter__()
        return self._conn

    async def _flush(self, conn: Conn) -> None:
        pending, self._pending = self._pending, []
        for queued in pending:
            if queued.returns_row:
                queued.result._set(await queued.statement.first(conn, queued.params))
            else:
                # PostgreSQL counts the rows an UPDATE or INSERT wrote, RETURNING or not.
                count = await queued.statement.execute(conn, queued.params)
                queued.result._set(count > 0 if queued.hit else count)
        self._check_expected_done()

    def _check_expected_done(self) -> None:
        for written, what in self._expected:
            if written._done and not written.value:
                raise Conflict(what)


class _RolledBack(Exception):
    """Passed to the transaction's exit to make it roll back."""
