"""Statements: built with SQLAlchemy Core, run on PostgreSQL by psycopg directly.

`conn.execute(core_statement, params)` on a SQLAlchemy connection spends about twice
psycopg's own CPU around each statement (the compiled-cache lookup, parameter and result
processing, the greenlet hop of the async adapter, the result object): measured on the
2-core box, ~150 µs against ~50 µs for a primary-key SELECT. A `Statement` compiles its
Core statement once, for `postgresql+psycopg`, and sends that SQL on a psycopg connection
as a server-side prepared statement:

    _GET = Statement(select(accounts).where(accounts.c.id == bindparam("p_id")))

    async with database.reading() as conn:
        row = await _GET.first(conn, {"p_id": account_id})
    row.balance

`conn` is a `Conn`: the psycopg `AsyncConnection` a `pi.platform.db.database.Database`
unit hands out. SQLAlchemy is the SQL builder only; it never executes anything here.

- Same transaction: the statement runs on the caller's connection, so it is part of the
  transaction the unit started and commits or rolls back with it; on the autocommit
  connection of `Database.reading()` it commits on its own.
- Same values as SQLAlchemy would give: parameters go through the column types' bind
  processors (`UtcDateTime`, JSON(B) → `Jsonb`, ...) and result columns through their
  result processors. Rows are named tuples: `row.column` or `row[i]`.
- psycopg's errors: a failing statement raises what psycopg raised (`IntegrityError`, ...;
  catch them under the names of `pi.platform.db.errors`); a value a bind processor refuses
  (a naive datetime) raises that processor's error (ValueError) before anything is sent.
- No schema in the SQL: tables must carry no schema; the connection's `search_path` (set
  by `Database` to the service's schema) finds them, as it does for hand-written SQL.

Many rows: `execute_many(conn, [params, ...])` runs the statement once per mapping, all
in one round trip (psycopg's `executemany` pipelines them): for statements that must run
once per row, in order (an UPDATE per row). Runs on distinct rows of a statement with a
set-based form (`pi.platform.db.merging`) go as that one statement instead. Where one
statement can do the work, pass arrays instead, e.g. `col = ANY(:ids)` for `col IN (...)`
(`for_any_of` builds it) or `INSERT ... SELECT ... FROM unnest(:ids, :amounts)` for a
multi-row INSERT: one statement, prepared once whatever the number of rows.

One round trip for a whole unit: a `Batch` (`pi.platform.db.batch`) queues statements
whose parameters do not depend on each other's results, and
`pi.platform.db.database.Database.transaction(batch)` runs them at the start of the
transaction, in one pipeline with the BEGIN (one round trip; the COMMIT is one more). The
block then reads each result from the `Deferred` the batch handed out, and decides: raise
to roll back.

    batch = Batch()
    claimed = batch.first(_CLAIM, claim_params)
    written = batch.hit(_UPDATE_IF_UNCHANGED, update_params)
    async with database.transaction(batch):
        if claimed.value is None or not written.value:
            raise _Retry  # rolled back: take the careful path

Every statement of a batch runs, whatever the earlier ones returned: a conditional
statement that missed does not stop the ones after it, so those must be harmless in a
transaction that will be rolled back. The first error aborts the rest and is raised, and
the transaction rolls back. Units of work commit their batches through the group commit
(`pi.platform.db.group_commit`), which runs many batches in one transaction.

Not for statements that need SQLAlchemy at execution time: client-side column defaults,
expanding (`IN`) or literal-execute parameters; the constructor refuses them (use
`= ANY(array)`, see `for_any_of`). A prebuilt `table.insert()` takes every column as a
parameter (SQLAlchemy would leave out the ones not given).
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, cast

import psycopg
from psycopg.rows import RowMaker, tuple_row
from psycopg.types.numeric import Int8BinaryDumper, Int8Dumper
from sqlalchemy import Column, Insert, String, Update, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.psycopg import PGDialectAsync_psycopg
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement, ColumnElement
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine

from pi.platform.db.errors import MultipleResultsFound, NoResultFound
from pi.platform.db.merging import MergedForm

__all__ = ["Conn", "Record", "Statement", "for_any_of", "merged_cursor"]

#: The connection statements run on: a psycopg connection from a `Database` unit.
Conn: TypeAlias = psycopg.AsyncConnection[Any]

# The dialect statements are compiled for (SQLAlchemy's psycopg dialect), with its DB-API
# module loaded so that column types process values as they would on a real engine.
_PSYCOPG: Dialect = PGDialectAsync_psycopg(dbapi=PGDialectAsync_psycopg.import_dbapi())

_NO_PARAMS: Mapping[str, Any] = {}

# The attributes of a psycopg connection that hold its reused cursors.
_CURSORS = "_pi_statement_cursors"
_MERGED_CURSORS = "_pi_merged_cursors"


_Processor = Callable[[Any], Any]


class Record(Protocol):
    """A result row: a column by attribute (`row.amount`) or by position (`row[2]`)."""

    def __getattr__(self, name: str) -> Any: ...

    def __getitem__(self, index: int) -> Any: ...

    def __len__(self) -> int: ...


class Statement:
    """A Core statement compiled once and run on PostgreSQL as a prepared statement.

    Build it once (at module level, next to the tables), run it with `execute`, `first`,
    `one` or `all` on the caller's connection (`Conn`) with a mapping of parameter values
    by bind name (a prebuilt INSERT's are its column keys), or with `execute_many` and
    one such mapping per run.
    """

    __slots__ = (
        "_bind_processors",
        "_defaults",
        "_merged_row_maker",
        "_result_types",
        "_row_maker",
        "merged",
        "sql",
    )

    def __init__(self, statement: Executable) -> None:
        if not isinstance(statement, ClauseElement):
            raise TypeError(f"not a Core statement: {statement!r}")
        compiled = statement.compile(dialect=_PSYCOPG)
        assert isinstance(compiled, SQLCompiler)
        if compiled.insert_prefetch or compiled.update_prefetch or _has_client_defaults(statement):
            raise ValueError("statements with client-side column defaults cannot be prebuilt")
        defaults: dict[str, Any] = {}
        processors: list[tuple[str, _Processor]] = []
        for name, bind in compiled.binds.items():
            if bind.expanding or bind.literal_execute or bind.callable is not None:
                raise ValueError(
                    f"parameter {name!r} is expanding or literal: use = ANY(array) instead"
                )
            if not bind.required:
                defaults[name] = bind.value
            process = bind.type.dialect_impl(_PSYCOPG).bind_processor(_PSYCOPG)
            if process is not None:
                processors.append((name, process))
        #: The SQL sent to PostgreSQL (psycopg `%(name)s` parameters, arrays `%(name)b`).
        self.sql: str = binary_arrays(
            compiled.string,
            {name for name, bind in compiled.binds.items() if isinstance(bind.type, ARRAY)},
        )
        self._defaults = defaults
        self._bind_processors = tuple(processors)
        self._result_types: tuple[TypeEngine[Any], ...] = tuple(
            column.type for column in getattr(statement, "exported_columns", ())
        )
        self._row_maker: RowMaker[Record] | None = None
        self._merged_row_maker: RowMaker[Record] | None = None
        #: Its set-based form, for many runs at once (`pi.platform.db.merging`), if any.
        self.merged: MergedForm | None = MergedForm.of(statement, compiled, _PSYCOPG)

    def __repr__(self) -> str:
        return f"Statement({self.sql!r})"

    async def execute(self, conn: Conn, params: Mapping[str, Any] = _NO_PARAMS) -> int:
        """Run the statement; the number of rows it affected (or returned)."""
        cursor = await self._run(conn, params)
        return cursor.rowcount

    async def execute_many(self, conn: Conn, params_seq: Iterable[Mapping[str, Any]]) -> int:
        """Run the statement once per mapping, in order; the number of rows they affected.

        For statements that return no rows (a SELECT or RETURNING is refused). The runs go
        in one round trip (a pipeline), or as one set-based statement when the statement
        has a merged form and the runs write distinct rows. The first failing run raises
        and leaves the transaction failed: the caller rolls back. Nothing to run: nothing is sent.
        """
        if self._result_types:
            raise ValueError(f"execute_many would drop the rows of {self!r}")
        # Every run bound before any is sent: a bad value (a naive datetime) fails the call
        # without running part of it.
        values = [self._bind(params) for params in params_seq]
        if not values:
            return 0
        form = self.merged
        if (
            form is not None
            and len(values) > 1
            and len({form.key_of(bound) for bound in values}) == len(values)
        ):
            # Runs on distinct rows: one set-based statement does what they would do one
            # after the other (`pi.platform.db.merging`), for one statement's cost.
            cursor = merged_cursor(conn, form)
            await _answered(conn, cursor.execute(form.sql, form.arrays(values), prepare=True))
            return cursor.rowcount
        cursor = self._cursor(conn)
        await _answered(conn, cursor.executemany(self.sql, values))
        return cursor.rowcount

    async def first(self, conn: Conn, params: Mapping[str, Any] = _NO_PARAMS) -> Record | None:
        """The first row, or None when there is none."""
        cursor = await self._run(conn, params)
        return await cursor.fetchone()

    async def one(self, conn: Conn, params: Mapping[str, Any] = _NO_PARAMS) -> Record:
        """Exactly one row; `NoResultFound` or `MultipleResultsFound` otherwise."""
        rows = await self.all(conn, params)
        if not rows:
            raise NoResultFound(f"no row was found when one was required: {self!r}")
        if len(rows) > 1:
            raise MultipleResultsFound(f"{len(rows)} rows were found where one was required")
        return rows[0]

    async def all(self, conn: Conn, params: Mapping[str, Any] = _NO_PARAMS) -> list[Record]:
        """Every row."""
        cursor = await self._run(conn, params)
        return await cursor.fetchall()

    async def _run(self, conn: Conn, params: Mapping[str, Any]) -> psycopg.AsyncCursor[Record]:
        values = self._bind(params)
        cursor = self._cursor(conn)
        await _answered(conn, cursor.execute(self.sql, values, prepare=True))
        return cursor

    def _cursor(self, conn: Conn, run: int = 0) -> psycopg.AsyncCursor[Record]:
        # Cursors per statement and connection, reused: a new one builds its adapters
        # map and transformer again (about a tenth of the statement's CPU). They are kept
        # on the psycopg connection itself, so they go when the pool closes or replaces it.
        # `run`: a pipeline running the statement several times needs a cursor per run.
        attributes = conn.__dict__
        cursors: dict[Statement, list[psycopg.AsyncCursor[Record]]] | None = attributes.get(
            _CURSORS
        )
        if cursors is None:
            cursors = attributes[_CURSORS] = {}
        mine = cursors.get(self)
        if mine is None:
            mine = cursors[self] = []
        while len(mine) <= run:
            mine.append(_new_cursor(conn, self._row_factory))
        return mine[run]

    def _bind(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        if not self._bind_processors and not self._defaults:
            return params
        values = {**self._defaults, **params} if self._defaults else dict(params)
        for name, process in self._bind_processors:
            if name in values:
                values[name] = process(values[name])
        return values

    def _record(self, values: Sequence[Any], cursor: psycopg.AsyncCursor[Any]) -> Record:
        """A row of this statement from the first columns of a merged form's row."""
        maker = self._merged_row_maker
        if maker is None:
            description = (cursor.description or ())[: len(values)]
            maker = self._merged_row_maker = _row_maker(description, self._result_types)
        return maker(values)

    def _row_factory(self, cursor: psycopg.AsyncCursor[Any]) -> RowMaker[Record]:
        # psycopg asks for a row maker per result; the columns of a statement never
        # change, so the first result's description serves for every later one.
        maker = self._row_maker
        if maker is None:
            maker = self._row_maker = _row_maker(cursor.description or (), self._result_types)
        return maker


def for_any_of(
    column: ColumnElement[Any],
    build: Callable[[ColumnElement[bool]], Executable],
    *,
    name: str = "p_ids",
) -> Statement:
    """A statement on the rows whose `column` is one of the list parameter `name`:
    `build(column = ANY(:name))`, an array parameter, so one SQL text, prepared once,
    whatever the list's length.

    The array is of unsized VARCHAR: a cast to VARCHAR(n)[] would silently cut a longer
    value and could match another row.
    """
    return Statement(build(column == any_(bindparam(name, type_=ARRAY(String())))))


def _has_client_defaults(statement: Executable) -> bool:
    # An INSERT compiled without values takes every column as a parameter, so a default
    # that SQLAlchemy would fill in for a missing one would be a missing parameter.
    if not isinstance(statement, Insert | Update):
        return False
    return any(
        column.default is not None or column.onupdate is not None
        for column in statement.table.c
        if isinstance(column, Column)
    )


def _row_maker(
    description: Sequence[psycopg.Column], types: Sequence[TypeEngine[Any]]
) -> RowMaker[Record]:
    names = [column.name for column in description]
    # The names are known at run time only, hence the dynamic named tuple.
    row_type: type[tuple[Any, ...]] = namedtuple("Record", names)  # type: ignore[misc]
    if types and len(types) != len(names):
        raise ValueError(f"result columns {names} do not match the statement's {len(types)}")
    processors = [
        (index, process)
        for index, (type_, column) in enumerate(zip(types, description, strict=False))
        if (process := type_.dialect_impl(_PSYCOPG).result_processor(_PSYCOPG, column.type_code))
        is not None
    ]
    new = tuple.__new__

    def make(values: Sequence[Any]) -> Record:
        return cast(Record, new(row_type, values))

    def process_and_make(values: Sequence[Any]) -> Record:
        processed = list(values)
        for index, process in processors:
            processed[index] = process(processed[index])
        return cast(Record, new(row_type, processed))

    return process_and_make if processors else make


async def _answered(conn: Conn, sending: Awaitable[Any]) -> None:
    """Run `sending` (a cursor's execute) so that its result, or its error, is there on
    return: in the block of a batch's transaction (still in pipeline mode), inside an
    inner pipeline, whose end syncs."""
    if conn.pgconn.pipeline_status:
        async with conn.pipeline():
            await sending
    else:
        await sending


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def binary_arrays(sql: str, names: set[str] | frozenset[str]) -> str:
    """`sql` with the parameters `names` (arrays) sent in binary: psycopg dumps a list as
    a text array in Python, escaping every element (13 us for eight ids, 50 for eight
    payloads), and as a binary array in a few microseconds whatever its elements. The
    SQL casts each to its column's array type as before. (A list psycopg cannot type,
    all None or empty, still goes as text.)"""
    if not names:
        return sql
    return _PLACEHOLDER.sub(
        lambda m: f"%({m.group(1)})b" if m.group(1) in names else m.group(0), sql
    )


def merged_cursor(conn: Conn, form: MergedForm, run: int = 0) -> psycopg.AsyncCursor[Any]:
    """The `run`-th cursor of a merged form on `conn` (rows as plain tuples), kept for reuse
    as statements' cursors are."""
    cursors: dict[MergedForm, list[psycopg.AsyncCursor[Any]]] = conn.__dict__.setdefault(
        _MERGED_CURSORS, {}
    )
    mine = cursors.setdefault(form, [])
    while len(mine) <= run:
        mine.append(_new_cursor(conn, tuple_row))  # type: ignore[arg-type]
    return mine[run]


def _new_cursor(
    conn: Conn, row_factory: Callable[[Any], RowMaker[Record]]
) -> psycopg.AsyncCursor[Record]:
    cursor = conn.cursor(row_factory=row_factory)
    # psycopg types an int parameter by its size (int2, int4, int8 or numeric) and
    # prepares a statement per combination of parameter types: always int8 keeps one
    # prepared statement per SQL text (the SQL casts to the column's type anyway). An int
    # beyond int8 is then refused by the dumper (OverflowError) rather than sent as numeric.
    cursor.adapters.register_dumper(int, Int8Dumper)
    cursor.adapters.register_dumper(int, Int8BinaryDumper)
    return cursor
