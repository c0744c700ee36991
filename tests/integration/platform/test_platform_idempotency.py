"""Idempotency on real PostgreSQL (and SQLite, the embedded default)."""

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pi.platform.db.engine import autocommit
from pi.platform.db.idempotency import Claim, Idempotency, idempotency_table
from pi.platform.kernel.errors import AlreadyExists, FailedPrecondition

metadata = MetaData()
effects = Table(
    "effects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("label", String(50), nullable=False),
)
keys = idempotency_table(metadata)
idem = Idempotency(keys)


@pytest.fixture(params=["postgresql", "sqlite"])
async def engine(
    request: pytest.FixtureRequest,
    pg_schema: str,
    make_engine: Callable[..., AsyncEngine],
    tmp_path: Path,
) -> AsyncIterator[AsyncEngine]:
    if request.param == "postgresql":
        engine = make_engine(pg_schema)
    else:
        engine = make_engine("main", url=f"sqlite:///{tmp_path}/idem.db")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine


async def create_thing(
    engine: AsyncEngine,
    key: str | None,
    label: str,
    *,
    scope: str = "mer_1",
    delay: float = 0.0,
    fail: bool = False,
) -> bytes:
    """A use case shaped like the real ones: claim, effect, complete, one transaction."""
    async with engine.begin() as conn:
        claim = await idem.claim(conn, scope, "CreateThing", key, f"fp:{label}")
        if claim.replay is not None:
            return claim.replay
        result = await conn.execute(effects.insert().values(label=label))
        await asyncio.sleep(delay)
        if fail:
            raise FailedPrecondition("the effect failed")
        response = f"thing {result.inserted_primary_key[0]} {label}".encode()  # type: ignore[index]
        await idem.complete(conn, claim, response)
        return response


async def effect_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(effects))).scalar_one())


async def test_same_key_and_request_replays_the_first_response(engine: AsyncEngine) -> None:
    first = await create_thing(engine, "key-1", "a")
    second = await create_thing(engine, "key-1", "a")
    assert second == first
    assert await effect_count(engine) == 1


async def test_same_key_with_a_different_request_is_rejected(engine: AsyncEngine) -> None:
    await create_thing(engine, "key-1", "a")
    with pytest.raises(AlreadyExists) as info:
        await create_thing(engine, "key-1", "b")
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await effect_count(engine) == 1


async def test_keys_are_scoped_per_merchant_and_operation(engine: AsyncEngine) -> None:
    await create_thing(engine, "key-1", "a", scope="mer_1")
    await create_thing(engine, "key-1", "a", scope="mer_2")
    assert await effect_count(engine) == 2
    async with engine.begin() as conn:
        claim = await idem.claim(conn, "mer_1", "OtherOperation", "key-1", "fp:a")
        assert claim.replay is None


async def test_no_key_means_no_idempotency(engine: AsyncEngine) -> None:
    await create_thing(engine, None, "a")
    await create_thing(engine, None, "a")
    assert await effect_count(engine) == 2


async def test_a_failed_effect_releases_the_key(engine: AsyncEngine) -> None:
    with pytest.raises(FailedPrecondition):
        await create_thing(engine, "key-1", "a", fail=True)
    assert await effect_count(engine) == 0
    await create_thing(engine, "key-1", "a")
    assert await effect_count(engine) == 1


async def test_twenty_concurrent_duplicates_make_one_effect(engine: AsyncEngine) -> None:
    responses = await asyncio.gather(
        *(create_thing(engine, "dup-key", "a", delay=0.05) for _ in range(20))
    )
    assert await effect_count(engine) == 1
    assert len(set(responses)) == 1


async def test_concurrent_duplicate_after_a_rollback_does_the_effect_itself(
    engine: AsyncEngine,
) -> None:
    claimed = asyncio.Event()

    async def first_fails_after_claiming() -> None:
        async with engine.begin() as conn:
            claim = await idem.claim(conn, "mer_1", "CreateThing", "k", "fp:a")
            assert claim.replay is None
            await conn.execute(effects.insert().values(label="doomed"))
            claimed.set()
            await asyncio.sleep(0.2)
            raise FailedPrecondition("the effect failed")

    async def duplicate() -> bytes:
        await claimed.wait()
        return await create_thing(engine, "k", "a")

    results = await asyncio.gather(
        first_fails_after_claiming(), duplicate(), return_exceptions=True
    )
    assert isinstance(results[0], FailedPrecondition)
    assert isinstance(results[1], bytes)
    assert await effect_count(engine) == 1


