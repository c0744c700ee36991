"""Group commit on a real PostgreSQL: concurrent OPTIMISTIC units share one transaction,
one unit's failure does not fail the others, a unit at idle commits at once, and a group
lost before its COMMIT loses only units nobody was answered for."""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

import psycopg
import pytest
from sqlalchemy import BigInteger, Column, MetaData, String, Table, bindparam, select
from sqlalchemy.dialects import postgresql

from pi.platform.db.batch import Batch
from pi.platform.db.database import Database
from pi.platform.db.engine import UtcDateTime
from pi.platform.db.errors import IntegrityError
from pi.platform.db.group_commit import GroupCommit
from pi.platform.db.statements import Statement
from pi.platform.db.unit_of_work import PostgresUnitOfWork
from pi.platform.kernel.units import Conflict, Mode

metadata = MetaData()
rows = Table(
    "rows",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("value", BigInteger, nullable=False),
    Column("at", UtcDateTime()),
)

GET = Statement(select(rows).where(rows.c.id == bindparam("p_id")))
INSERT_NEW = Statement(postgresql.insert(rows).on_conflict_do_nothing())
INSERT = Statement(rows.insert())
SET_IF = Statement(
    rows.update()
    .where(rows.c.id == bindparam("p_id"), rows.c.value == bindparam("p_old", type_=BigInteger()))
    .values(value=bindparam("p_new", type_=BigInteger()))
)


class Unit(PostgresUnitOfWork):
    def add(self, row_id: str, value: int = 1) -> None:
        self.expect(self.hit(INSERT_NEW, {"id": row_id, "value": value, "at": None}))

    def insert(self, row_id: str, value: int = 1, at: datetime | None = None) -> None:
        self.execute(INSERT, {"id": row_id, "value": value, "at": at})

    def set(self, row_id: str, old: int, new: int) -> None:
        self.expect(self.hit(SET_IF, {"p_id": row_id, "p_old": old, "p_new": new}), "changed")


@pytest.fixture
async def database(make_database: Callable[..., Awaitable[Database]], pg_schema: str) -> Database:
    database = await make_database(pg_schema)
    async with database.transaction() as conn:
        await conn.execute(
            b"CREATE TABLE rows (id varchar(40) PRIMARY KEY, value bigint NOT NULL"
            b" CHECK (value >= 0), at timestamptz)"
        )
        await conn.execute(b"INSERT INTO rows VALUES ('a', 0, NULL)")
    return database


async def stored(database: Database) -> dict[str, int]:
    async with database.reading() as conn:
        cursor = await conn.execute(b"SELECT id, value FROM rows ORDER BY id")
        return {row_id: value for row_id, value in await cursor.fetchall()}


async def commit(database: Database, write: Callable[[Unit], None]) -> None:
    async with Unit(database, Mode.OPTIMISTIC) as unit:
        write(unit)
        await unit.commit()


async def outcomes(*units: Awaitable[None]) -> list[BaseException | None]:
    return [None if r is None else r for r in await asyncio.gather(*units, return_exceptions=True)]


def single_lane(database: Database) -> GroupCommit:
    # One group in flight: whatever arrives while it runs goes into the next one.
    database.group_commit = GroupCommit(database._pool, max_groups=1)
    return database.group_commit


async def test_a_single_unit_at_idle_commits_without_waiting_for_company(
    database: Database,
) -> None:
    committer = database.group_commit
    assert committer is not None
    await commit(database, lambda unit: unit.add("b"))
    assert await stored(database) == {"a": 0, "b": 1}
    assert (committer.stats.groups, committer.stats.units, committer.stats.largest) == (1, 1, 1)


async def test_concurrent_units_share_transactions(database: Database) -> None:
    committer = single_lane(database)
    await outcomes(*(commit(database, lambda unit, n=n: unit.add(f"r{n}", n)) for n in range(40)))
    assert len(await stored(database)) == 41
    assert committer.stats.units == 40
    # The first unit found the committer idle and went alone; the others waited and shared.
    assert committer.stats.groups < 40
    assert committer.stats.largest > 1


