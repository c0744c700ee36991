"""Idempotency on real PostgreSQL."""

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, func, select

from pi.platform.db.batch import Batch
from pi.platform.db.database import Database
from pi.platform.db.engine import sync_engine
from pi.platform.db.idempotency import Claim, Idempotency, idempotency_table
from pi.platform.db.statements import Statement
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

INSERT_EFFECT = Statement(
    effects.insert().values(label=bindparam("p_label")).returning(effects.c.id)
)
COUNT_EFFECTS = Statement(select(func.count().label("n")).select_from(effects))
COUNT_KEYS = Statement(select(func.count().label("n")).select_from(keys))
STORED = Statement(select(keys.c.key, keys.c.response))


@pytest.fixture
async def database(
    pg_url: str, pg_schema: str, make_database: Callable[..., Awaitable[Database]]
) -> Database:
    engine = sync_engine(pg_url, pg_schema)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()
    return await make_database(pg_schema)


async def create_thing(
    database: Database,
    key: str | None,
    label: str,
    *,
    scope: str = "mer_1",
    delay: float = 0.0,
    fail: bool = False,
) -> bytes:
    """A use case shaped like the real ones: claim, effect, complete, one transaction."""
    async with database.transaction() as conn:
        claim = await idem.claim(conn, scope, "CreateThing", key, f"fp:{label}")
        if claim.replay is not None:
            return claim.replay
        effect = await INSERT_EFFECT.one(conn, {"p_label": label})
        await asyncio.sleep(delay)
        if fail:
            raise FailedPrecondition("the effect failed")
        response = f"thing {effect.id} {label}".encode()
        await idem.complete(conn, claim, response)
        return response


async def effect_count(database: Database) -> int:
    async with database.reading() as conn:
        return int((await COUNT_EFFECTS.one(conn)).n)


async def test_same_key_and_request_replays_the_first_response(database: Database) -> None:
    first = await create_thing(database, "key-1", "a")
    second = await create_thing(database, "key-1", "a")
    assert second == first
    assert await effect_count(database) == 1


async def test_same_key_with_a_different_request_is_rejected(database: Database) -> None:
    await create_thing(database, "key-1", "a")
    with pytest.raises(AlreadyExists) as info:
        await create_thing(database, "key-1", "b")
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await effect_count(database) == 1


async def test_keys_are_scoped_per_merchant_and_operation(database: Database) -> None:
    await create_thing(database, "key-1", "a", scope="mer_1")
    await create_thing(database, "key-1", "a", scope="mer_2")
    assert await effect_count(database) == 2
    async with database.transaction() as conn:
        claim = await idem.claim(conn, "mer_1", "OtherOperation", "key-1", "fp:a")
        assert claim.replay is None


async def test_no_key_means_no_idempotency(database: Database) -> None:
    await create_thing(database, None, "a")
    await create_thing(database, None, "a")
    assert await effect_count(database) == 2


async def test_a_failed_effect_releases_the_key(database: Database) -> None:
    with pytest.raises(FailedPrecondition):
        await create_thing(database, "key-1", "a", fail=True)
    assert await effect_count(database) == 0
    await create_thing(database, "key-1", "a")
    assert await effect_count(database) == 1


async def test_twenty_concurrent_duplicates_make_one_effect(database: Database) -> None:
    responses = await asyncio.gather(
        *(create_thing(database, "dup-key", "a", delay=0.05) for _ in range(20))
    )
    assert await effect_count(database) == 1
    assert len(set(responses)) == 1


async def test_concurrent_duplicate_after_a_rollback_does_the_effect_itself(
    database: Database,
) -> None:
    claimed = asyncio.Event()

    async def first_fails_after_claiming() -> None:
        async with database.transaction() as conn:
            claim = await idem.claim(conn, "mer_1", "CreateThing", "k", "fp:a")
            assert claim.replay is None
            await INSERT_EFFECT.one(conn, {"p_label": "doomed"})
            claimed.set()
            await asyncio.sleep(0.2)
            raise FailedPrecondition("the effect failed")

    async def duplicate() -> bytes:
        await claimed.wait()
        return await create_thing(database, "k", "a")

    results = await asyncio.gather(
        first_fails_after_claiming(), duplicate(), return_exceptions=True
    )
    assert isinstance(results[0], FailedPrecondition)
    assert isinstance(results[1], bytes)
    assert await effect_count(database) == 1


async def test_concurrent_requests_with_different_bodies_get_one_effect(
    database: Database,
) -> None:
    results = await asyncio.gather(
        *(create_thing(database, "k", f"body-{i}", delay=0.02) for i in range(5)),
        return_exceptions=True,
    )
    successes = [r for r in results if isinstance(r, bytes)]
    rejected = [r for r in results if isinstance(r, AlreadyExists)]
    assert len(successes) == 1 and len(rejected) == 4
    assert await effect_count(database) == 1


async def test_purge_keeps_keys_for_at_least_a_day(database: Database) -> None:
    from datetime import timedelta

    await create_thing(database, "key-1", "a")
    async with database.transaction() as conn:
        assert await idem.purge(conn) == 0
        with pytest.raises(ValueError):
            await idem.purge(conn, timedelta(hours=1))