async def test_concurrent_requests_with_different_bodies_get_one_effect(
    engine: AsyncEngine,
) -> None:
    results = await asyncio.gather(
        *(create_thing(engine, "k", f"body-{i}", delay=0.02) for i in range(5)),
        return_exceptions=True,
    )
    successes = [r for r in results if isinstance(r, bytes)]
    rejected = [r for r in results if isinstance(r, AlreadyExists)]
    assert len(successes) == 1 and len(rejected) == 4
    assert await effect_count(engine) == 1


async def test_purge_keeps_keys_for_at_least_a_day(engine: AsyncEngine) -> None:
    from datetime import timedelta

    await create_thing(engine, "key-1", "a")
    async with engine.begin() as conn:
        assert await idem.purge(conn) == 0
        with pytest.raises(ValueError):
            await idem.purge(conn, timedelta(hours=1))


async def test_complete_refuses_a_replayed_claim(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        with pytest.raises(ValueError):
            await idem.complete(conn, Claim("s", "op", "k", "fp", replay=b"x"), b"y")


async def create_with_response_up_front(
    engine: AsyncEngine, key: str | None, label: str, *, delay: float = 0.0, fail: bool = False
) -> bytes:
    """A use case that knows its response before the effect: claim and response in one."""
    async with engine.begin() as conn:
        response = f"pending {label}".encode()
        claim = await idem.claim(
            conn, "mer_1", "CreateThing", key, f"fp:{label}", response=response
        )
        if claim.replay is not None:
            return claim.replay
        await conn.execute(effects.insert().values(label=label))
        await asyncio.sleep(delay)
        if fail:
            raise FailedPrecondition("the effect failed")
        return response


async def test_a_claim_can_hold_its_response_from_the_start(engine: AsyncEngine) -> None:
    first = await create_with_response_up_front(engine, "key-1", "a")
    assert await create_with_response_up_front(engine, "key-1", "a") == first == b"pending a"
    # The old two-step use case replays it too: it is the same stored response.
    assert await create_thing(engine, "key-1", "a") == first
    with pytest.raises(AlreadyExists):
        await create_with_response_up_front(engine, "key-1", "b")
    assert await effect_count(engine) == 1


async def test_a_failed_effect_takes_the_claim_and_its_response_with_it(
    engine: AsyncEngine,
) -> None:
    with pytest.raises(FailedPrecondition):
        await create_with_response_up_front(engine, "key-1", "a", fail=True)
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(keys))).scalar_one() == 0
    # The key is free: a different request may take it now.
    assert await create_with_response_up_front(engine, "key-1", "b") == b"pending b"
    assert await effect_count(engine) == 1


async def test_concurrent_duplicates_of_a_claim_with_its_response_make_one_effect(
    engine: AsyncEngine,
) -> None:
    responses = await asyncio.gather(
        *(create_with_response_up_front(engine, "dup", "a", delay=0.02) for _ in range(20))
    )
    assert set(responses) == {b"pending a"}
    assert await effect_count(engine) == 1


async def test_reject_reuse_refuses_only_a_key_held_by_another_request(
    engine: AsyncEngine,
) -> None:
    await create_thing(engine, "used", "a")
    async with engine.connect() as conn:
        await idem.reject_reuse(conn, "mer_1", "CreateThing", "unused", "fp:a")
        await idem.reject_reuse(conn, "mer_1", "CreateThing", "used", "fp:a")
        await idem.reject_reuse(conn, "mer_1", "CreateThing", None, "fp:b")
        await idem.reject_reuse(conn, "mer_2", "CreateThing", "used", "fp:b")
        with pytest.raises(AlreadyExists) as info:
            await idem.reject_reuse(conn, "mer_1", "CreateThing", "used", "fp:b")
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
    # It claimed nothing.
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(keys))).scalar_one() == 1


async def test_claims_commit_and_roll_back_with_the_callers_connection(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as conn:  # no begin(): the claim begins the transaction
        await idem.claim(conn, "mer_1", "CreateThing", "rolled-back", "fp:a")
        await conn.rollback()
        claim = await idem.claim(conn, "mer_1", "CreateThing", "kept", "fp:a")
        await idem.complete(conn, claim, b"done")
        await conn.commit()
    async with autocommit(engine).connect() as conn:
        stored = (await conn.execute(select(keys.c.key, keys.c.response))).all()
        with pytest.raises(AlreadyExists):
            await idem.reject_reuse(conn, "mer_1", "CreateThing", "kept", "fp:b")
    assert [tuple(row) for row in stored] == [("kept", b"done")]
