"""Units of work: psycopg's pool on PostgreSQL, the SQLAlchemy engine on SQLite."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import BigInteger, Column, MetaData, String, Table, bindparam, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pi.platform.config import Settings
from pi.platform.db.database import Database, open_database, open_database_for
from pi.platform.db.engine import is_postgres
from pi.platform.db.statements import Statement

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


@pytest.fixture(params=["postgresql", "sqlite"])
async def database(
    request: pytest.FixtureRequest,
    make_database: Callable[..., Awaitable[Database]],
    tmp_path: Path,
) -> Database:
    if request.param == "postgresql":
        database = await make_database(request.getfixturevalue("pg_schema"))
    else:
        database = await make_database("main", url=f"sqlite:///{tmp_path}/units.db")
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return database


# The pool of `pg_database`: tests run more units than that to meet every connection.
POOL_SIZE = 2


@pytest.fixture
async def pg_database(pg_url: str, pg_schema: str) -> AsyncIterator[Database]:
    database = await open_database_for(pg_url, pg_schema, pool_size=POOL_SIZE)
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield database
    await database.close()


async def count(database: Database) -> int:
    async with database.reading() as conn:
        return int((await COUNT.one(conn)).n)


async def test_postgres_units_run_on_psycopg_and_sqlite_units_on_sqlalchemy(
    database: Database,
) -> None:
    async with database.transaction() as write, database.reading() as read:
        on_postgres = is_postgres(database.engine)
        for conn in (write, read):
            assert isinstance(conn, psycopg.AsyncConnection) is on_postgres
            assert isinstance(conn, AsyncConnection) is not on_postgres


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


async def test_postgres_reads_open_no_transaction(pg_database: Database) -> None:
    async with pg_database.reading() as conn:
        assert (await TXID.one(conn)).txid is None
    async with pg_database.transaction() as conn:
        await INSERT.execute(conn, {"id": "a", "amount": 1})
        assert (await TXID.one(conn)).txid is not None


async def test_statements_give_the_same_rows_on_either_postgres_handle(
    pg_database: Database,
) -> None:
    async with pg_database.transaction() as conn:
        await INSERT.execute(conn, {"id": "a", "amount": 7})
    async with pg_database.reading() as raw, pg_database.engine.connect() as sqlalchemy:
        assert isinstance(raw, psycopg.AsyncConnection)
        assert await GET.one(raw, {"p_id": "a"}) == await GET.one(sqlalchemy, {"p_id": "a"})
        assert await GET.first(raw, {"p_id": "zzz"}) is None
        prepared = await raw.execute("SELECT statement FROM pg_prepared_statements")
        assert any(row[0].startswith("SELECT items.id") for row in await prepared.fetchall())


async def test_postgres_connections_search_the_service_schema(
    pg_database: Database, pg_schema: str
) -> None:
    async with pg_database.reading() as conn:
        assert isinstance(conn, psycopg.AsyncConnection)
        found = await conn.execute("SHOW search_path")
        assert (await found.fetchone()) == (pg_schema,)


async def test_a_failed_commit_raises_the_sqlalchemy_error(pg_database: Database) -> None:
    async with pg_database.engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE deferred (id int, CONSTRAINT deferred_unique UNIQUE (id)"
                " DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    insert = Statement(text("INSERT INTO deferred VALUES (1)"))
    with pytest.raises(IntegrityError) as failed:
        async with pg_database.transaction() as conn:
            await insert.execute(conn)
            await insert.execute(conn)  # checked at COMMIT only
    assert isinstance(failed.value.orig, psycopg.errors.UniqueViolation)
    async with pg_database.transaction() as conn:
        await insert.execute(conn)


async def test_a_connection_left_in_a_transaction_goes_back_rolled_back(
    pg_database: Database,
) -> None:
    async with pg_database.reading() as conn:
        assert isinstance(conn, psycopg.AsyncConnection)
        await conn.execute("BEGIN")
        await INSERT.execute(conn, {"id": "a", "amount": 1})
    # Whichever connection a unit gets, it is clean.
    for _ in range(2 * POOL_SIZE):
        async with pg_database.reading() as conn:
            assert isinstance(conn, psycopg.AsyncConnection)
            assert conn.info.transaction_status is psycopg.pq.TransactionStatus.IDLE
            assert (await COUNT.one(conn)).n == 0


async def test_a_lost_connection_raises_invalidated_and_is_replaced(
    pg_database: Database,
) -> None:
    with pytest.raises(OperationalError) as lost:
        async with pg_database.transaction() as conn:
            pid = (await BACKEND.one(conn)).pid
            async with pg_database.engine.connect() as other:
                await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await GET.first(conn, {"p_id": "a"})
    assert lost.value.connection_invalidated
    for _ in range(2 * POOL_SIZE):
        async with pg_database.transaction() as conn:
            assert (await BACKEND.one(conn)).pid != pid


async def test_a_cancelled_unit_leaves_no_connection_busy(pg_database: Database) -> None:
    sleep = Statement(select(func.pg_sleep(30).label("slept")))
    started = asyncio.Event()

    async def unit() -> None:
        async with pg_database.transaction() as conn:
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
            async with pg_database.transaction() as conn:
                assert (await COUNT.one(conn)).n == 0


async def test_close_closes_the_pool_even_with_a_unit_open(
    settings_factory: Callable[..., Settings], pg_engine_schema: tuple[AsyncEngine, str]
) -> None:
    engine, schema = pg_engine_schema
    database = await open_database(settings_factory("payments", db_schema=schema), engine)
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
    # The backend ends shortly after its client hangs up. (The engine still works: close
    # only disposed of its pool.)
    async with asyncio.timeout(5), engine.connect() as conn:
        while (
            await conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            )
        ).scalar_one():
            await asyncio.sleep(0.05)
    with pytest.raises(OperationalError):
        async with database.reading():
            pass


@pytest.fixture
async def pg_engine_schema(
    make_engine: Callable[..., AsyncEngine], pg_schema: str
) -> tuple[AsyncEngine, str]:
    engine = make_engine(pg_schema)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return engine, pg_schema
