"""Signing-key lifecycle and JWKS, ListRevokedTokens, the store poller, housekeeping."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import jwt
import pytest

from pi.auth.bootstrap import KEY_ACTIVATION
from pi.auth.entrypoints.workers import Housekeeping, StoreRevocationPoller
from pi.platform.kernel.errors import PermissionDenied, Unauthenticated
from pi.platform.kernel.principal import Principal
from pi.platform.kernel.units import Mode
from pi.platform.security.tokens import RevocationList

if TYPE_CHECKING:  # the fixtures' types, defined in this directory's conftest
    from conftest import Auth, MakeAuth


async def test_the_first_start_makes_one_current_key_and_later_starts_reuse_it(
    make_auth: MakeAuth, auth: Auth
) -> None:
    kid = auth.keys.signing_kid
    again = await make_auth(auth.units, auth.master_keys)
    assert again.keys.signing_kid == kid
    assert await auth.use_cases.signing_keys.ensure_current() == kid
    assert [k["kid"] for k in auth.use_cases.get_jwks()] == [kid]
    assert len(auth.state.signing_keys) == 1


async def test_a_rotated_key_is_published_first_signs_later_and_retires_last(
    auth: Auth,
) -> None:
    created, _ = await auth.merchant()
    lifecycle, keys = auth.use_cases.signing_keys, auth.keys
    old = keys.signing_kid
    new = await lifecycle.rotate()
    await keys.refresh()
    assert [k["kid"] for k in auth.use_cases.get_jwks()] == [new, old]
    interim = await auth.use_cases.issue_token(created.api_key.id, created.secret)
    assert jwt.get_unverified_header(interim.access_token)["kid"] == old

    auth.clock.advance(KEY_ACTIVATION + timedelta(seconds=1))
    await keys.refresh()
    fresh = await auth.use_cases.issue_token(created.api_key.id, created.secret)
    assert jwt.get_unverified_header(fresh.access_token)["kid"] == new

    assert await lifecycle.retire_expired() == []
    auth.clock.advance(timedelta(minutes=17))
    assert [k["kid"] for k in auth.use_cases.get_jwks()] == [new]
    assert await lifecycle.retire_expired() == [old]
    retired = auth.state.signing_keys[old]
    assert retired.key.status == "retired" and retired.key.private_key_ciphertext is None
    assert [k.kid for k in await lifecycle.published()] == [new]


async def test_revocations_are_listed_for_services_only_oldest_first(auth: Auth) -> None:
    created, merchant = await auth.merchant()
    grants = [
        (await auth.use_cases.issue_token(created.api_key.id, created.secret)).grant
        for _ in range(3)
    ]
    first = await auth.use_cases.revoke_token(merchant, grants[0].token_id)
    auth.clock.advance(timedelta(seconds=1))
    second = await auth.use_cases.revoke_token(merchant, grants[1].token_id)
    listing = auth.use_cases.list_revoked_tokens
    assert await listing(Principal.service(), None) == [first, second]
    assert await listing(Principal.service(), first.revoke_time) == [second]
    for principal in (Principal.admin(), merchant):
        with pytest.raises(PermissionDenied):
            await listing(principal, None)
    auth.clock.advance(timedelta(minutes=15))  # both tokens expired: nothing to refuse
    assert await listing(Principal.service(), None) == []


async def test_a_replica_learns_revocations_from_the_store(auth: Auth) -> None:
    created, merchant = await auth.merchant()
    grant = (await auth.use_cases.issue_token(created.api_key.id, created.secret)).grant
    replica = RevocationList(clock=lambda: auth.clock().timestamp())
    poller = StoreRevocationPoller(auth.use_cases.list_revoked_tokens.since, replica, interval=1)
    assert await poller.poll_once() == 0
    await auth.use_cases.revoke_token(merchant, grant.token_id)
    assert await poller.poll_once() == 1
    assert grant.token_id in replica


async def test_housekeeping_forgets_what_expired_and_retires_keys(auth: Auth) -> None:
    created, merchant = await auth.merchant()
    grant = (await auth.use_cases.issue_token(created.api_key.id, created.secret)).grant
    await auth.use_cases.revoke_token(merchant, grant.token_id)
    await auth.use_cases.create_api_key(merchant, "CI", idempotency_key="k-1", fingerprint="f")
    with pytest.raises(Unauthenticated):
        await auth.use_cases.issue_token(created.api_key.id, "sk_wrong")
    old = auth.keys.signing_kid
    await auth.use_cases.signing_keys.rotate()
    housekeeping = Housekeeping(auth.use_cases.purge_expired, auth.use_cases.signing_keys)

    await housekeeping()
    assert auth.state.issued_tokens and auth.state.revoked_tokens
    assert auth.state.failed_logins and auth.state.idempotency_keys

    auth.clock.advance(timedelta(minutes=31))
    await housekeeping()
    assert auth.state.issued_tokens == {} and auth.state.revoked_tokens == {}
    assert auth.state.failed_logins == {}
    assert auth.state.idempotency_keys  # kept a day
    assert auth.state.signing_keys[old].key.status == "retired"
    auth.clock.advance(timedelta(hours=24))
    assert await auth.use_cases.purge_expired() == 1
    assert auth.state.idempotency_keys == {}


async def test_idempotency_keys_are_kept_at_least_a_day(auth: Auth) -> None:
    with pytest.raises(ValueError):
        await auth.use_cases.purge_expired(timedelta(hours=23))
    async with auth.units(Mode.READ) as unit:
        assert await unit.tokens.revoked_since(None, auth.clock()) == []
