"""Auth on real PostgreSQL: migrations, the invariants the database enforces, concurrency.

What both units of work promise is in `test_auth_units_contract`; this is what only the
database can show: the schema, its constraints, row locks and racing processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from pi.auth.adapters.postgres.tables import (
    api_keys,
    login_failures,
    metadata,
    revoked_tokens,
    signing_keys,
)
from pi.auth.adapters.postgres.uow import PostgresUnits
from pi.auth.adapters.signing_keys import generate_signing_key
from pi.auth.bootstrap import MIGRATIONS, AuthApp, build, signing_key_lifecycle
from pi.auth.domain import merchants, tokens
from pi.auth.domain.merchants import ApiKey, Merchant, SecretHash
from pi.auth.domain.signing_keys import SigningKeyStatus
from pi.auth.domain.throttle import LoginFailures
from pi.auth.domain.tokens import TokenGrant
from pi.auth.settings import AuthSettings
from pi.platform.db import migrations
from pi.platform.db.database import Database
from pi.platform.db.engine import sync_engine
from pi.platform.kernel import scopes
from pi.platform.kernel.errors import Unauthenticated
from pi.platform.kernel.principal import Principal
from pi.platform.kernel.units import Mode
from pi.platform.security.crypto import MasterKeys

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

if TYPE_CHECKING:  # the fixtures' types, defined in this directory's conftest
    from conftest import Clock


def test_migrations_build_exactly_the_declared_tables(migrated: AuthSettings) -> None:
    engine = sync_engine(migrated.database_url, migrated.db_schema)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_migrations_downgrade_and_upgrade_again(migrated: AuthSettings) -> None:
    migrations.downgrade(migrated, migrated.db_schema, MIGRATIONS, "base")
    assert migrations.current(migrated, migrated.db_schema, MIGRATIONS) is None
    migrations.upgrade(migrated, migrated.db_schema, MIGRATIONS)
    assert migrations.current(migrated, migrated.db_schema, MIGRATIONS) == "0002"


async def test_keys_made_before_scopes_hold_every_scope_after_the_migration(
    migrated: AuthSettings, auth_engine: AsyncEngine
) -> None:
    """Finding 2: existing keys (the demo merchant's, every integration's) keep working."""
    migrations.downgrade(migrated, migrated.db_schema, MIGRATIONS, "0001")
    async with auth_engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO merchants VALUES ('mer_old', 'Old', now());"
                "INSERT INTO api_keys (id, merchant_id, display_name, secret_hash,"
                " secret_hash_version, create_time) VALUES"
                " ('key_old', 'mer_old', 'k', '\\x00', 1, now())"
            )
        )
    migrations.upgrade(migrated, migrated.db_schema, MIGRATIONS)
    async with auth_engine.connect() as conn:
        held = (await conn.execute(text("SELECT scopes FROM api_keys"))).scalar_one()
    assert frozenset(held) == scopes.FULL


async def _merchant_with_key(app: AuthApp, now: datetime = T0) -> ApiKey:
    merchant = Merchant(merchants.new_merchant_id(), "Acme", now)
    key = ApiKey(merchants.new_api_key_id(), merchant.id, "k", now)
    async with app.units(Mode.LOCKED) as unit:
        unit.merchants.add(merchant)
        unit.api_keys.add(key, SecretHash(b"\x00" * 32, 1))
        await unit.commit()
    return key


async def test_the_database_refuses_an_api_key_of_an_unknown_merchant(
    auth_engine: AsyncEngine,
) -> None:
    with pytest.raises(IntegrityError):
        async with auth_engine.begin() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=merchants.new_api_key_id(),
                    merchant_id="mer_01JNOBODYNOBODYNOBODYNOBOD",
                    display_name="k",
                    secret_hash=b"\x00" * 32,
                    secret_hash_version=1,
                    create_time=T0,
                )
            )


async def test_the_database_refuses_a_second_current_signing_key(
    auth_app: AuthApp, auth_engine: AsyncEngine
) -> None:
    new = generate_signing_key(auth_app.master_keys)
    with pytest.raises(IntegrityError):
        async with auth_engine.begin() as conn:
            await conn.execute(
                insert(signing_keys).values(
                    kid=new.kid,
                    status=SigningKeyStatus.CURRENT,
                    public_jwk=new.public_jwk,
                    public_key_pem=new.public_key_pem,
                    private_key_ciphertext=new.private_key_ciphertext,
                    master_key_version=new.master_key_version,
                    create_time=T0,
                )
            )


async def test_racing_first_starts_create_one_signing_key(
    migrated: AuthSettings,
    make_database: Callable[..., Awaitable[Database]],
    auth_engine: AsyncEngine,
) -> None:
    lifecycle = signing_key_lifecycle(
        PostgresUnits(await make_database(migrated.db_schema)),
        MasterKeys(migrated.master_keys),
        lambda: datetime.now(UTC),
    )
    kids = await asyncio.gather(*(lifecycle.ensure_current() for _ in range(6)))
    assert len(set(kids)) == 1
    async with auth_engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(signing_keys))).scalar() == 1


async def test_rotation_retires_old_keys_and_erases_their_private_half(
    auth_app: AuthApp, auth_engine: AsyncEngine, clock: Clock
) -> None:
    first = auth_app.keys.signing_kid
    second = await auth_app.signing_keys.rotate()
    third = await auth_app.signing_keys.rotate()
    statuses = {k.kid: k.status for k in await auth_app.signing_keys.published()}
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


async def _failures(app: AuthApp, key_id: str) -> LoginFailures:
    async with app.units(Mode.READ) as unit:
        return await unit.failed_logins.get(key_id)


async def test_concurrent_failures_are_all_counted(auth_app: AuthApp) -> None:
    """Five failures racing each other leave five records: none is lost (row lock)."""
    created = await auth_app.use_cases.create_merchant(Principal.admin(), "Acme")
    key_id = created.api_key.id
    results = await asyncio.gather(
        *(
            auth_app.use_cases.issue_token(key_id, "sk_wrong", client=f"192.0.2.{n}")
            for n in range(5)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, Unauthenticated) for r in results)
    state = await _failures(auth_app, key_id)
    assert len(state.recent) == 5
    assert state.locked_until is None


async def test_a_burst_of_failures_delays_the_key_and_unknown_ids_write_nothing(
    auth_app: AuthApp,
) -> None:
    created = await auth_app.use_cases.create_merchant(Principal.admin(), "Acme")
    key_id = created.api_key.id
    unknown = merchants.new_api_key_id()
    await asyncio.gather(
        *(
            auth_app.use_cases.issue_token(k, "sk_wrong", client=f"192.0.2.{n}")
            for n in range(25)
            for k in (key_id, unknown)
        ),
        return_exceptions=True,
    )
    state = await _failures(auth_app, key_id)
    assert state.locked_until is not None
    assert len(state.recent) == 6  # counted until the delay began; not while delayed
    assert await _failures(auth_app, unknown) == LoginFailures()


async def test_a_key_revoked_while_tokens_are_issued_leaves_no_live_token(
    auth_app: AuthApp,
) -> None:
    """Every token issued with the key either was refused or is revoked with it: the
    issue waits for the revocation's row lock (or makes it wait) and rechecks the key."""
    uc = auth_app.use_cases
    warm_up = await uc.create_merchant(Principal.admin(), "Warm-up")
    await uc.issue_token(warm_up.api_key.id, warm_up.secret)  # connections opened first
    created = await uc.create_merchant(Principal.admin(), "Acme")
    merchant = Principal.merchant(created.merchant.id)
    key = created.api_key.id

    first_issued, revoking, revoked_key = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def issue(after: asyncio.Event | None, delay: float) -> str | None:
        if after is not None:
            await after.wait()
        await asyncio.sleep(delay)
        try:
            token_id = (await uc.issue_token(key, created.secret)).grant.token_id
        except Unauthenticated:
            return None
        first_issued.set()
        return token_id

    async def revoke() -> None:
        # Once a token is out (not after a fixed delay: a busy machine may take longer),
        # while more are being issued.
        await first_issued.wait()
        revoking.set()
        await uc.revoke_api_key(merchant, key)
        revoked_key.set()

    results = await asyncio.gather(
        *(issue(None, i * 0.005) for i in range(8)),
        *(issue(revoking, i * 0.002) for i in range(10)),  # racing the revocation
        issue(revoked_key, 0),  # after it: refused for sure
        revoke(),
    )
    issued = {jti for jti in results[:-1] if jti is not None}
    assert issued and results[-2] is None
    revoked = {r.token_id for r in await uc.list_revoked_tokens.since(None)}
    assert issued <= revoked


