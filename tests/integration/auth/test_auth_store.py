"""Auth storage and use cases on real PostgreSQL: migrations, constraints, concurrency."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from pi.auth import domain
from pi.auth.domain import ApiKey, LoginFailures, Merchant, SigningKeyStatus, TokenGrant
from pi.auth.main import MIGRATIONS, AuthApp
from pi.auth.signing_keys import generate_signing_key
from pi.auth.store import (
    AuthStore,
    api_keys,
    login_failures,
    metadata,
    revoked_tokens,
    signing_keys,
)
from pi.platform.config import Settings
from pi.platform.db import migrations
from pi.platform.db.engine import sqlalchemy_url
from pi.platform.db.errors import IntegrityError
from pi.platform.kernel.errors import Unauthenticated
from pi.platform.kernel.principal import Principal

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

if TYPE_CHECKING:  # the fixtures' types, defined in this directory's conftest
    from conftest import Clock


def test_migrations_build_exactly_the_declared_tables(migrated: Settings) -> None:
    engine = create_engine(
        sqlalchemy_url(migrated.database_url),
        poolclass=NullPool,
        connect_args={"options": f"-c search_path={migrated.db_schema}"},
    )
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_migrations_downgrade_and_upgrade_again(migrated: Settings) -> None:
    migrations.downgrade(migrated, migrated.db_schema, MIGRATIONS, "base")
    assert migrations.current(migrated, migrated.db_schema, MIGRATIONS) is None
    migrations.upgrade(migrated, migrated.db_schema, MIGRATIONS)
    assert migrations.current(migrated, migrated.db_schema, MIGRATIONS) == "0001"


async def _merchant_with_key(store: AuthStore, now: datetime = T0) -> ApiKey:
    merchant = Merchant(domain.new_merchant_id(), "Acme", now)
    key = ApiKey(domain.new_api_key_id(), merchant.id, "k", now)
    async with store.transaction() as tx:
        await tx.insert_merchant(merchant)
        await tx.insert_api_key(key, b"\x00" * 32, 1)
    return key


async def test_timestamps_come_back_as_aware_utc(auth_app: AuthApp) -> None:
    key = await _merchant_with_key(auth_app.store)
    async with auth_app.store.transaction() as tx:
        found = await tx.get_api_key(key.merchant_id, key.id)
    assert found is not None
    assert found.create_time == T0
    assert found.create_time.tzinfo is not None


async def test_api_key_needs_an_existing_merchant(auth_app: AuthApp) -> None:
    key = ApiKey(domain.new_api_key_id(), "mer_01JNOBODYNOBODYNOBODYNOBOD", "k", T0)
    with pytest.raises(IntegrityError):
        async with auth_app.store.transaction() as tx:
            await tx.insert_api_key(key, b"\x00" * 32, 1)


async def test_only_one_signing_key_can_be_current(auth_app: AuthApp) -> None:
    with pytest.raises(IntegrityError):
        async with auth_app.store.transaction() as tx:
            await tx.insert_signing_key(
                generate_signing_key(auth_app.master_keys),
                status=SigningKeyStatus.CURRENT,
                now=T0,
            )


async def test_racing_first_starts_create_one_signing_key(
    migrated: Settings, make_database: Any, auth_engine: AsyncEngine
) -> None:
    from pi.auth.service import SigningKeyService
    from pi.platform.security.crypto import MasterKeys

    engine = auth_engine
    service = SigningKeyService(
        AuthStore(await make_database(migrated.db_schema)),
        MasterKeys(migrated.master_keys),
        max_token_ttl=timedelta(minutes=15),
        signer_lag=timedelta(minutes=1),
    )
    kids = await asyncio.gather(*(service.ensure_current() for _ in range(6)))
    assert len(set(kids)) == 1
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(signing_keys))).scalar() == 1


async def test_rotation_retires_old_keys_and_erases_their_private_half(
    auth_app: AuthApp, clock: Clock, auth_engine: AsyncEngine
) -> None:
    first = auth_app.keys.signing_kid
    second = await auth_app.signing_keys.rotate()
    third = await auth_app.signing_keys.rotate()
    async with auth_app.store.transaction() as tx:
        statuses = {k.kid: k.status for k in await tx.list_signing_keys(["current", "previous"])}
    assert statuses == {third: "current", second: "previous", first: "previous"}
    clock.advance(timedelta(minutes=20))
    assert sorted(await auth_app.signing_keys.retire_expired()) == sorted([first, second])
    async with auth_engine.connect() as conn:
        rows = {
            r.kid: r
            for r in await conn.execute(
                select(
                    signing_keys.c.kid,
                    signing_keys.c.status,
                    signing_keys.c.private_key_ciphertext,
                    signing_keys.c.master_key_version,
                )
            )
        }
    assert rows[first].status == rows[second].status == "retired"
    assert rows[first].private_key_ciphertext is None
    assert rows[third].private_key_ciphertext is not None
    assert rows[third].master_key_version == 1


async def test_concurrent_failures_are_all_counted(auth_app: AuthApp) -> None:
    """Nine failures racing each other leave nine records: none is lost (row lock)."""
    key_id = domain.new_api_key_id()
    results = await asyncio.gather(
        *(auth_app.auth.issue_token(key_id, "sk_wrong") for _ in range(9)),
        return_exceptions=True,
    )
    assert all(isinstance(r, Unauthenticated) for r in results)
    async with auth_app.store.transaction() as tx:
        state = await tx.get_login_failures(key_id)
    assert len(state.recent) == 9
    assert state.locked_until is None


async def test_a_burst_of_failures_locks_the_key_id(auth_app: AuthApp) -> None:
    key_id = domain.new_api_key_id()
    await asyncio.gather(
        *(auth_app.auth.issue_token(key_id, "sk_wrong") for _ in range(25)),
        return_exceptions=True,
    )
    async with auth_app.store.transaction() as tx:
        state = await tx.get_login_failures(key_id)
    assert state.locked_until is not None
    assert state.recent == ()


async def test_revoking_a_key_revokes_only_its_live_unrevoked_tokens(auth_app: AuthApp) -> None:
    key = await _merchant_with_key(auth_app.store)
    other = ApiKey(domain.new_api_key_id(), key.merchant_id, "other", T0)
    now = datetime.now(UTC)

    def grant(api_key_id: str, expires_in: timedelta) -> TokenGrant:
        return TokenGrant(
            domain.new_token_id(),
            key.merchant_id,
            api_key_id,
            now - timedelta(minutes=1),
            now + expires_in,
        )

    live, live_revoked, expired = (
        grant(key.id, timedelta(minutes=5)),
        grant(key.id, timedelta(minutes=5)),
        grant(key.id, -timedelta(seconds=1)),
    )
    others = grant(other.id, timedelta(minutes=5))
    async with auth_app.store.transaction() as tx:
        await tx.insert_api_key(other, b"\x01" * 32, 1)
        for g in (live, live_revoked, expired, others):
            await tx.insert_issued_token(g)
        await tx.revoke_token(live_revoked, now - timedelta(seconds=30))
        await tx.mark_api_key_revoked(key.id, now)
        fresh = await tx.revoke_live_tokens_of_key(key.id, now)
    assert [r.token_id for r in fresh] == [live.token_id]
    async with auth_app.store.transaction() as tx:
        listed = await tx.list_revoked_tokens(revoked_after=None, now=now)
    assert [r.token_id for r in listed] == [live_revoked.token_id, live.token_id]


async def test_purge_forgets_expired_tokens_and_stale_failures(
    auth_app: AuthApp, clock: Clock, auth_engine: AsyncEngine
) -> None:
    key = await _merchant_with_key(auth_app.store)
    now = clock()
    expired = TokenGrant(
        domain.new_token_id(),
        key.merchant_id,
        key.id,
        now - timedelta(minutes=20),
        now - timedelta(minutes=5),
    )
    async with auth_app.store.transaction() as tx:
        await tx.insert_issued_token(expired)
        await tx.revoke_token(expired, now - timedelta(minutes=10))
        await tx.get_login_failures("key_stale", for_update=True)
        await tx.save_login_failures("key_stale", LoginFailures((now,), None), now)
        await tx.get_login_failures("key_locked", for_update=True)
        await tx.save_login_failures("key_locked", LoginFailures((), now + timedelta(hours=1)), now)
    clock.advance(timedelta(minutes=31))
    assert await auth_app.auth.purge_expired() == 3
    async with auth_engine.connect() as conn:
        left = list((await conn.execute(select(login_failures.c.api_key_id))).scalars())
        revoked_left = (
            await conn.execute(select(func.count()).select_from(revoked_tokens))
        ).scalar()
    assert left == ["key_locked"]
    assert revoked_left == 0


async def test_list_api_keys_is_newest_first_with_a_cursor(auth_app: AuthApp) -> None:
    first = await _merchant_with_key(auth_app.store)
    ids = [first.id]
    async with auth_app.store.transaction() as tx:
        for i in range(4):
            created = T0 + timedelta(microseconds=i + 1)
            key = ApiKey(domain.new_api_key_id(), first.merchant_id, f"k{i}", created)
            await tx.insert_api_key(key, b"\x02" * 32, 1)
            ids.append(key.id)
    async with auth_app.store.transaction() as tx:
        page1 = await tx.list_api_keys(first.merchant_id, after=None, limit=3)
        last = page1[-1]
        page2 = await tx.list_api_keys(
            first.merchant_id, after=(last.create_time, last.id), limit=3
        )
    assert [k.id for k in page1 + page2] == list(reversed(ids))


async def test_secret_hash_uses_the_pinned_master_key_version(
    auth_app: AuthApp, auth_engine: AsyncEngine
) -> None:
    """Adding a master key must not invalidate secrets hashed under the older one."""
    from pi.auth.main import build
    from pi.platform.security.crypto import MasterKeys

    admin = Principal.admin()
    created = await auth_app.auth.create_merchant(admin, "Acme")
    settings = auth_app.settings
    rotated = dataclasses.replace(settings, master_keys={**settings.master_keys, 2: b"\x07" * 32})
    assert MasterKeys(rotated.master_keys).current_version == 2
    app2 = await build(rotated, cache=auth_app.cache)
    issued = await app2.auth.issue_token(created.api_key.id, created.secret)
    assert issued.grant.merchant_id == created.merchant.id
    newer = await app2.auth.create_api_key(
        Principal.merchant(created.merchant.id), "after rotation"
    )
    async with auth_engine.connect() as conn:
        versions = dict(
            (await conn.execute(select(api_keys.c.id, api_keys.c.secret_hash_version))).all()
        )
    # The successful IssueToken moved the old hash to the new master key.
    assert versions == {created.api_key.id: 2, newer.api_key.id: 2}
    # Once the signing keys sealed under master key 1 are retired, key 1 can go.
    await app2.signing_keys.rotate()
    only_new = dataclasses.replace(rotated, master_keys={2: b"\x07" * 32})
    app3 = await build(
        only_new,
        cache=auth_app.cache,
        clock=lambda: datetime.now(UTC) + timedelta(hours=1),
    )
    await app3.auth.issue_token(created.api_key.id, created.secret)
    for app in (app2, app3):  # their caches are auth_app's: closed with it
        await app.database.close()
