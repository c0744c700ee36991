"""Units of work: transactions and autocommit reads on psycopg's pool."""

import asyncio
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest
from psycopg_pool import PoolClosed
from sqlalchemy import BigInteger, Column, MetaData, String, Table, bindparam, func, select, text

from pi.platform.config import ServiceSettings
from pi.platform.db.database import Database, open_database, open_database_for
from pi.platform.db.engine import libpq_url, sync_engine
from pi.platform.db.errors import IntegrityError, OperationalError, sqlstate
from pi.platform.db.statements import Statement

IDLE = psycopg.pq.TransactionStatus.IDLE

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("amount", BigInteger, nullable=False),
)

INSERT = Statement(items.insert())
GET = Statement(select(items).where(items.c.id == bindparam("p_id")))
COUNT = Statement(select(func.count().label("n")).select_from(items))
TXID = Statement(select(func.txid_current_if_assigned().label("txid")))
BACKEND = Statement(select(func.pg_backend_pid().label("pid")))


# The pool of `database`: tests run more units than that to meet every connection.
POOL_SIZE = 2


@pytest.fixture
async def database(pg_url: str, pg_schema: str) -> AsyncIterator[Database]:
    create_tables(pg_url, pg_schema)
    database = await open_database_for(pg_url, pg_schema, pool_size=POOL_SIZE)
    yield database
    await database.close()


def create_tables(url: str, schema: str) -> None:
    engine = sync_engine(url, schema)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()


async def count(database: Database) -> int:
    async with database.reading() as conn:
        return int((await COUNT.one(conn)).n)


async def test_units_run_on_psycopg_connections(database: Database) -> None:
    async with database.transaction() as write, database.reading() as read:
        for conn in (write, read):
            assert isinstance(conn, psycopg.AsyncConnection)
        assert read.autocommit and read.info.transaction_status is IDLE
        assert write.info.transaction_status is psycopg.pq.TransactionStatus.INTRANS


async def test_a_transaction_commits_when_the_block_ends(database: Database) -> None:
    async with database.transaction() as conn:
        await INSERT.execute(conn, {"id": "a", "amount": 1})
        await INSERT.execute_many(conn, [{"id": "b", "amount": 2}, {"id": "c", "amount": 3}])
        assert (await COUNT.one(conn)).n == 3
    assert await count(database) == 3


async def test_a_transaction_rolls_back_if_the_block_raises(database: Database) -> None:
    with pytest.raises(RuntimeError, match="the unit of work fails"):
        async with database.transaction() as conn:
            await INSERT.execute(conn, {"id": "a", "amount": 1})
            raise RuntimeError("the unit of work fails")
    assert await count(database) == 0

    with pytest.raises(IntegrityError):
        async with database.transaction() as conn:
            await INSERT.execute(conn, {"id": "b", "amount": 1})
            await INSERT.execute(conn, {"id": "b", "amount": 2})
    # The connections are back in the pool clean, their statements still usable.
    async with database.transaction() as conn:
        await INSERT.execute(conn, {"id": "c", "amount": 3})
        assert (await GET.one(conn, {"p_id": "c"})).amount == 3
    assert await count(database) == 1


async def test_reading_commits_each_statement_on_its_own(database: Database) -> None:
    with pytest.raises(RuntimeError):
        async with database.reading() as conn:
            await INSERT.execute(conn, {"id": "a", "amount": 1})
            raise RuntimeError("nothing to roll back")
    assert await count(database) == 1


async def test_discarded_is_always_rolled_back(database: Database) -> None:
    async with database.discarded() as conn:
        await INSERT.execute(conn, {"id": "a", "amount": 1})
        assert (await COUNT.one(conn)).n == 1
    assert await count(database) == 0


async def test_reads_open_no_transaction(database: Database) -> None:
    async with database.reading() as conn:
        assert (await TXID.one(conn)).txid is None
    async with database.transaction() as conn:
        await INSERT.execute(conn, {"id": "a", "amount": 1})
        assert (await TXID.one(conn)).txid is not None


async def test_statements_are_prepared_on_the_pooled_connections(database: Database) -> None:
    async with database.transaction() as conn:
        await INSERT.execute(conn, {"id": "a", "amount": 7})
    async with database.reading() as conn:
        assert await GET.one(conn, {"p_id": "a"}) == ("a", 7)
        assert await GET.first(conn, {"p_id": "zzz"}) is None
        prepared = await conn.execute("SELECT statement FROM pg_prepared_statements")
        assert any(row[0].startswith("SELECT items.id") for row in await prepared.fetchall())


