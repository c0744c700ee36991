"""Prebuilt statements on real PostgreSQL (psycopg, prepared) and SQLite (conn.execute)."""

import enum
import gc
import weakref
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
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
    Row,
    String,
    Table,
    any_,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import (
    IntegrityError,
    MultipleResultsFound,
    NoResultFound,
    OperationalError,
    StatementError,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from pi.platform.db.engine import UtcDateTime, autocommit, is_postgres
from pi.platform.db.statements import Statement


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
# An array parameter on PostgreSQL (one SQL text whatever the number of ids), the
# expanding `IN (...)` elsewhere.
AMONG = Statement(
    select(items.c.id)
    .where(items.c.id == any_(bindparam("p_ids", type_=ARRAY(String()))))
    .order_by(items.c.id),
    fallback=select(items.c.id)
    .where(items.c.id.in_(bindparam("p_ids", type_=String(), expanding=True)))
    .order_by(items.c.id),
)

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


@pytest.fixture(params=["postgresql", "sqlite"])
async def engine(
    request: pytest.FixtureRequest, make_engine: Callable[..., AsyncEngine], tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    if request.param == "postgresql":
        engine = make_engine(request.getfixturevalue("pg_schema"))
    else:
        engine = make_engine("main", url=f"sqlite:///{tmp_path}/statements.db")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine


@pytest.fixture
async def pg_engine(make_engine: Callable[..., AsyncEngine], pg_schema: str) -> AsyncEngine:
    engine = make_engine(pg_schema)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return engine


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(items))).scalar_one())


