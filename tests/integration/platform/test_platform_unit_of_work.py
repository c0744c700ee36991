"""The PostgreSQL unit of work: optimistic units conflict instead of losing an update,
locked units serialize, and `optimistically` falls back from one to the other."""

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import BigInteger, Column, MetaData, String, Table, bindparam, select
from sqlalchemy.dialects import postgresql

from pi.platform.db.database import Database
from pi.platform.db.statements import Statement
from pi.platform.db.unit_of_work import PostgresUnitOfWork
from pi.platform.kernel.errors import Aborted
from pi.platform.kernel.units import REASON_CONCURRENT_UPDATE, Conflict, Mode, optimistically

metadata = MetaData()
counters = Table(
    "counters",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

GET = Statement(select(counters).where(counters.c.id == bindparam("p_id")))
LOCK = Statement(select(counters).where(counters.c.id == bindparam("p_id")).with_for_update())
INSERT = Statement(postgresql.insert(counters).on_conflict_do_nothing())
SET_IF_UNCHANGED = Statement(
    counters.update()
    .where(
        counters.c.id == bindparam("p_id"),
        counters.c.value == bindparam("p_old", type_=BigInteger()),
    )
    .values(value=bindparam("p_new", type_=BigInteger()))
)


class Counters:
    """A repository as services write them: reads lock when the unit says so, writes are
    conditional on what was read."""

    def __init__(self, unit: PostgresUnitOfWork) -> None:
        self._unit = unit

    async def get(self, counter_id: str) -> int | None:
        row = await self._unit.read(LOCK if self._unit.locking else GET, {"p_id": counter_id})
        return None if row is None else int(row.value)

    def add(self, counter_id: str, value: int) -> None:
        self._unit.expect(self._unit.hit(INSERT, {"id": counter_id, "value": value}))

    def set(self, counter_id: str, old: int, new: int) -> None:
        written = self._unit.hit(SET_IF_UNCHANGED, {"p_id": counter_id, "p_old": old, "p_new": new})
        self._unit.expect(written, "the counter changed")


class Unit(PostgresUnitOfWork):
    def __init__(self, database: Database, mode: Mode = Mode.LOCKED) -> None:
        super().__init__(database, mode)
        self.counters = Counters(self)


@pytest.fixture
async def database(make_database: Callable[..., Awaitable[Database]], pg_schema: str) -> Database:
    database = await make_database(pg_schema)
    async with database.transaction() as conn:
        await conn.execute(b"CREATE TABLE counters (id varchar(40) PRIMARY KEY, value bigint)")
        await conn.execute(b"INSERT INTO counters VALUES ('a', 0)")
    return database


async def value_of(database: Database, counter_id: str = "a") -> int | None:
    async with Unit(database, Mode.READ) as unit:
        return await unit.counters.get(counter_id)


async def test_an_optimistic_unit_commits_its_writes_when_nothing_changed(
    database: Database,
) -> None:
    async with Unit(database, Mode.OPTIMISTIC) as unit:
        old = await unit.counters.get("a")
        assert old == 0
        unit.counters.set("a", old, 5)
        unit.counters.add("b", 1)
        await unit.commit()
    assert await value_of(database) == 5
    assert await value_of(database, "b") == 1


async def test_an_optimistic_unit_that_lost_a_race_conflicts_and_keeps_nothing(
    database: Database,
) -> None:
    async with Unit(database, Mode.OPTIMISTIC) as unit:
        old = await unit.counters.get("a")
        assert old is not None
        async with Unit(database) as other:  # a concurrent writer gets there first
            await other.counters.get("a")
            other.counters.set("a", 0, 7)
            await other.commit()
        unit.counters.add("b", 1)  # queued before the write that will miss
        unit.counters.set("a", old, old + 1)
        with pytest.raises(Conflict, match="the counter changed"):
            await unit.commit()
    assert await value_of(database) == 7
    assert await value_of(database, "b") is None


async def test_leaving_a_locked_unit_without_commit_rolls_back(database: Database) -> None:
    async with Unit(database) as unit:
        unit.counters.add("b", 1)
        assert await unit.counters.get("b") == 1  # a read sees the unit's own writes
    with pytest.raises(RuntimeError, match="boom"):
        async with Unit(database) as unit:
            unit.counters.set("a", 0, 3)
            assert await unit.counters.get("a") == 3
            raise RuntimeError("boom")
    assert await value_of(database, "b") is None
    assert await value_of(database) == 0


async def test_locked_units_serialize_so_no_increment_is_lost(database: Database) -> None:
    async def increment() -> None:
        async with Unit(database) as unit:
            value = await unit.counters.get("a")
            assert value is not None
            await asyncio.sleep(0.01)  # the other unit waits on the row lock meanwhile
            unit.counters.set("a", value, value + 1)
            await unit.commit()

    await asyncio.gather(*(increment() for _ in range(8)))
    assert await value_of(database) == 8


async def test_optimistically_decides_again_under_locks_after_a_conflict(
    database: Database,
) -> None:
    modes: list[Mode] = []

    async def step(unit: Unit) -> int:
        modes.append(unit.mode)
        async with unit:
            value = await unit.counters.get("a")
            assert value is not None
            if unit.mode is Mode.OPTIMISTIC:  # someone else writes between read and commit
                async with Unit(database) as other:
                    await other.counters.get("a")
                    other.counters.set("a", value, value + 10)
                    await other.commit()
            unit.counters.set("a", value, value + 1)
            await unit.commit()
            return value + 1

    assert await optimistically(lambda mode: Unit(database, mode), step) == 11
    assert modes == [Mode.OPTIMISTIC, Mode.LOCKED]
    assert await value_of(database) == 11


async def test_concurrent_optimistic_increments_all_land(database: Database) -> None:
    async def step(unit: Unit) -> None:
        async with unit:
            value = await unit.counters.get("a")
            assert value is not None
            unit.counters.set("a", value, value + 1)
            await unit.commit()

    await asyncio.gather(
        *(optimistically(lambda mode: Unit(database, mode), step) for _ in range(20))
    )
    assert await value_of(database) == 20


async def test_a_conflict_under_locks_is_aborted_for_the_client_to_retry(
    database: Database,
) -> None:
    async def step(unit: Unit) -> None:
        async with unit:
            unit.counters.set("a", 99, 100)  # never holds: no read, no lock protects it
            await unit.commit()

    with pytest.raises(Aborted) as raised:
        await optimistically(lambda mode: Unit(database, mode), step)
    assert raised.value.reason == REASON_CONCURRENT_UPDATE


async def test_a_read_unit_refuses_writes(database: Database) -> None:
    async with Unit(database, Mode.READ) as unit:
        with pytest.raises(RuntimeError, match="cannot write"):
            unit.counters.add("b", 1)
        with pytest.raises(RuntimeError, match="nothing to commit"):
            await unit.commit()