async def test_connections_search_the_service_schema(database: Database, pg_schema: str) -> None:
    async with database.reading() as conn:
        found = await conn.execute("SHOW search_path")
        assert (await found.fetchone()) == (pg_schema,)


async def test_a_failed_commit_raises_psycopgs_error(database: Database) -> None:
    async with database.reading() as conn:
        await conn.execute(
            "CREATE TABLE deferred (id int, CONSTRAINT deferred_unique UNIQUE (id)"
            " DEFERRABLE INITIALLY DEFERRED)"
        )
    insert = Statement(text("INSERT INTO deferred VALUES (1)"))
    with pytest.raises(IntegrityError) as failed:
        async with database.transaction() as conn:
            await insert.execute(conn)
            await insert.execute(conn)  # checked at COMMIT only
    assert isinstance(failed.value, psycopg.errors.UniqueViolation)
    assert sqlstate(failed.value) == "23505"
    async with database.transaction() as conn:
        await insert.execute(conn)


async def test_a_connection_left_in_a_transaction_goes_back_rolled_back(
    database: Database,
) -> None:
    async with database.reading() as conn:
        await conn.execute("BEGIN")
        await INSERT.execute(conn, {"id": "a", "amount": 1})
    # Whichever connection a unit gets, it is clean.
    for _ in range(2 * POOL_SIZE):
        async with database.reading() as conn:
            assert conn.info.transaction_status is IDLE
            assert (await COUNT.one(conn)).n == 0


async def test_a_lost_connection_raises_operational_error_and_is_replaced(
    database: Database, pg_url: str
) -> None:
    with pytest.raises(OperationalError) as lost:
        async with database.transaction() as conn:
            pid = (await BACKEND.one(conn)).pid
            await terminate(pg_url, pid)
            await GET.first(conn, {"p_id": "a"})
    assert isinstance(lost.value, psycopg.OperationalError)
    assert conn.broken
    for _ in range(2 * POOL_SIZE):
        async with database.transaction() as conn:
            assert (await BACKEND.one(conn)).pid != pid


async def terminate(url: str, pid: int) -> None:
    async with await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True) as other:
        await other.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_no_free_connection_in_time_is_an_operational_error(
    pg_url: str, pg_schema: str
) -> None:
    database = await open_database_for(pg_url, pg_schema, pool_size=1)
    try:
        async with database.reading():
            pool = database._pool
            pool.timeout = 0.2  # a unit waits this long for a connection, then fails
            with pytest.raises(OperationalError):
                async with database.reading():
                    pass
    finally:
        await database.close()


async def test_a_cancelled_unit_leaves_no_connection_busy(database: Database) -> None:
    sleep = Statement(select(func.pg_sleep(30).label("slept")))
    started = asyncio.Event()

    async def unit() -> None:
        async with database.transaction() as conn:
            await INSERT.execute(conn, {"id": "a", "amount": 1})
            started.set()
            await sleep.one(conn)

    task = asyncio.create_task(unit())
    await started.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):
        for _ in range(2 * POOL_SIZE):
            async with database.transaction() as conn:
                assert (await COUNT.one(conn)).n == 0


async def test_close_closes_the_pool_even_with_a_unit_open(
    settings_factory: Callable[..., ServiceSettings], pg_url: str, pg_schema: str
) -> None:
    create_tables(pg_url, pg_schema)
    database = await open_database(settings_factory("payments", db_schema=pg_schema))
    opened = asyncio.Event()
    release = asyncio.Event()

    async def unit() -> int:
        async with database.reading() as conn:
            pid = int((await BACKEND.one(conn)).pid)
            opened.set()
            await release.wait()
            return pid

    task = asyncio.create_task(unit())
    await opened.wait()
    async with asyncio.timeout(10):
        await database.close()
    release.set()
    pid = await task
    # The backend ends shortly after its client hangs up.
    async with (
        asyncio.timeout(5),
        await psycopg.AsyncConnection.connect(libpq_url(pg_url), autocommit=True) as conn,
    ):
        while (
            await (
                await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            ).fetchone()
        ) != (0,):
            await asyncio.sleep(0.05)
    with pytest.raises(PoolClosed):
        async with database.reading():
            pass