async def test_a_unit_that_lost_its_check_fails_alone_and_the_others_commit(
    database: Database,
) -> None:
    committer = single_lane(database)
    blocker = asyncio.create_task(commit(database, lambda unit: unit.add("first")))
    units = [
        commit(database, lambda unit: unit.add("x1")),
        commit(database, lambda unit: unit.set("a", 5, 6)),  # read 5, but it is 0: misses
        commit(database, lambda unit: (unit.add("x2"), unit.set("a", 0, 3))),
        commit(database, lambda unit: unit.add("x3")),
    ]
    results = await outcomes(*units)
    await blocker
    assert results[0] is None and results[2] is None and results[3] is None
    assert isinstance(results[1], Conflict)
    assert await stored(database) == {"a": 3, "first": 1, "x1": 1, "x2": 1, "x3": 1}
    assert committer.stats.reruns >= 1


async def test_two_units_racing_for_one_row_in_one_group_keep_one_update(
    database: Database,
) -> None:
    single_lane(database)
    blocker = asyncio.create_task(commit(database, lambda unit: unit.add("first")))
    results = await outcomes(
        commit(database, lambda unit: unit.set("a", 0, 1)),
        commit(database, lambda unit: unit.set("a", 0, 2)),
    )
    await blocker
    # Both read 0: the second write finds 1 (or the first finds 2), so exactly one wins.
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "NoneType"]
    assert (await stored(database))["a"] in (1, 2)


async def test_a_unit_alone_waiting_past_the_lock_timeout_commits_once_the_lock_is_free(
    database: Database,
) -> None:
    """The group's 100 ms lock timeout is for the units queued behind it: a unit that
    waited alone for another request's row lock runs again without it and commits (the
    bench found it failing with LockNotAvailable, a 500 for the client)."""
    committer = database.group_commit
    assert committer is not None
    async with database.transaction() as conn:  # another request's LOCKED unit
        await conn.execute(b"SELECT * FROM rows WHERE id = 'a' FOR UPDATE")
        waiting = asyncio.create_task(commit(database, lambda unit: unit.set("a", 0, 5)))
        await asyncio.sleep(0.3)  # past the group's lock timeout
        assert not waiting.done()
    await waiting
    assert await stored(database) == {"a": 5}
    assert committer.stats.alone == 1


async def test_a_database_error_fails_its_unit_only(database: Database) -> None:
    committer = single_lane(database)
    blocker = asyncio.create_task(commit(database, lambda unit: unit.add("first")))
    results = await outcomes(
        commit(database, lambda unit: unit.insert("y1")),
        commit(database, lambda unit: unit.insert("a")),  # duplicate primary key
        commit(database, lambda unit: unit.insert("y2", -1)),  # CHECK violation
        commit(database, lambda unit: unit.insert("y3")),
    )
    await blocker
    assert results[0] is None and results[3] is None
    assert isinstance(results[1], IntegrityError)
    assert isinstance(results[2], IntegrityError)
    assert await stored(database) == {"a": 0, "first": 1, "y1": 1, "y3": 1}
    assert committer.stats.alone >= 2


async def test_a_value_no_statement_takes_fails_its_unit_before_anything_is_sent(
    database: Database,
) -> None:
    single_lane(database)
    blocker = asyncio.create_task(commit(database, lambda unit: unit.add("first")))
    results = await outcomes(
        commit(database, lambda unit: unit.insert("z1", at=datetime(2026, 1, 1))),  # naive
        commit(database, lambda unit: unit.insert("z2")),
    )
    await blocker
    assert isinstance(results[0], ValueError)
    assert results[1] is None
    assert set(await stored(database)) == {"a", "first", "z2"}


async def test_a_group_lost_before_its_commit_loses_only_unanswered_units(
    database: Database, pg_url: str
) -> None:
    committer = single_lane(database)
    await commit(database, lambda unit: unit.add("acknowledged"))

    def kill_the_group(unit_batch_checked: list[int]) -> None:
        # Runs in a unit's check, after its group's statements ran and before the COMMIT:
        # the group's server process goes, as in a crash.
        unit_batch_checked.append(1)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE state = 'idle in transaction' AND pid <> pg_backend_pid()"
            )

    async def doomed(row_id: str, kill: bool) -> None:
        async with Unit(database, Mode.OPTIMISTIC) as unit:
            unit.add(row_id)
            if kill:
                check = unit._check_expected

                def checked() -> None:
                    kill_the_group([])
                    check()

                unit._check_expected = checked  # type: ignore[method-assign]
            await unit.commit()

    # Queued together before the committer's task runs: one group.
    results = await outcomes(doomed("lost1", False), doomed("lost2", True), doomed("lost3", False))
    assert all(isinstance(r, psycopg.OperationalError) for r in results), results
    assert set(await stored(database)) == {"a", "acknowledged"}
    # The committer goes on with a new connection.
    await commit(database, lambda unit: unit.add("after"))
    assert "after" in await stored(database)
    assert committer.stats.units == 2  # "acknowledged" and "after": nothing of the lost group