async def test_purge_forgets_expired_tokens_and_stale_failures(
    auth_app: AuthApp, auth_engine: AsyncEngine, clock: Clock
) -> None:
    key = await _merchant_with_key(auth_app)
    now = clock()
    expired = TokenGrant(
        tokens.new_token_id(),
        key.merchant_id,
        key.id,
        now - timedelta(minutes=20),
        now - timedelta(minutes=5),
    )
    async with auth_app.units(Mode.LOCKED) as unit:
        unit.tokens.add_issued(expired)
        unit.tokens.revoke([expired], now - timedelta(minutes=10))
        await unit.failed_logins.lock("key_stale")
        unit.failed_logins.save("key_stale", LoginFailures((now,), None), now)
        await unit.failed_logins.lock("key_locked")
        unit.failed_logins.save("key_locked", LoginFailures((), now + timedelta(hours=1)), now)
        await unit.commit()
    clock.advance(timedelta(minutes=31))
    assert await auth_app.use_cases.purge_expired() == 3
    async with auth_engine.connect() as conn:
        left = list((await conn.execute(select(login_failures.c.api_key_id))).scalars())
        revoked_left = (
            await conn.execute(select(func.count()).select_from(revoked_tokens))
        ).scalar()
    assert left == ["key_locked"]
    assert revoked_left == 0


async def test_secret_hash_uses_the_pinned_master_key_version(
    auth_app: AuthApp, auth_engine: AsyncEngine
) -> None:
    """Adding a master key must not invalidate secrets hashed under the older one."""
    admin = Principal.admin()
    created = await auth_app.use_cases.create_merchant(admin, "Acme")
    settings = auth_app.settings
    rotated = dataclasses.replace(settings, master_keys={**settings.master_keys, 2: b"\x07" * 32})
    assert MasterKeys(rotated.master_keys).current_version == 2
    app2 = await build(rotated, database=auth_app.database, cache=auth_app.cache)
    issued = await app2.use_cases.issue_token(created.api_key.id, created.secret)
    assert issued.grant.merchant_id == created.merchant.id
    newer = await app2.use_cases.create_api_key(
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
        database=auth_app.database,
        cache=auth_app.cache,
        clock=lambda: datetime.now(UTC) + timedelta(hours=1),
    )
    await app3.use_cases.issue_token(created.api_key.id, created.secret)