async def test_complete_refuses_a_replayed_claim(database: Database) -> None:
    async with database.transaction() as conn:
        with pytest.raises(ValueError):
            await idem.complete(conn, Claim("s", "op", "k", "fp", replay=b"x"), b"y")


async def create_with_response_up_front(
    database: Database, key: str | None, label: str, *, delay: float = 0.0, fail: bool = False
) -> bytes:
    """A use case that knows its response before the effect: claim and response in one."""
    async with database.transaction() as conn:
        response = f"pending {label}".encode()
        claim = await idem.claim(
            conn, "mer_1", "CreateThing", key, f"fp:{label}", response=response
        )
        if claim.replay is not None:
            return claim.replay
        await INSERT_EFFECT.one(conn, {"p_label": label})
        await asyncio.sleep(delay)
        if fail:
            raise FailedPrecondition("the effect failed")
        return response


async def test_a_claim_can_hold_its_response_from_the_start(database: Database) -> None:
    first = await create_with_response_up_front(database, "key-1", "a")
    assert await create_with_response_up_front(database, "key-1", "a") == first == b"pending a"
    # The old two-step use case replays it too: it is the same stored response.
    assert await create_thing(database, "key-1", "a") == first
    with pytest.raises(AlreadyExists):
        await create_with_response_up_front(database, "key-1", "b")
    assert await effect_count(database) == 1


async def test_a_failed_effect_takes_the_claim_and_its_response_with_it(
    database: Database,
) -> None:
    with pytest.raises(FailedPrecondition):
        await create_with_response_up_front(database, "key-1", "a", fail=True)
    async with database.reading() as conn:
        assert (await COUNT_KEYS.one(conn)).n == 0
    # The key is free: a different request may take it now.
    assert await create_with_response_up_front(database, "key-1", "b") == b"pending b"
    assert await effect_count(database) == 1


async def test_concurrent_duplicates_of_a_claim_with_its_response_make_one_effect(
    database: Database,
) -> None:
    responses = await asyncio.gather(
        *(create_with_response_up_front(database, "dup", "a", delay=0.02) for _ in range(20))
    )
    assert set(responses) == {b"pending a"}
    assert await effect_count(database) == 1


async def test_reject_reuse_refuses_only_a_key_held_by_another_request(
    database: Database,
) -> None:
    await create_thing(database, "used", "a")
    async with database.reading() as conn:
        await idem.reject_reuse(conn, "mer_1", "CreateThing", "unused", "fp:a")
        await idem.reject_reuse(conn, "mer_1", "CreateThing", "used", "fp:a")
        await idem.reject_reuse(conn, "mer_1", "CreateThing", None, "fp:b")
        await idem.reject_reuse(conn, "mer_2", "CreateThing", "used", "fp:b")
        with pytest.raises(AlreadyExists) as info:
            await idem.reject_reuse(conn, "mer_1", "CreateThing", "used", "fp:b")
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
    # It claimed nothing.
    async with database.reading() as conn:
        assert (await COUNT_KEYS.one(conn)).n == 1


async def test_claims_commit_and_roll_back_with_the_callers_connection(
    database: Database,
) -> None:
    async with database.discarded() as conn:
        await idem.claim(conn, "mer_1", "CreateThing", "rolled-back", "fp:a")
    async with database.transaction() as conn:
        claim = await idem.claim(conn, "mer_1", "CreateThing", "kept", "fp:a")
        await idem.complete(conn, claim, b"done")
    async with database.reading() as conn:
        stored = await STORED.all(conn)
        with pytest.raises(AlreadyExists):
            await idem.reject_reuse(conn, "mer_1", "CreateThing", "kept", "fp:b")
    assert [tuple(row) for row in stored] == [("kept", b"done")]


async def test_a_response_is_replaced_only_if_it_is_still_the_one_read(database: Database) -> None:
    async with database.transaction() as conn:
        await idem.claim(conn, "mer_1", "Pay", "key-r", "fp", response=b"pending")
    batch = Batch()
    replaced = idem.queue_replace(batch, "mer_1", "Pay", "key-r", b"pending", b"final")
    stale = idem.queue_replace(batch, "mer_1", "Pay", "key-r", b"pending", b"other")
    async with database.transaction(batch):
        pass
    assert replaced.value is True
    assert stale.value is False  # the first replacement changed what it expected
    async with database.transaction() as conn:
        assert await idem.locked_response(conn, "mer_1", "Pay", "key-r") == b"final"
        assert await idem.locked_response(conn, "mer_1", "Pay", "key-none") is None


async def test_a_locked_response_holds_the_key_until_the_transaction_ends(
    database: Database,
) -> None:
    async with database.transaction() as conn:
        await idem.claim(conn, "mer_1", "Pay", "key-l", "fp", response=b"pending")
    order: list[str] = []

    async def finish_later() -> None:
        async with database.transaction() as conn:
            await idem.locked_response(conn, "mer_1", "Pay", "key-l")
            await asyncio.sleep(0.2)
            order.append("locked")

    async def replace() -> None:
        await asyncio.sleep(0.05)
        batch = Batch()
        idem.queue_replace(batch, "mer_1", "Pay", "key-l", b"pending", b"final")
        async with database.transaction(batch):
            order.append("replaced")

    await asyncio.gather(finish_later(), replace())
    assert order == ["locked", "replaced"]
