"""Prebuilt statements on real PostgreSQL: psycopg connections, prepared statements."""

import enum
import gc
import weakref
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Enum,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB

from pi.platform.db.database import Database, open_database_for
from pi.platform.db.engine import UtcDateTime, sync_engine
from pi.platform.db.errors import (
    IntegrityError,
    MultipleResultsFound,
    NoResultFound,
    OperationalError,
    sqlstate,
)
from pi.platform.db.statements import Statement, for_any_of


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("color", Enum(Color, native_enum=False, length=16), nullable=False),
    Column("payload", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    Column("blob", LargeBinary, nullable=True),
    Column("flag", Boolean, nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    CheckConstraint("amount > 0", name="ck_items_amount_positive"),
)

INSERT = Statement(items.insert())
GET = Statement(select(items).where(items.c.id == bindparam("p_id")))
FROM_AMOUNT = Statement(
    select(items).where(items.c.amount >= bindparam("p_min")).order_by(items.c.id)
)
FLAGGED = Statement(select(items.c.id).where(items.c.flag.is_(True)).order_by(items.c.id))
ADD = Statement(
    update(items)
    .where(items.c.id == bindparam("p_id"))
    .values(amount=items.c.amount + bindparam("p_delta", type_=BigInteger()))
    .returning(items.c.id, items.c.amount)
)
COUNT = Statement(select(func.count().label("n")).select_from(items))
# The order of its runs shows in the result: (100 * 2) + 5 is not (100 + 5) * 2.
SCALE = Statement(
    update(items)
    .where(items.c.id == bindparam("p_id"))
    .values(
        amount=items.c.amount * bindparam("p_factor", type_=BigInteger())
        + bindparam("p_plus", type_=BigInteger())
    )
)
# An array parameter: one SQL text whatever the number of ids.
AMONG = for_any_of(items.c.id, lambda among: select(items.c.id).where(among).order_by(items.c.id))
TXID = Statement(select(func.txid_current().label("txid")))
BACKEND = Statement(select(func.pg_backend_pid().label("pid")))

TOKYO = timezone(timedelta(hours=9))


def item(item_id: str, **values: Any) -> dict[str, Any]:
    return {
        "id": item_id,
        "amount": 100,
        "status": "PENDING",
        "color": Color.RED,
        "payload": {"order": "A-1", "lines": [1, 2.5, None], "note": "café ✓"},
        "blob": b"\x00\xffbytes",
        "flag": False,
        "at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        **values,
    }


@pytest.fixture
async def database(pg_url: str, pg_schema: str) -> AsyncIterator[Database]:
    engine = sync_engine(pg_url, pg_schema)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()
    database = await open_database_for(pg_url, pg_schema, pool_size=2)
    yield database
    await database.close()


async def count(database: Database) -> int:
    async with database.reading() as conn:
        return int((await COUNT.one(conn)).n)


async def test_rows_are_named_tuples_of_the_columns_processed_values(database: Database) -> None:
    async with database.transaction() as conn:
        assert await INSERT.execute(conn, item("a")) == 1
        await INSERT.execute(conn, item("b", amount=7, flag=True, blob=None))

    async with database.reading() as conn:
        row = await GET.first(conn, {"p_id": "a"})
        many = await FROM_AMOUNT.all(conn, {"p_min": 1})
        flagged = await FLAGGED.all(conn)

    assert row is not None
    assert tuple(row) == tuple(item("a").values())
    assert (row.id, row.amount, row.status, row.color, row.flag) == (
        "a",
        100,
        "PENDING",
        Color.RED,
        False,
    )
    assert row.blob == b"\x00\xffbytes"
    assert row[0] == "a"
    assert [(r.id, r.amount, r.blob) for r in many] == [
        ("a", 100, b"\x00\xffbytes"),
        ("b", 7, None),
    ]
    assert [r.id for r in flagged] == ["b"]


async def test_json_round_trips_as_a_dict(database: Database) -> None:
    payload = {"nested": {"list": [1, "two", {"three": 3}]}, "unicode": "żółw 🐢", "n": None}
    async with database.transaction() as conn:
        await INSERT.execute(conn, item("a", payload=payload))
        row = await GET.one(conn, {"p_id": "a"})
        assert row.payload == payload
        stored = await conn.execute("SELECT jsonb_typeof(payload -> 'nested') FROM items")
        assert await stored.fetchone() == ("object",)


async def test_datetimes_come_back_aware_utc(database: Database) -> None:
    at = datetime(2026, 3, 4, 23, 30, 0, 123456, tzinfo=TOKYO)
    async with database.transaction() as conn:
        # psycopg gives timestamptz in the session's zone: still UTC to the caller.
        await conn.execute("SET LOCAL TIME ZONE 'Asia/Tokyo'")
        await INSERT.execute(conn, item("a", at=at))
        row = await GET.one(conn, {"p_id": "a"})
    assert row.at == at
    assert row.at.tzinfo is UTC


async def test_naive_datetimes_are_refused_before_anything_is_sent(database: Database) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        async with database.transaction() as conn:
            await INSERT.execute(conn, item("a", at=datetime(2026, 1, 1)))
    assert await count(database) == 0


async def test_constraint_violations_raise_psycopgs_integrity_errors(database: Database) -> None:
    async with database.transaction() as conn:
        await INSERT.execute(conn, item("a"))

    with pytest.raises(IntegrityError) as duplicate:
        async with database.transaction() as conn:
            await INSERT.execute(conn, item("a"))
    with pytest.raises(IntegrityError) as checked:
        async with database.transaction() as conn:
            await ADD.one(conn, {"p_id": "a", "p_delta": -100})

    assert isinstance(duplicate.value, psycopg.errors.UniqueViolation)
    assert isinstance(checked.value, psycopg.errors.CheckViolation)
    assert (sqlstate(duplicate.value), sqlstate(checked.value)) == ("23505", "23514")
    async with database.reading() as conn:
        row = await GET.one(conn, {"p_id": "a"})
    assert row.amount == 100


async def test_statements_run_in_the_callers_transaction(database: Database) -> None:
    async with database.discarded() as conn:
        await INSERT.execute(conn, item("a"))
        # psycopg's own execute sees the uncommitted row: the same transaction.
        assert await (await conn.execute("SELECT count(*) FROM items")).fetchone() == (1,)
        assert (await ADD.one(conn, {"p_id": "a", "p_delta": 5})).amount == 105
        ours = (await TXID.one(conn)).txid
        assert await (await conn.execute("SELECT txid_current()")).fetchone() == (ours,)
    assert await count(database) == 0

    with pytest.raises(RuntimeError):
        async with database.transaction() as conn:
            await INSERT.execute(conn, item("b"))
            raise RuntimeError("the unit of work fails")
    assert await count(database) == 0


async def test_autocommit_connections_commit_each_statement(database: Database) -> None:
    async with database.reading() as conn:
        await INSERT.execute(conn, item("a"))
        assert (await COUNT.one(conn)).n == 1
    assert await count(database) == 1


async def test_statements_keep_working_after_a_rollback(database: Database) -> None:
    # A ROLLBACK makes psycopg deallocate its prepared statements.
    for attempt in range(3):
        with pytest.raises(IntegrityError):
            async with database.transaction() as conn:
                await INSERT.execute(conn, item(f"ok{attempt}"))
                await INSERT.execute(conn, item(f"ok{attempt}"))
        async with database.transaction() as conn:
            await INSERT.execute(conn, item(f"kept{attempt}"))
            assert (await GET.one(conn, {"p_id": f"kept{attempt}"})).id == f"kept{attempt}"
    assert await count(database) == 3


async def test_statements_are_prepared_on_first_use(database: Database) -> None:
    async with database.reading() as conn:
        assert await GET.first(conn, {"p_id": "missing"}) is None
        prepared = await conn.execute("SELECT statement FROM pg_prepared_statements")
        statements = [row[0] for row in await prepared.fetchall()]
    assert any(s.startswith("SELECT items.id") and "$1" in s for s in statements)


async def test_a_statement_is_prepared_once_whatever_the_size_of_its_ints(
    database: Database,
) -> None:
    async with database.transaction() as conn:
        await INSERT.execute(conn, item("a", amount=1))
        for delta in (1, 40_000, 3_000_000_000, -2):
            await ADD.one(conn, {"p_id": "a", "p_delta": delta})
        assert (await GET.one(conn, {"p_id": "a"})).amount == 3_000_040_000
        prepared = await conn.execute(
            "SELECT parameter_types FROM pg_prepared_statements WHERE statement LIKE %s",
            ("UPDATE items%",),
        )
        updates = [row[0] for row in await prepared.fetchall()]
    # One statement for every size of delta (p_delta int8, p_id inferred from its cast).
    assert updates == [["bigint", "character varying"]]


async def test_one_first_and_execute_report_what_they_found(database: Database) -> None:
    async with database.transaction() as conn:
        await INSERT.execute(conn, item("a"))
        await INSERT.execute(conn, item("b"))
        assert await GET.first(conn, {"p_id": "zzz"}) is None
        with pytest.raises(NoResultFound):
            await GET.one(conn, {"p_id": "zzz"})
        with pytest.raises(MultipleResultsFound):
            await FROM_AMOUNT.one(conn, {"p_min": 1})
        assert await ADD.execute(conn, {"p_id": "zzz", "p_delta": 1}) == 0


async def test_a_lost_connection_raises_operational_error_and_is_replaced(
    database: Database,
) -> None:
    async with database.reading() as conn:
        pid = (await BACKEND.one(conn)).pid
        async with database.reading() as other:
            await other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(OperationalError):
            await GET.first(conn, {"p_id": "a"})
        assert conn.broken
    for _ in range(3):
        async with database.reading() as conn:
            assert await GET.first(conn, {"p_id": "a"}) is None
            assert (await BACKEND.one(conn)).pid != pid


async def test_reused_cursors_do_not_keep_discarded_connections_alive(
    pg_url: str, pg_schema: str, database: Database
) -> None:
    other = await open_database_for(pg_url, pg_schema, pool_size=1)
    async with other.reading() as conn:
        assert (await COUNT.one(conn)).n == 0
        driver = weakref.ref(conn)
    del conn
    await other.close()
    gc.collect()
    assert driver() is None


async def test_postgresql_insert_on_conflict_runs_as_built(database: Database) -> None:
    claim = Statement(postgresql.insert(items).on_conflict_do_nothing().returning(items.c.id))
    async with database.transaction() as conn:
        assert (await claim.one(conn, item("a"))).id == "a"
        assert await claim.first(conn, item("a", amount=5)) is None
        assert (await GET.one(conn, {"p_id": "a"})).amount == 100


async def test_execute_many_runs_once_per_mapping_in_order(database: Database) -> None:
    async with database.transaction() as conn:
        inserted = await INSERT.execute_many(
            conn, [item("a"), item("b", color=Color.BLUE, at=datetime(2026, 5, 6, tzinfo=TOKYO))]
        )
        updated = await SCALE.execute_many(
            conn,
            [
                {"p_id": "a", "p_factor": 2, "p_plus": 0},
                {"p_id": "a", "p_factor": 1, "p_plus": 5},
                {"p_id": "missing", "p_factor": 1, "p_plus": 1},
                {"p_id": "b", "p_factor": 1, "p_plus": 1},
            ],
        )
    assert (inserted, updated) == (2, 3)
    async with database.reading() as conn:
        a, b = await FROM_AMOUNT.all(conn, {"p_min": 0})
    assert (a.amount, b.amount) == (205, 101)
    # Every run's values went through the column types.
    assert (b.color, b.payload, b.at) == (
        Color.BLUE,
        item("b")["payload"],
        datetime(2026, 5, 5, 15, tzinfo=UTC),
    )


async def test_arrays_go_in_binary_and_bring_back_any_value(database: Database) -> None:
    """A merged INSERT sends every column as an array, in binary: text that a text array
    would have to escape, NULLs, bytes with NUL, JSON and aware datetimes come back as
    they were, and an array that is all NULL or empty (sent as text) works too."""
    odd = ['a"b', "c,d", "{e}", "back\\slash", "café ✓", "NULL", " ", ""]
    rows = [
        item(
            f"odd-{n}",
            status=text,
            blob=None if n % 2 else b'\x00{,}"\\',
            payload={"text": text, "n": n},
            at=datetime(2026, 5, 6, n, tzinfo=TOKYO),
        )
        for n, text in enumerate(odd)
    ]
    assert "%(status)b::VARCHAR[]" in (INSERT.merged.sql if INSERT.merged else "")
    async with database.transaction() as conn:
        assert await INSERT.execute_many(conn, rows) == len(rows)
        found = await AMONG.all(conn, {"p_ids": [r["id"] for r in rows]})
        assert [r.id for r in found] == [r["id"] for r in rows]
        assert await AMONG.all(conn, {"p_ids": [None, None]}) == []
        assert await AMONG.all(conn, {"p_ids": []}) == []
        for row in rows:
            got = await GET.one(conn, {"p_id": row["id"]})
            assert (got.status, got.blob, got.payload) == (
                row["status"],
                row["blob"],
                row["payload"],
            )
            assert got.at == row["at"].astimezone(UTC)


async def test_execute_many_with_nothing_to_run_runs_nothing(database: Database) -> None:
    async with database.transaction() as conn:
        assert await INSERT.execute_many(conn, []) == 0
        assert await SCALE.execute_many(conn, iter(())) == 0
    assert await count(database) == 0


async def test_a_failing_run_fails_the_call_and_later_statements_still_work(
    database: Database,
) -> None:
    with pytest.raises(IntegrityError) as duplicate:
        async with database.transaction() as conn:
            await INSERT.execute_many(conn, [item("a"), item("b"), item("a"), item("c")])
    assert isinstance(duplicate.value, psycopg.errors.UniqueViolation)
    assert await count(database) == 0

    # The runs were pipelined: the connection is back out of the pipeline, and its
    # prepared statements are usable again.
    async with database.transaction() as conn:
        await INSERT.execute_many(conn, [item("a"), item("b")])
        await SCALE.execute_many(conn, [{"p_id": "a", "p_factor": 3, "p_plus": 0}])
        assert (await GET.one(conn, {"p_id": "a"})).amount == 300
        assert await ADD.one(conn, {"p_id": "b", "p_delta": 1}) == ("b", 101)
    assert await count(database) == 2


async def test_execute_many_checks_every_run_before_sending_any(database: Database) -> None:
    # On an autocommit connection a run that was sent would stay committed.
    async with database.reading() as conn:
        with pytest.raises(ValueError, match="naive datetime"):
            await INSERT.execute_many(conn, [item("a"), item("b", at=datetime(2026, 1, 1))])
    assert await count(database) == 0


async def test_execute_many_refuses_statements_that_return_rows(database: Database) -> None:
    async with database.transaction() as conn:
        await INSERT.execute(conn, item("a"))
        for returning in (ADD, GET):
            with pytest.raises(ValueError, match="rows"):
                await returning.execute_many(conn, [{"p_id": "a", "p_delta": 1}])
        assert (await GET.one(conn, {"p_id": "a"})).amount == 100


async def test_an_execute_many_statement_is_prepared_once(database: Database) -> None:
    async with database.transaction() as conn:
        await INSERT.execute(conn, item("a"))
        runs = [{"p_id": "a", "p_factor": 1, "p_plus": n} for n in range(10)]
        assert await SCALE.execute_many(conn, runs) == 10
        assert (await GET.one(conn, {"p_id": "a"})).amount == 145
        prepared = await conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            ("UPDATE items%",),
        )
        assert await prepared.fetchone() == (1,)


async def test_an_array_parameter_matches_whole_values(database: Database) -> None:
    async with database.transaction() as conn:
        await INSERT.execute_many(conn, [item("a"), item("b"), item("c")])
        assert [r.id for r in await AMONG.all(conn, {"p_ids": ["c", "zzz", "a"]})] == ["a", "c"]
        assert await AMONG.all(conn, {"p_ids": []}) == []
        # Whole values only: "a" is not a prefix match for "ab", nor "ab" for "a".
        assert await AMONG.all(conn, {"p_ids": ["ab"]}) == []
        # Unsized VARCHAR: a longer value than the column's is compared, not cut.
        assert await AMONG.all(conn, {"p_ids": ["a" + "x" * 60]}) == []
