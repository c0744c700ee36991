"""A service's units of work: transactions and autocommit reads on its database.

    database = await open_database(settings)      # composition root, in the event loop
    store = PaymentStore(database)
    ...
    async with database.transaction() as conn:    # BEGIN ... COMMIT (ROLLBACK if it raises)
        await _INSERT.execute(conn, row)
    async with database.transaction(batch):       # BEGIN + the batch's statements, one
        if claimed.value is None: ...             # round trip on PostgreSQL (see Batch)
    async with database.reading() as conn:        # autocommit: every statement on its own
        row = await _GET.first(conn, {"p_id": id})
    ...
    await database.close()                        # at shutdown

PostgreSQL: the units run on psycopg connections from a psycopg_pool
`AsyncConnectionPool` of up to `settings.db_pool_size` connections (two opened with the
database, more while units wait for one; kept, recycled after 30 minutes), not on
SQLAlchemy's engine: checking a
connection out of SQLAlchemy's pool and beginning and committing through it cost about
250 µs of CPU per write unit and 100 µs per read, several times the statement itself.
The connections are in autocommit mode with `search_path` set to the service's schema
(as the engine's are, see `pi.platform.db.engine`); `transaction()` wraps the block in a
psycopg transaction. The handle is a `psycopg.AsyncConnection`: run `Statement`s on it
(they map psycopg errors to `sqlalchemy.exc` ones, and so does the unit for BEGIN and
COMMIT), not `conn.execute(core_statement)`.

A transaction given a `Batch` (`pi.platform.db.statements`) starts by running it: on
PostgreSQL the connection goes into pipeline mode, BEGIN and the batch's statements are
sent together and read after one sync, and the COMMIT (or ROLLBACK) ends the pipeline: two
round trips for the whole unit, where BEGIN, each statement and COMMIT take one each
otherwise. The block reads the results and decides; a `Statement` run in the block still
works (one round trip each).

SQLite: the units are the engine's `engine.begin()` and `autocommit(engine).connect()`,
SQLAlchemy connections as before (`Statement`s run their fallback on them).

A connection goes back to the pool clean whatever happened: the transaction rolled
back if the block raised, and the pool itself rolls back one left in a transaction (a
cancelled COMMIT) and replaces one that broke. The engine stays for what is not a hot
unit of work: migrations, test fixtures, cold queries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from pi.platform.config import Settings
from pi.platform.db.engine import (
    POOL_SIZE,
    autocommit,
    create_engine,
    create_engine_for,
    is_postgres,
)
from pi.platform.db.statements import Batch, Conn, sqlalchemy_error

__all__ = ["Conn", "Database", "open_database", "open_database_for"]

# Connections kept open when idle; the pool grows to `pool_size` while units wait.
MIN_CONNECTIONS = 2
# As the engine's `pool_recycle`: long-lived connections are replaced now and then.
MAX_LIFETIME_SECONDS = 1800.0
# How long a unit waits for a free connection before failing (SQLAlchemy's default).
CHECKOUT_TIMEOUT_SECONDS = 30.0
# psycopg's default. `Statement`s ask for preparation explicitly, which psycopg honours
# only with a threshold (None would turn prepared statements off altogether).
PREPARE_THRESHOLD = 5

_Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]


class Database:
    """The units of work of one service's database (see the module docstring).

    Build it with `open_database` (or `open_database_for`), once per process; `close()`
    closes the pool and disposes of the engine.
    """

    def __init__(self, engine: AsyncEngine, pool: _Pool | None = None) -> None:
        """On `engine` alone (SQLite), or with `pool`'s psycopg connections for the
        units (PostgreSQL); `pool` must be opened already."""
        self._engine = engine
        self._reads = autocommit(engine)
        self._pool = pool

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine on the same database, for what is not a hot unit."""
        return self._engine

    def transaction(self, batch: Batch | None = None) -> AbstractAsyncContextManager[Conn]:
        """A database transaction: committed when the block ends, rolled back if it raises.

        With `batch`, the transaction starts by running it (on PostgreSQL: with the
        BEGIN, in one round trip), so the block finds its results in its `Deferred`s.
        """
        if self._pool is None:
            if batch is None:
                return self._engine.begin()
            return _sequential_unit(self._engine, batch)
        if batch is None:
            return _unit(self._pool, transaction=True)
        return _pipelined_unit(self._pool, batch)

    def reading(self) -> AbstractAsyncContextManager[Conn]:
        """A connection in autocommit mode (no BEGIN/COMMIT): each statement commits on its
        own. For reads, and single-statement writes that need no transaction."""
        if self._pool is None:
            return self._reads.connect()
        return _unit(self._pool, transaction=False)

    def discarded(self) -> AbstractAsyncContextManager[Conn]:
        """A database transaction that is always rolled back: writes made to check something."""
        if self._pool is None:
            return self._engine.connect()
        return _unit(self._pool, transaction=True, rollback=True)

    async def close(self) -> None:
        """Close the pool (connections out of it are closed when they come back) and
        dispose of the engine."""
        if self._pool is not None:
            await self._pool.close()
        await self._engine.dispose()