async def test_rows_are_those_conn_execute_gives(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        assert await INSERT.execute(conn, item("a")) == 1
        await INSERT.execute(conn, item("b", amount=7, flag=True, blob=None))

    async with engine.connect() as conn:
        row = await GET.first(conn, {"p_id": "a"})
        expected = (await conn.execute(select(items).where(items.c.id == "a"))).one()
        many = await FROM_AMOUNT.all(conn, {"p_min": 1})
        flagged = await FLAGGED.all(conn)

    assert row is not None
    # PostgreSQL rows come from psycopg, SQLite rows from SQLAlchemy: the same values.
    assert isinstance(row, Row) is not is_postgres(engine)
    assert tuple(row) == tuple(expected)
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


async def test_json_round_trips_as_a_dict(engine: AsyncEngine) -> None:
    payload = {"nested": {"list": [1, "two", {"three": 3}]}, "unicode": "żółw 🐢", "n": None}
    async with engine.begin() as conn:
        await INSERT.execute(conn, item("a", payload=payload))
        row = await GET.one(conn, {"p_id": "a"})
        assert row.payload == payload
        if is_postgres(engine):
            stored = await conn.execute(
                text("SELECT jsonb_typeof(payload -> 'nested') FROM items WHERE id = 'a'")
            )
            assert stored.scalar_one() == "object"


async def test_datetimes_come_back_aware_utc(engine: AsyncEngine) -> None:
    at = datetime(2026, 3, 4, 23, 30, 0, 123456, tzinfo=TOKYO)
    async with engine.begin() as conn:
        if is_postgres(engine):
            # psycopg gives timestamptz in the session's zone: still UTC to the caller.
            await conn.execute(text("SET TIME ZONE 'Asia/Tokyo'"))
        await INSERT.execute(conn, item("a", at=at))
        row = await GET.one(conn, {"p_id": "a"})
    assert row.at == at
    assert row.at.tzinfo is UTC


async def test_naive_datetimes_are_refused_as_by_conn_execute(engine: AsyncEngine) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        async with engine.begin() as conn:
            await INSERT.execute(conn, item("a", at=datetime(2026, 1, 1)))
    assert await count(engine) == 0


async def test_constraint_violations_raise_sqlalchemy_integrity_error(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await INSERT.execute(conn, item("a"))

    with pytest.raises(IntegrityError) as duplicate:
        async with engine.begin() as conn:
            await INSERT.execute(conn, item("a"))
    with pytest.raises(IntegrityError) as checked:
        async with engine.begin() as conn:
            await ADD.one(conn, {"p_id": "a", "p_delta": -100})

    if is_postgres(engine):
        assert isinstance(duplicate.value.orig, psycopg.errors.UniqueViolation)
        assert isinstance(checked.value.orig, psycopg.errors.CheckViolation)
    async with engine.connect() as conn:
        row = await GET.one(conn, {"p_id": "a"})
    assert row.amount == 100


async def test_statements_run_in_the_callers_transaction(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        transaction = await conn.begin()
        await INSERT.execute(conn, item("a"))
        # conn.execute sees the uncommitted row: the same transaction.
        assert (await conn.execute(select(func.count()).select_from(items))).scalar_one() == 1
        assert (await ADD.one(conn, {"p_id": "a", "p_delta": 5})).amount == 105
        await transaction.rollback()
    assert await count(engine) == 0

    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await INSERT.execute(conn, item("b"))
            raise RuntimeError("the unit of work fails")
    assert await count(engine) == 0


async def test_postgres_statements_share_the_transaction_sqlalchemy_began(
    pg_engine: AsyncEngine,
) -> None:
    txid = Statement(select(func.txid_current().label("txid")))
    async with pg_engine.begin() as conn:
        ours = (await txid.one(conn)).txid
        theirs = (await conn.execute(select(func.txid_current()))).scalar_one()
    assert ours == theirs


async def test_a_statement_first_on_a_connection_is_committed_by_commit(
    engine: AsyncEngine,
) -> None:
    # No begin(): the statement begins SQLAlchemy's transaction as conn.execute would.
    async with engine.connect() as conn:
        await INSERT.execute(conn, item("a"))
        await conn.commit()
    async with engine.connect() as conn:
        await INSERT.execute(conn, item("b"))  # closed without commit: rolled back
    assert await count(engine) == 1


async def test_autocommit_connections_commit_each_statement(engine: AsyncEngine) -> None:
    async with autocommit(engine).connect() as conn:
        await INSERT.execute(conn, item("a"))
        assert (await COUNT.one(conn)).n == 1
    assert await count(engine) == 1


async def test_statements_keep_working_after_a_rollback(engine: AsyncEngine) -> None:
    # On PostgreSQL a ROLLBACK makes psycopg deallocate its prepared statements.
    for attempt in range(3):
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await INSERT.execute(conn, item(f"ok{attempt}"))
                await INSERT.execute(conn, item(f"ok{attempt}"))
        async with engine.begin() as conn:
            await INSERT.execute(conn, item(f"kept{attempt}"))
            assert (await GET.one(conn, {"p_id": f"kept{attempt}"})).id == f"kept{attempt}"
    assert await count(engine) == 3


async def test_postgres_statements_are_prepared_on_first_use(pg_engine: AsyncEngine) -> None:
    async with pg_engine.connect() as conn:
        assert await GET.first(conn, {"p_id": "missing"}) is None
        prepared = await conn.execute(text("SELECT statement FROM pg_prepared_statements"))
        statements = [row[0] for row in prepared]
    assert any(s.startswith("SELECT items.id") and "$1" in s for s in statements)


async def test_postgres_prepares_a_statement_once_whatever_the_size_of_its_ints(
    pg_engine: AsyncEngine,
) -> None:
    async with pg_engine.begin() as conn:
        await INSERT.execute(conn, item("a", amount=1))
        for delta in (1, 40_000, 3_000_000_000, -2):
            await ADD.one(conn, {"p_id": "a", "p_delta": delta})
        assert (await GET.one(conn, {"p_id": "a"})).amount == 3_000_040_000
        prepared = await conn.execute(
            text("SELECT parameter_types FROM pg_prepared_statements WHERE statement LIKE :p"),
            {"p": "UPDATE items%"},
        )
        updates = [row[0] for row in prepared]
    # One statement for every size of delta (p_delta int8, p_id inferred from its cast).
    assert updates == [["bigint", "character varying"]]


async def test_one_first_and_execute_report_what_they_found(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await INSERT.execute(conn, item("a"))
        await INSERT.execute(conn, item("b"))
        assert await GET.first(conn, {"p_id": "zzz"}) is None
        with pytest.raises(NoResultFound):
            await GET.one(conn, {"p_id": "zzz"})
        with pytest.raises(MultipleResultsFound):
            await FROM_AMOUNT.one(conn, {"p_min": 1})
        assert await ADD.execute(conn, {"p_id": "zzz", "p_delta": 1}) == 0


async def test_a_lost_postgres_connection_is_invalidated_not_pooled(
    pg_engine: AsyncEngine,
) -> None:
    async with pg_engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with autocommit(pg_engine).connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(OperationalError) as lost:
            await GET.first(conn, {"p_id": "a"})
        assert lost.value.connection_invalidated
        assert conn.invalidated
    async with pg_engine.connect() as conn:
        assert await GET.first(conn, {"p_id": "a"}) is None


async def test_reused_cursors_do_not_keep_discarded_connections_alive(
    pg_engine: AsyncEngine,
) -> None:
    async with pg_engine.connect() as conn:
        assert (await COUNT.one(conn)).n == 0
        driver = weakref.ref((await conn.get_raw_connection()).driver_connection)
    await pg_engine.dispose()
    gc.collect()
    assert driver() is None


async def test_dialect_specific_statements_run_their_fallback_elsewhere(
    engine: AsyncEngine,
) -> None:
    claim = Statement(
        postgresql.insert(items).on_conflict_do_nothing().returning(items.c.id),
        fallback=sqlite.insert(items).on_conflict_do_nothing().returning(items.c.id),
    )
    async with engine.begin() as conn:
        assert (await claim.one(conn, item("a"))).id == "a"
        assert await claim.first(conn, item("a", amount=5)) is None
        assert (await GET.one(conn, {"p_id": "a"})).amount == 100


async def test_execute_many_runs_once_per_mapping_in_order(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
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
    async with engine.connect() as conn:
        a, b = await FROM_AMOUNT.all(conn, {"p_min": 0})
    assert (a.amount, b.amount) == (205, 101)
    # Every run's values went through the column types, as with conn.execute.
    assert (b.color, b.payload, b.at) == (
        Color.BLUE,
        item("b")["payload"],
        datetime(2026, 5, 5, 15, tzinfo=UTC),
    )


async def test_execute_many_with_nothing_to_run_runs_nothing(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        assert await INSERT.execute_many(conn, []) == 0
        assert await SCALE.execute_many(conn, iter(())) == 0
    assert await count(engine) == 0


async def test_a_failing_run_fails_the_call_and_later_statements_still_work(
    engine: AsyncEngine,
) -> None:
    with pytest.raises(IntegrityError) as duplicate:
        async with engine.begin() as conn:
            await INSERT.execute_many(conn, [item("a"), item("b"), item("a"), item("c")])
    if is_postgres(engine):
        assert isinstance(duplicate.value.orig, psycopg.errors.UniqueViolation)
    assert await count(engine) == 0

    # On PostgreSQL the runs were pipelined: the connection is back out of the pipeline,
    # and its prepared statements are usable again.
    async with engine.begin() as conn:
        await INSERT.execute_many(conn, [item("a"), item("b")])
        await SCALE.execute_many(conn, [{"p_id": "a", "p_factor": 3, "p_plus": 0}])
        assert (await GET.one(conn, {"p_id": "a"})).amount == 300
        assert await ADD.one(conn, {"p_id": "b", "p_delta": 1}) == ("b", 101)
    assert await count(engine) == 2


async def test_execute_many_checks_every_run_before_sending_any(engine: AsyncEngine) -> None:
    # On an autocommit connection a run that was sent would stay committed.
    async with autocommit(engine).connect() as conn:
        with pytest.raises(StatementError, match="naive datetime"):
            await INSERT.execute_many(conn, [item("a"), item("b", at=datetime(2026, 1, 1))])
    assert await count(engine) == 0


async def test_execute_many_refuses_statements_that_return_rows(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await INSERT.execute(conn, item("a"))
        for returning in (ADD, GET):
            with pytest.raises(ValueError, match="rows"):
                await returning.execute_many(conn, [{"p_id": "a", "p_delta": 1}])
        assert (await GET.one(conn, {"p_id": "a"})).amount == 100


async def test_postgres_prepares_an_execute_many_statement_once(pg_engine: AsyncEngine) -> None:
    async with pg_engine.begin() as conn:
        await INSERT.execute(conn, item("a"))
        runs = [{"p_id": "a", "p_factor": 1, "p_plus": n} for n in range(10)]
        assert await SCALE.execute_many(conn, runs) == 10
        assert (await GET.one(conn, {"p_id": "a"})).amount == 145
        prepared = await conn.execute(
            text("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE :p"),
            {"p": "UPDATE items%"},
        )
        assert prepared.scalar_one() == 1


async def test_an_array_parameter_matches_like_the_in_list_of_the_fallback(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await INSERT.execute_many(conn, [item("a"), item("b"), item("c")])
        assert [r.id for r in await AMONG.all(conn, {"p_ids": ["c", "zzz", "a"]})] == ["a", "c"]
        assert await AMONG.all(conn, {"p_ids": []}) == []
        # Whole values only: "a" is not a prefix match for "ab", nor "ab" for "a".
        assert await AMONG.all(conn, {"p_ids": ["ab"]}) == []