async def test_a_caller_cancelled_before_its_unit_was_taken_is_left_out(
    database: Database,
) -> None:
    single_lane(database)
    blocker = asyncio.create_task(commit(database, lambda unit: unit.add("first")))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(commit(database, lambda unit: unit.add("gone")))
    await asyncio.sleep(0)
    waiting.cancel()
    await blocker
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await commit(database, lambda unit: unit.add("next"))
    assert set(await stored(database)) == {"a", "first", "next"}


async def test_batches_run_alone_through_a_transaction_as_before(database: Database) -> None:
    # `Database.transaction(batch)` (not grouped) still runs a batch with its BEGIN.
    batch = Batch()
    found = batch.first(GET, {"p_id": "a"})
    async with database.transaction(batch):
        assert found.value is not None and found.value.value == 0


ADD_RETURNING = Statement(
    rows.update()
    .where(rows.c.id == bindparam("p_id"), rows.c.value == bindparam("p_old", type_=BigInteger()))
    .values(value=rows.c.value + bindparam("p_delta", type_=BigInteger()))
    .returning(rows.c.value)
)


async def test_units_of_one_shape_send_each_statement_once_for_all_and_keep_their_outcomes(
    database: Database,
) -> None:
    committer = single_lane(database)
    async with database.transaction() as conn:
        for n in range(8):
            await conn.execute(f"INSERT INTO rows VALUES ('c{n}', {n}, NULL)".encode())
    seen: dict[int, object] = {}

    async def step(n: int) -> None:
        async with Unit(database, Mode.OPTIMISTIC) as unit:
            unit.add(f"new{n}", n)
            old = 99 if n == 5 else n  # unit 5 read a value that is not there: it misses
            result = unit.first(ADD_RETURNING, {"p_id": f"c{n}", "p_old": old, "p_delta": 10})
            unit.expect(unit.hit(SET_IF, {"p_id": f"c{n}", "p_old": n + 10, "p_new": n + 100}))
            await unit.commit()
            seen[n] = result.value

    blocker = asyncio.create_task(commit(database, lambda unit: unit.add("first")))
    results = await outcomes(*(step(n) for n in range(8)))
    await blocker
    assert [type(r).__name__ for r in results] == ["NoneType"] * 5 + ["Conflict"] + ["NoneType"] * 2
    after = await stored(database)
    for n in range(8):
        if n == 5:
            assert after["c5"] == 5 and "new5" not in after  # nothing of it was kept
        else:
            assert after[f"c{n}"] == n + 100 and after[f"new{n}"] == n
            # Its own row of the merged UPDATE .. RETURNING, as the run alone would give it.
            assert seen[n] is not None and seen[n].value == n + 10  # type: ignore[attr-defined]
    assert committer.stats.merged > 0


async def test_two_units_writing_one_row_are_not_merged_and_only_one_wins(
    database: Database,
) -> None:
    committer = single_lane(database)
    blocker = asyncio.create_task(commit(database, lambda unit: unit.add("first")))
    results = await outcomes(
        commit(database, lambda unit: unit.add("same", 1)),
        commit(database, lambda unit: unit.add("same", 2)),
        commit(database, lambda unit: unit.add("other", 3)),
    )
    await blocker
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "NoneType", "NoneType"]
    after = await stored(database)
    assert after["same"] in (1, 2) and after["other"] == 3
    assert committer.stats.units == 3


async def test_without_group_commit_each_unit_commits_alone(
    make_database: Callable[..., Awaitable[Database]], pg_schema: str
) -> None:
    database = await make_database(pg_schema, commit_groups=0)
    assert database.group_commit is None
    async with database.transaction() as conn:
        await conn.execute(
            b"CREATE TABLE rows (id varchar(40) PRIMARY KEY, value bigint, at timestamptz)"
        )
    results = await outcomes(
        commit(database, lambda unit: unit.add("x")), commit(database, lambda unit: unit.add("x"))
    )
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "NoneType"]
    assert await stored(database) == {"x": 1}