async def open_database(settings: Settings, engine: AsyncEngine | None = None) -> Database:
    """The service's database on `engine` (default: `create_engine(settings)`); call once
    in the composition root, inside the event loop, and `close()` it at exit."""
    engine = engine or create_engine(settings)
    if not is_postgres(engine):
        return Database(engine)
    return await open_database_for(
        settings.database_url, settings.db_schema, engine=engine, pool_size=settings.db_pool_size
    )


async def open_database_for(
    url: str,
    schema: str,
    *,
    engine: AsyncEngine | None = None,
    pool_size: int = POOL_SIZE,
) -> Database:
    """`open_database` from a URL and schema (tests use this with a unique schema)."""
    engine = engine or create_engine_for(url, schema)
    if not is_postgres(engine):
        return Database(engine)
    pool: _Pool = AsyncConnectionPool(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
        kwargs={
            "autocommit": True,
            "options": f"-c search_path={schema}",
            "prepare_threshold": PREPARE_THRESHOLD,
        },
        # Opened lazily up to `pool_size`: a test builds many services, and a service
        # that never sees load should not hold `pool_size` server processes.
        min_size=min(pool_size, MIN_CONNECTIONS),
        max_size=pool_size,
        max_lifetime=MAX_LIFETIME_SECONDS,
        timeout=CHECKOUT_TIMEOUT_SECONDS,
        name=f"pi-{schema}",
        open=False,
    )
    # Not waiting for the connections: they are opened in the background, and the first
    # unit waits for one if it comes first.
    await pool.open()
    return Database(engine, pool)


@asynccontextmanager
async def _unit(pool: _Pool, *, transaction: bool, rollback: bool = False) -> AsyncIterator[Conn]:
    conn = await _checkout(pool)
    try:
        if transaction:
            try:
                async with conn.transaction(force_rollback=rollback):
                    yield conn
            except psycopg.Error as error:
                # BEGIN, COMMIT or ROLLBACK failed (statements raise SQLAlchemy's errors).
                raise sqlalchemy_error(error, conn) from error
        else:
            yield conn
    finally:
        # A connection still in a transaction is rolled back by the pool, a broken one
        # replaced.
        await pool.putconn(conn)


@asynccontextmanager
async def _sequential_unit(engine: AsyncEngine, batch: Batch) -> AsyncIterator[Conn]:
    async with engine.begin() as conn:
        await batch.run(conn)
        yield conn


@asynccontextmanager
async def _pipelined_unit(pool: _Pool, batch: Batch) -> AsyncIterator[Conn]:
    conn = await _checkout(pool)
    try:
        committed = False
        try:
            async with conn.pipeline() as pipeline:
                await batch.begin_in_pipeline(conn, pipeline)  # round trip 1
                yield conn
                await batch.commit_in_pipeline(conn)
                committed = True
            # Leaving the pipeline synced it: the COMMIT's round trip.
        except psycopg.Error as error:
            # COMMIT failed (statements and the batch raise SQLAlchemy's errors).
            raise sqlalchemy_error(error, conn) from error
        finally:
            if not committed and not conn.closed:
                # Out of pipeline mode first: `rollback()` also forgets the prepared
                # statements, as psycopg's transaction() does when a block raises (one
                # queued after an error in the pipeline was never prepared). If it fails
                # the connection is broken: the pool replaces it, and the error that got
                # here is the one to raise.
                with suppress(psycopg.Error):
                    await conn.rollback()
    finally:
        # A connection still in a transaction is rolled back by the pool, a broken one
        # replaced.
        await pool.putconn(conn)


async def _checkout(pool: _Pool) -> psycopg.AsyncConnection[Any]:
    try:
        return await pool.getconn()
    except psycopg.Error as error:  # no connection in time (PoolTimeout)
        raise sqlalchemy_error(error, None) from error
