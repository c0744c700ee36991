"""Batches: statements queued to run together at the start of a transaction.

A `Batch` queues statements whose parameters do not depend on each other's results (see
`pi.platform.db.statements` for the statements themselves); `Database.transaction(batch)`
runs one with its BEGIN in one round trip, and the group commit
(`pi.platform.db.group_commit`) runs the batches of many units in one transaction. Each
queued statement hands back a `Deferred`, filled in when the batch runs. `StatementQueue`
is what repositories queue writes on: a `Batch`, or a unit of work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar, cast

import psycopg

from pi.platform.db.statements import Conn, Record, Statement, merged_cursor

__all__ = ["Batch", "Deferred", "StatementQueue"]

_NO_PARAMS: Mapping[str, Any] = {}

# The attribute of a psycopg connection that holds the cursor sending a batch's BEGIN and
# COMMIT (reused, as the statements' cursors are).
_COMMANDS = "_pi_commands_cursor"

_T = TypeVar("_T")


class Deferred(Generic[_T]):
    """A result a `Batch` fills in when it runs: `value`, read after the run."""

    __slots__ = ("_done", "_value")

    def __init__(self) -> None:
        self._done = False
        self._value: _T | None = None

    @property
    def value(self) -> _T:
        if not self._done:
            raise RuntimeError("the batch has not run yet")
        return cast(_T, self._value)

    def _set(self, value: _T) -> None:
        self._value = value
        self._done = True


# What a queued statement's `Deferred` holds: its first row, its row count, or whether
# it affected (or returned) any row.
_ROW, _COUNT, _HIT = range(3)


class _Queued:
    __slots__ = ("kind", "params", "result", "statement")

    def __init__(
        self, statement: Statement, params: Mapping[str, Any], kind: int, result: Any
    ) -> None:
        self.statement = statement
        self.params = params
        self.kind = kind
        self.result = result


class Batch:
    """Statements run together, in order, at the start of a transaction (see the module
    docstring): `first`, `execute` and `hit` queue one and return the `Deferred` of its
    result, as `Statement.first` and `Statement.execute` would give it. Run once."""

    __slots__ = ("_queued", "_values")

    def __init__(self) -> None:
        self._queued: list[_Queued] = []
        self._values: list[Mapping[str, Any]] | None = None  # bound, once (`bind`)

    def first(
        self, statement: Statement, params: Mapping[str, Any] = _NO_PARAMS
    ) -> Deferred[Record | None]:
        """Queue `statement`; its first row, or None when there is none."""
        result: Deferred[Record | None] = Deferred()
        self._values = None
        self._queued.append(_Queued(statement, params, _ROW, result))
        return result

    def execute(
        self, statement: Statement, params: Mapping[str, Any] = _NO_PARAMS
    ) -> Deferred[int]:
        """Queue `statement`; the number of rows it affected (or returned)."""
        result: Deferred[int] = Deferred()
        self._values = None
        self._queued.append(_Queued(statement, params, _COUNT, result))
        return result

    def hit(self, statement: Statement, params: Mapping[str, Any] = _NO_PARAMS) -> Deferred[bool]:
        """Queue `statement`; whether it affected (or returned) any row: for a
        conditional INSERT or UPDATE, whether its condition held."""
        result: Deferred[bool] = Deferred()
        self._values = None
        self._queued.append(_Queued(statement, params, _HIT, result))
        return result

    def bind(self) -> None:
        """Process every statement's values now (once; a rerun sends them again): a bad one
        (a naive datetime) raises here, before anything is sent."""
        if self._values is None:
            self._values = [item.statement._bind(item.params) for item in self._queued]

    async def begin_in_pipeline(self, conn: Conn, pipeline: psycopg.AsyncPipeline) -> None:
        """For `Database`: BEGIN and the statements on `conn`, in `pipeline` (which it is
        in), then one sync: one round trip. Raises the first error psycopg reports; the
        transaction is then failed (the caller rolls back)."""
        await Batch.begin_many_in_pipeline(conn, pipeline, (self,))

    @staticmethod
    async def begin_many_in_pipeline(
        conn: Conn,
        pipeline: psycopg.AsyncPipeline,
        batches: Iterable[Batch],
        *,
        setting: bytes | None = None,
    ) -> int:
        """BEGIN, `setting` (a `SET LOCAL` for the transaction) and the statements of every
        batch, in order, then one sync (one round trip); each batch's `Deferred`s then
        hold its results. Raises as `begin_in_pipeline` does. Batches of the same shape go
        position by position, merging the runs of a statement that has a set-based form
        (`pi.platform.db.merging`); returns how many runs went merged."""
        batches = list(batches)
        # Every value processed before anything is sent: a bad one (a naive datetime)
        # fails the batch before the transaction began. (One psycopg cannot send, an int
        # beyond int8, fails it while it is being queued, with OverflowError: the
        # transaction is rolled back then.)
        for batch in batches:
            batch.bind()
        commands = _commands_cursor(conn)
        await commands.execute(b"BEGIN")
        if setting is not None:
            await commands.execute(setting)
        sender = _Sender(conn)
        for units in _same_shapes(batches):
            if len(units) > 1 and any(item.statement.merged for item in units[0]._queued):
                # Units of one shape go position by position, a statement with a merged
                # form once for all of them (`pi.platform.db.merging`).
                for position in range(len(units[0]._queued)):
                    await sender.send_all([_run(unit, position) for unit in units])
            else:
                for unit in units:
                    for position in range(len(unit._queued)):
                        await sender.send(*_run(unit, position))
        await pipeline.sync()
        for collect in sender.collectors:
            await collect()  # the results are there already: no I/O
        return sender.merged

    async def commit_in_pipeline(self, conn: Conn) -> None:
        """For `Database`: queue the COMMIT (sent when the pipeline ends, as its last
        round trip)."""
        await Batch.commit_in_pipeline_of(conn)

    @staticmethod
    async def commit_in_pipeline_of(conn: Conn) -> None:
        """Queue the COMMIT of the transaction `begin_many_in_pipeline` began."""
        await _commands_cursor(conn).execute(b"COMMIT")


_Run = tuple[_Queued, Mapping[str, Any]]


def _run(batch: Batch, position: int) -> _Run:
    assert batch._values is not None
    return batch._queued[position], batch._values[position]


def _same_shapes(batches: list[Batch]) -> list[list[Batch]]:
    """The batches by their sequence of statements (the same step of the same use case),
    in order of first appearance."""
    shapes: dict[tuple[Statement, ...], list[Batch]] = {}
    for batch in batches:
        shapes.setdefault(tuple(item.statement for item in batch._queued), []).append(batch)
    return list(shapes.values())


class _Sender:
    """Sends runs of statements into the pipeline and keeps how to read their results."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        # A cursor holds one result: the n-th run of a statement (or of a merged form) in
        # this pipeline takes the n-th cursor kept for it on this connection.
        self._runs: dict[object, int] = {}
        self.collectors: list[Callable[[], Awaitable[None]]] = []
        self.merged = 0  # runs sent as part of a merged statement

    def _nth(self, what: object) -> int:
        run = self._runs.get(what, 0)
        self._runs[what] = run + 1
        return run

    async def send(self, item: _Queued, bound: Mapping[str, Any]) -> None:
        statement = item.statement
        cursor = statement._cursor(self._conn, self._nth(statement))
        await cursor.execute(statement.sql, bound, prepare=True)

        async def collect() -> None:
            if item.kind == _ROW:
                item.result._set(await cursor.fetchone())
            elif item.kind == _COUNT:
                item.result._set(cursor.rowcount)
            else:
                item.result._set(cursor.rowcount > 0)

        self.collectors.append(collect)

    async def send_all(self, runs: list[_Run]) -> None:
        """Runs of one statement: as one merged statement when it has a form and they write
        distinct rows, else one by one."""
        statement = runs[0][0].statement
        form = statement.merged
        values = [bound for _, bound in runs]
        if form is None or len({form.key_of(bound) for bound in values}) < len(values):
            for item, bound in runs:
                await self.send(item, bound)
            return
        cursor = merged_cursor(self._conn, form, self._nth(form))
        await cursor.execute(form.sql, form.arrays(values), prepare=True)
        self.merged += len(runs)

        async def collect() -> None:
            per_run = form.outcomes(await cursor.fetchall(), values)
            for (item, _), rows in zip(runs, per_run, strict=True):
                if item.kind == _ROW:
                    first = rows[0] if rows and form.returning else None
                    item.result._set(None if first is None else statement._record(first, cursor))
                elif item.kind == _COUNT:
                    item.result._set(len(rows))
                else:
                    item.result._set(bool(rows))

        self.collectors.append(collect)


def _commands_cursor(conn: Conn) -> psycopg.AsyncCursor[Any]:
    cursor: psycopg.AsyncCursor[Any] | None = conn.__dict__.get(_COMMANDS)
    if cursor is None:
        cursor = conn.__dict__[_COMMANDS] = conn.cursor()
    return cursor


class StatementQueue(Protocol):
    """Where writes are queued to run later in a transaction: a `Batch`, or a unit of work
    (`pi.platform.db.unit_of_work`)."""

    def first(
        self, statement: Statement, params: Mapping[str, Any] = ...
    ) -> Deferred[Record | None]: ...

    def execute(self, statement: Statement, params: Mapping[str, Any] = ...) -> Deferred[int]: ...

    def hit(self, statement: Statement, params: Mapping[str, Any] = ...) -> Deferred[bool]: ...
