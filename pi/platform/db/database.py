"""A service's units of work: transactions and autocommit reads on its PostgreSQL schema.

    database = await open_database(settings)      # composition root, in the event loop
    store = PaymentStore(database)
    ...
    async with database.transaction() as conn:    # BEGIN ... COMMIT (ROLLBACK if it raises)
        await _INSERT.execute(conn, row)
    async with database.transaction(batch):       # BEGIN + the batch's statements in one
        if claimed.value is None: ...             # round trip (see Batch)
    async with database.reading() as conn:        # autocommit: every statement on its own
        row = await _GET.first(conn, {"p_id": id})
    ...
    await database.close()                        # at shutdown

A `Database` is the process's one connection pool: a psycopg_pool `AsyncConnectionPool`
of up to `settings.db_pool_size` connections (two opened with the database, more while
units wait for one; kept, recycled after 30 minutes). There is no SQLAlchemy engine
beside it: checking a connection out of SQLAlchemy's pool and beginning and committing
through it cost about 250 µs of CPU per write unit and 100 µs per read, several times the
statement itself. Migrations open their own short-lived connection (see
`pi.platform.db.migrations`).

The connections are in autocommit mode with `search_path` set to the service's schema, so
tables declared without a schema (and hand-written SQL) land there; `transaction()` wraps
the block in a psycopg transaction. The handle is a `psycopg.AsyncConnection`: run
`Statement`s on it. Errors are psycopg's own (see `pi.platform.db.errors`): a statement's,
a failed BEGIN or COMMIT, or `psycopg_pool.PoolTimeout` (an `OperationalError`) when no
connection comes in `CHECKOUT_TIMEOUT_SECONDS`.

A transaction given a `Batch` (`pi.platform.db.statements`) starts by running it: the
connection goes into pipeline mode, BEGIN and the batch's statements are sent together
and read after one sync, and the COMMIT (or ROLLBACK) ends the pipeline: two round trips
for the whole unit, where BEGIN, each statement and COMMIT take one each otherwise. The
block reads the results and decides; a `Statement` run in the block still works (one
round trip each).

A connection goes back to the pool clean whatever happened: the transaction rolled
back if the block raised, and the pool itself rolls back one left in a transaction (a
cancelled COMMIT) and replaces one that broke.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from pi.platform.config import DEFAULT_DB_COMMIT_GROUPS, DEFAULT_DB_POOL_SIZE, ServiceSettings
from pi.platform.db.batch import Batch
from pi.platform.db.engine import libpq_url, validate_schema
from pi.platform.db.group_commit import GroupCommit
from pi.platform.db.statements import Conn

__all__ = ["Conn", "Database", "open_database", "open_database_for"]

# Connections kept open when idle; the pool grows to `pool_size` while units wait.
MIN_CONNECTIONS = 2
# Long-lived connections are replaced now and then (server-side memory they accumulate).
MAX_LIFETIME_SECONDS = 1800.0
# How long a unit waits for a free connection before failing (PoolTimeout).
CHECKOUT_TIMEOUT_SECONDS = 30.0
# psycopg's default. `Statement`s ask for preparation explicitly, which psycopg honours
# only with a threshold (None would turn prepared statements off altogether).
PREPARE_THRESHOLD = 5

_Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]


class Database:
    """The units of work of one service's database (see the module docstring).

    Build it with `open_database` (or `open_database_for`), once per process; `close()`
    closes the pool.
    """

    def __init__(self, pool: _Pool, *, commit_groups: int = DEFAULT_DB_COMMIT_GROUPS) -> None:
        """On `pool`'s connections, which must be autocommit with the service's
        `search_path`, and the pool opened already (as `open_database_for` does).
        `commit_groups`: group commits in flight at once (0: every unit commits alone)."""
        self._pool = pool
        self.group_commit = GroupCommit(pool, max_groups=commit_groups) if commit_groups else None

    async def commit_batch(self, batch: Batch, check: Callable[[], None]) -> None:
        """`batch` in a transaction shared with the batches other units commit meanwhile
        (`pi.platform.db.group_commit`): `check` is called on its results (raise to keep
        nothing of it), and the call returns once the transaction committed."""
        if self.group_commit is None:
            async with self.transaction(batch):
                check()  # raising here rolls back
        else:
            await self.group_commit.commit(batch, check)

    def transaction(self, batch: Batch | None = None) -> AbstractAsyncContextManager[Conn]:
        """A database transaction: committed when the block ends, rolled back if it raises.

        With `batch`, the transaction starts by running it (with the BEGIN, in one round
        trip), so the block finds its results in its `Deferred`s.
        """
        if batch is None:
            return _unit(self._pool, transaction=True)
        return _pipelined_unit(self._pool, batch)

    def reading(self) -> AbstractAsyncContextManager[Conn]:
        """A connection in autocommit mode (no BEGIN/COMMIT): each statement commits on its
        own. For reads, and single-statement writes that need no transaction."""
        return _unit(self._pool, transaction=False)

    def discarded(self) -> AbstractAsyncContextManager[Conn]:
        """A database transaction that is always rolled back: writes made to check something."""
        return _unit(self._pool, transaction=True, rollback=True)

    def pool_stats(self) -> dict[str, int]:
        """The pool's numbers now (psycopg_pool's `get_stats`: pool_size, pool_available,
        requests_waiting, ...), for the metrics scrape."""
        return dict(self._pool.get_stats())

    async def close(self) -> None:
        """Close the pool (connections out of it are closed when they come back), once the
        groups being committed are done."""
        if self.group_commit is not None:
            await self.group_commit.close()
        await self._pool.close()


async def open_database(settings: ServiceSettings) -> Database:
    """The service's database; call once in the composition root, inside the event loop,
    and `close()` it at exit."""
    return await open_database_for(
        settings.database_url,
        settings.db_schema,
        pool_size=settings.db_pool_size,
        commit_groups=settings.db_commit_groups,
    )


async def open_database_for(
    url: str,
    schema: str,
    *,
    pool_size: int = DEFAULT_DB_POOL_SIZE,
    commit_groups: int = DEFAULT_DB_COMMIT_GROUPS,
) -> Database:
    """`open_database` from a `postgresql://` URL and schema (tests use this with a unique
    schema)."""
    validate_schema(schema)
    pool: _Pool = AsyncConnectionPool(
        libpq_url(url),
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
    return Database(pool, commit_groups=commit_groups)


@asynccontextmanager
async def _unit(pool: _Pool, *, transaction: bool, rollback: bool = False) -> AsyncIterator[Conn]:
    conn = await pool.getconn()
    try:
        if transaction:
            async with conn.transaction(force_rollback=rollback):
                yield conn
        else:
            yield conn
    finally:
        # A connection still in a transaction is rolled back by the pool, a broken one
        # replaced.
        await pool.putconn(conn)


@asynccontextmanager
async def _pipelined_unit(pool: _Pool, batch: Batch) -> AsyncIterator[Conn]:
    conn = await pool.getconn()
    try:
        committed = False
        try:
            async with conn.pipeline() as pipeline:
                await batch.begin_in_pipeline(conn, pipeline)  # round trip 1
                yield conn
                await batch.commit_in_pipeline(conn)
                committed = True
            # Leaving the pipeline synced it: the COMMIT's round trip.
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
