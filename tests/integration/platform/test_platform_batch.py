"""A transaction begun by a Batch: the BEGIN and the batch's statements in one round trip."""

from collections.abc import Awaitable, Callable

import psycopg
import pytest
from sqlalchemy import BigInteger, Column, MetaData, String, Table, bindparam, func, select, text
from sqlalchemy.dialects import postgresql

from pi.platform.db.batch import Batch
from pi.platform.db.database import Database
from pi.platform.db.engine import sync_engine
from pi.platform.db.errors import IntegrityError
from pi.platform.db.statements import Statement
from tests.support.round_trips import count_round_trips

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("amount", BigInteger, nullable=False),
)

INSERT = Statement(items.insert())
INSERT_NEW = Statement(postgresql.insert(items).on_conflict_do_nothing().returning(items.c.id))
ADD = Statement(
    items.update()
    .where(items.c.id == bindparam("p_id"))
    .values(amount=items.c.amount + bindparam("p_delta", type_=BigInteger()))
)
GET = Statement(select(items).where(items.c.id == bindparam("p_id")))
COUNT = Statement(select(func.count().label("n")).select_from(items))


@pytest.fixture
async def database(
    make_database: Callable[..., Awaitable[Database]], pg_url: str, pg_schema: str
) -> Database:
    engine = sync_engine(pg_url, pg_schema)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()
    database = await make_database(pg_schema)
    async with database.reading() as conn:
        await INSERT.execute(conn, {"id": "a", "amount": 1})
    return database


async def amounts(database: Database) -> dict[str, int]:
    async with database.reading() as conn:
        rows = await Statement(select(items)).all(conn)
    return {row.id: row.amount for row in rows}


async def test_a_batch_runs_in_order_and_its_results_are_read_in_the_block(
    database: Database,
) -> None:
    batch = Batch()
    inserted = batch.execute(INSERT, {"id": "b", "amount": 2})
    again = batch.first(INSERT_NEW, {"id": "b", "amount": 9})  # b exists by now
    fresh = batch.first(INSERT_NEW, {"id": "c", "amount": 3})  # same statement twice
    added = batch.hit(ADD, {"p_id": "a", "p_delta": 10})
    missed = batch.hit(ADD, {"p_id": "zzz", "p_delta": 10})
    row = batch.first(GET, {"p_id": "a"})
    async with database.transaction(batch) as conn:
        assert (inserted.value, again.value, missed.value, added.value) == (1, None, False, True)
        assert fresh.value is not None and fresh.value.id == "c"
        assert row.value is not None and row.value.amount == 11
        # Statements still run in the block, after the batch.
        assert (await COUNT.one(conn)).n == 3
        await INSERT.execute(conn, {"id": "d", "amount": 4})
        assert await ADD.execute(conn, {"p_id": "d", "p_delta": 1}) == 1
    assert await amounts(database) == {"a": 11, "b": 2, "c": 3, "d": 5}


async def test_a_block_that_raises_rolls_the_batch_back(database: Database) -> None:
    batch = Batch()
    added = batch.hit(ADD, {"p_id": "a", "p_delta": 10})
    with pytest.raises(RuntimeError, match="decided against it"):
        async with database.transaction(batch):
            assert added.value
            raise RuntimeError("decided against it")
    assert await amounts(database) == {"a": 1}
    with pytest.raises(RuntimeError, match="has not run"):
        Batch().hit(ADD, {"p_id": "a", "p_delta": 1}).value  # noqa: B018


async def test_an_error_aborts_the_batch_and_is_raised_as_psycopgs(database: Database) -> None:
    batch = Batch()
    batch.hit(ADD, {"p_id": "a", "p_delta": 10})
    batch.execute(INSERT, {"id": "a", "amount": 5})  # duplicate key
    after = batch.execute(INSERT, {"id": "e", "amount": 5})
    with pytest.raises(IntegrityError) as failed:
        async with database.transaction(batch):
            pytest.fail("the block runs only if the batch did")
    assert isinstance(failed.value, psycopg.errors.UniqueViolation)
    assert "items_pkey" in str(failed.value)
    with pytest.raises(RuntimeError):
        after.value  # noqa: B018
    assert await amounts(database) == {"a": 1}
    # The connections are back clean, their prepared statements still usable.
    for _ in range(4):
        batch = Batch()
        added = batch.hit(ADD, {"p_id": "a", "p_delta": 1})
        async with database.transaction(batch):
            assert added.value
    assert await amounts(database) == {"a": 5}


async def test_a_value_psycopg_cannot_send_fails_the_batch_and_rolls_it_back(
    database: Database,
) -> None:
    batch = Batch()
    batch.hit(ADD, {"p_id": "a", "p_delta": 10})
    batch.hit(ADD, {"p_id": "a", "p_delta": 2**70})  # beyond int8
    with pytest.raises(OverflowError):
        async with database.transaction(batch):
            pytest.fail("the block runs only if the batch did")
    assert await amounts(database) == {"a": 1}


async def test_begin_and_the_batch_take_one_round_trip_and_commit_one(
    database: Database,
) -> None:
    for attempt in range(7):  # prepared on the first run: the same after
        batch = Batch()
        batch.execute(INSERT, {"id": f"x{attempt}", "amount": 1})
        batch.first(INSERT_NEW, {"id": f"y{attempt}", "amount": 1})
        batch.first(INSERT_NEW, {"id": f"z{attempt}", "amount": 1})
        batch.hit(ADD, {"p_id": f"x{attempt}", "p_delta": 1})
        with count_round_trips() as trips:
            async with database.transaction(batch) as conn:
                assert isinstance(conn, psycopg.AsyncConnection)
                in_block = trips.count
        assert (in_block, trips.count) == (1, 2)
    # The counter counts what it should: BEGIN, the statement and COMMIT, one each.
    with count_round_trips() as trips:
        async with database.transaction() as conn:
            await INSERT.execute(conn, {"id": "w", "amount": 1})
    assert trips.count == 3


async def test_a_failed_commit_after_a_batch_raises_psycopgs_error(database: Database) -> None:
    async with database.reading() as conn:
        await conn.execute(
            "CREATE TABLE deferred (id int, CONSTRAINT deferred_unique UNIQUE (id)"
            " DEFERRABLE INITIALLY DEFERRED)"
        )
    insert = Statement(text("INSERT INTO deferred VALUES (1)"))
    batch = Batch()
    batch.execute(insert)
    batch.execute(insert)  # checked at COMMIT only
    with pytest.raises(IntegrityError) as failed:
        async with database.transaction(batch):
            pass
    assert isinstance(failed.value, psycopg.errors.UniqueViolation)
    batch = Batch()
    batch.execute(insert)
    async with database.transaction(batch) as conn:
        assert isinstance(conn, psycopg.AsyncConnection)
    async with database.reading() as conn:
        assert (await Statement(text("SELECT count(*) AS n FROM deferred")).one(conn)).n == 1
