"""The embedded default: the auth service on a SQLite file with the in-process cache."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from pi.auth.main import MIGRATIONS, build
from pi.platform.cache import MemoryCache
from pi.platform.config import Settings
from pi.platform.db import migrations
from pi.platform.kernel.errors import NotFound, Unauthenticated
from pi.platform.kernel.principal import Principal


async def test_whole_auth_flow_on_sqlite(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(
        "auth", database_url=f"sqlite:///{tmp_path / 'auth.db'}", db_schema="auth"
    )
    await asyncio.to_thread(migrations.upgrade, settings, None, MIGRATIONS)
    app = await build(settings, cache=MemoryCache())
    try:
        auth = app.auth
        created = await auth.create_merchant(
            Principal.admin(), "Acme", idempotency_key="r1", fingerprint="f"
        )
        replay = await auth.create_merchant(
            Principal.admin(), "Acme", idempotency_key="r1", fingerprint="f"
        )
        assert replay == created
        issued = await auth.issue_token(created.api_key.id, created.secret)
        principal = await app.verifier.verify(issued.access_token)
        assert principal.merchant_id == created.merchant.id

        extra = await auth.create_api_key(principal, "CI")
        keys, next_token = await auth.list_api_keys(principal, page_size_value=1)
        assert [k.id for k in keys] == [extra.api_key.id] and next_token
        keys, next_token = await auth.list_api_keys(
            principal, page_size_value=1, page_token=next_token
        )
        assert [k.id for k in keys] == [created.api_key.id] and not next_token

        for _ in range(10):
            with pytest.raises(Unauthenticated):
                await auth.issue_token(extra.api_key.id, "sk_wrong")
        with pytest.raises(Unauthenticated):
            await auth.issue_token(extra.api_key.id, extra.secret)

        await auth.revoke_api_key(principal, created.api_key.id)
        with pytest.raises(Unauthenticated) as caught:
            await app.verifier.verify(issued.access_token)
        assert caught.value.reason == "TOKEN_REVOKED"
        with pytest.raises(NotFound):
            await auth.revoke_token(principal, "tok_01JAAAAAAAAAAAAAAAAAAAAAAA")

        old_kid = app.keys.signing_kid
        new_kid = await app.signing_keys.rotate()
        await app.keys.refresh()
        assert [k["kid"] for k in app.keys.jwks()] == [new_kid, old_kid]
        assert await auth.purge_expired() >= 0
    finally:
        await app.close()
