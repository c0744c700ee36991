"""The auth unit of work's contract: the same assertions on the in-memory and the
PostgreSQL adapter (`units` runs each test on both).

What the use cases rely on: lookups scoped to their merchant, order and pagination, one
revocation per token, at most one current signing key, idempotency keys claimed once,
conditional writes that make the unit conflict, nothing kept without a commit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pi.auth.adapters.memory import MemoryUnits
from pi.auth.app.ports import IdempotentRequest, PriorRequest, UnitsOfWork
from pi.auth.domain import merchants, tokens
from pi.auth.domain.merchants import ApiKey, Merchant, SecretHash
from pi.auth.domain.signing_keys import NewSigningKey
from pi.auth.domain.throttle import LoginFailures
from pi.auth.domain.tokens import RevokedToken, TokenGrant
from pi.platform.db.errors import IntegrityError
from pi.platform.kernel.units import Conflict, Mode

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
HASH = SecretHash(b"\x00" * 32, 1)


async def _merchant_with_key(units: UnitsOfWork, now: datetime = T0) -> ApiKey:
    merchant = Merchant(merchants.new_merchant_id(), "Acme", now)
    key = ApiKey(merchants.new_api_key_id(), merchant.id, "k", now)
    async with units(Mode.LOCKED) as unit:
        unit.merchants.add(merchant)
        unit.api_keys.add(key, HASH)
        await unit.commit()
    return key


async def _add_key(units: UnitsOfWork, merchant_id: str, created: datetime) -> ApiKey:
    key = ApiKey(merchants.new_api_key_id(), merchant_id, "more", created)
    async with units(Mode.LOCKED) as unit:
        unit.api_keys.add(key, HASH)
        await unit.commit()
    return key


def _grant(key: ApiKey, now: datetime, expires_in: timedelta) -> TokenGrant:
    return TokenGrant(
        tokens.new_token_id(), key.merchant_id, key.id, now - timedelta(minutes=1), now + expires_in
    )


async def _issue(units: UnitsOfWork, *grants: TokenGrant) -> None:
    async with units(Mode.LOCKED) as unit:
        for grant in grants:
            unit.tokens.add_issued(grant)
        await unit.commit()


def _signing_key(n: int) -> NewSigningKey:
    return NewSigningKey(
        kid=f"kid-{n}-{merchants.new_api_key_id()}",
        public_jwk={"kty": "EC", "kid": f"kid-{n}"},
        public_key_pem="-----BEGIN PUBLIC KEY-----",
        private_key_ciphertext=b"sealed" + bytes([n]),
        master_key_version=1,
    )


# -- merchants and API keys --------------------------------------------------------------


async def test_a_key_reads_back_as_stored_for_its_merchant_only(units: UnitsOfWork) -> None:
    key = await _merchant_with_key(units)
    async with units(Mode.READ) as unit:
        found = await unit.api_keys.of_merchant(key.merchant_id, key.id)
        credentials = await unit.api_keys.credentials(key.id)
        someone_elses = await unit.api_keys.of_merchant(merchants.new_merchant_id(), key.id)
        nobody = await unit.api_keys.credentials(merchants.new_api_key_id())
    assert found == key
    assert found.create_time.tzinfo is not None
    assert credentials is not None
    assert (credentials.api_key, credentials.secret_hash) == (key, HASH)
    assert someone_elses is None and nobody is None


async def test_a_unit_left_without_commit_keeps_nothing(units: UnitsOfWork) -> None:
    merchant = Merchant(merchants.new_merchant_id(), "Acme", T0)
    key = ApiKey(merchants.new_api_key_id(), merchant.id, "k", T0)
    for mode in (Mode.OPTIMISTIC, Mode.LOCKED):
        async with units(mode) as unit:
            unit.merchants.add(merchant)
            unit.api_keys.add(key, HASH)
    async with units(Mode.READ) as unit:
        assert await unit.api_keys.credentials(key.id) is None


async def test_an_api_key_needs_its_merchant(units: UnitsOfWork) -> None:
    key = ApiKey(merchants.new_api_key_id(), "mer_01JNOBODYNOBODYNOBODYNOBOD", "k", T0)
    # No use case can get here (keys are made for the caller's merchant): each adapter
    # refuses it with its own error, the database with its foreign key.
    refused = ValueError if isinstance(units, MemoryUnits) else IntegrityError
    with pytest.raises(refused):
        async with units(Mode.LOCKED) as unit:
            unit.api_keys.add(key, HASH)
            await unit.commit()
    async with units(Mode.READ) as unit:
        assert await unit.api_keys.credentials(key.id) is None


async def test_a_read_unit_refuses_writes(units: UnitsOfWork) -> None:
    async with units(Mode.READ) as unit:
        with pytest.raises(RuntimeError):
            unit.merchants.add(Merchant(merchants.new_merchant_id(), "Acme", T0))
        with pytest.raises(RuntimeError):
            await unit.commit()


async def test_keys_page_newest_first_after_a_cursor(units: UnitsOfWork) -> None:
    first = await _merchant_with_key(units)
    ids = [first.id]
    for i in range(4):
        ids.append(
            (await _add_key(units, first.merchant_id, T0 + timedelta(microseconds=i + 1))).id
        )
    await _merchant_with_key(units)  # another merchant's key is never listed
    async with units(Mode.READ) as unit:
        page1 = await unit.api_keys.page(first.merchant_id, after=None, limit=3)
        last = page1[-1]
        page2 = await unit.api_keys.page(
            first.merchant_id, after=(last.create_time, last.id), limit=3
        )
    assert len(page1) == 3
    assert [k.id for k in page1 + page2] == [ids[4], ids[3], ids[2], ids[1], ids[0]]


async def test_keys_created_at_the_same_time_page_by_id(units: UnitsOfWork) -> None:
    first = await _merchant_with_key(units)
    same = [first.id] + [(await _add_key(units, first.merchant_id, T0)).id for _ in range(3)]
    async with units(Mode.READ) as unit:
        page1 = await unit.api_keys.page(first.merchant_id, after=None, limit=2)
        page2 = await unit.api_keys.page(first.merchant_id, after=(T0, page1[-1].id), limit=10)
    assert [k.id for k in page1 + page2] == sorted(same, reverse=True)


async def test_a_key_is_revoked_once_and_rehashed_in_place(units: UnitsOfWork) -> None:
    key = await _merchant_with_key(units)
    rehashed = SecretHash(b"\x07" * 32, 2)
    async with units(Mode.LOCKED) as unit:
        unit.api_keys.revoke(key.id, T0 + timedelta(minutes=1))
        unit.api_keys.rehash(key.id, rehashed)
        await unit.commit()
    async with units(Mode.LOCKED) as unit:
        unit.api_keys.revoke(key.id, T0 + timedelta(minutes=2))
        await unit.commit()
    async with units(Mode.READ) as unit:
        found = await unit.api_keys.credentials(key.id)
    assert found is not None
    assert found.api_key.revoke_time == T0 + timedelta(minutes=1)
    assert found.secret_hash == rehashed


# -- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [Mode.OPTIMISTIC, Mode.LOCKED])
async def test_a_token_is_recorded_only_while_its_key_is_active(
    units: UnitsOfWork, mode: Mode
) -> None:
    key = await _merchant_with_key(units)
    before, after = _grant(key, T0, timedelta(minutes=5)), _grant(key, T0, timedelta(minutes=5))
    async with units(mode) as unit:
        unit.tokens.add_issued(before)
        await unit.commit()
    async with units(Mode.LOCKED) as unit:
        unit.api_keys.revoke(key.id, T0)
        await unit.commit()
    with pytest.raises(Conflict):
        async with units(mode) as unit:
            unit.tokens.add_issued(after)
            await unit.commit()
    async with units(Mode.READ) as unit:
        assert await unit.tokens.issued(key.merchant_id, before.token_id) == before
        assert await unit.tokens.issued(key.merchant_id, after.token_id) is None
        assert await unit.tokens.issued(merchants.new_merchant_id(), before.token_id) is None


async def test_revoking_a_key_finds_only_its_live_unrevoked_tokens(units: UnitsOfWork) -> None:
    key = await _merchant_with_key(units)
    other = await _add_key(units, key.merchant_id, T0)
    now = datetime.now(UTC)
    live = _grant(key, now, timedelta(minutes=5))
    live_revoked = _grant(key, now, timedelta(minutes=5))
    expired = _grant(key, now, -timedelta(seconds=1))
    others = _grant(other, now, timedelta(minutes=5))
    await _issue(units, live, live_revoked, expired, others)
    async with units(Mode.LOCKED) as unit:
        unit.tokens.revoke([live_revoked], now - timedelta(seconds=30))
        await unit.commit()
    async with units(Mode.LOCKED) as unit:
        fresh = await unit.tokens.live_unrevoked(key.id, now)
        unit.api_keys.revoke(key.id, now)
        unit.tokens.revoke(fresh, now)
        await unit.commit()
    assert fresh == [live]
    async with units(Mode.READ) as unit:
        listed = await unit.tokens.revoked_since(None, now)
    assert [r.token_id for r in listed] == [live_revoked.token_id, live.token_id]


async def test_a_token_keeps_its_first_revocation(units: UnitsOfWork) -> None:
    key = await _merchant_with_key(units)
    grant = _grant(key, T0, timedelta(minutes=5))
    await _issue(units, grant)
    for minutes in (1, 2):
        async with units(Mode.LOCKED) as unit:
            unit.tokens.revoke([grant], T0 + timedelta(minutes=minutes))
            revoked = await unit.tokens.revocation(grant.token_id)
            await unit.commit()
        assert revoked == RevokedToken(grant.token_id, grant.expire_time, T0 + timedelta(minutes=1))


async def test_revocations_list_oldest_first_unexpired_and_after_a_time(
    units: UnitsOfWork,
) -> None:
    key = await _merchant_with_key(units)
    grants = sorted(
        (_grant(key, T0, timedelta(minutes=10)) for _ in range(3)), key=lambda g: g.token_id
    )
    short = _grant(key, T0, timedelta(minutes=1))
    await _issue(units, *grants, short)
    async with units(Mode.LOCKED) as unit:
        unit.tokens.revoke(grants[:2], T0)  # same time: ordered by jti
        unit.tokens.revoke([grants[2], short], T0 + timedelta(seconds=1))
        await unit.commit()
    async with units(Mode.READ) as unit:
        everything = await unit.tokens.revoked_since(None, T0)
        after = await unit.tokens.revoked_since(T0, T0 + timedelta(minutes=2))
    assert [r.token_id for r in everything] == [
        grants[0].token_id,
        grants[1].token_id,
        *sorted([grants[2].token_id, short.token_id]),
    ]
    assert [r.token_id for r in after] == [grants[2].token_id]


# -- failed secrets --------------------------------------------------------------------------


async def test_failures_are_locked_saved_and_read_back(units: UnitsOfWork) -> None:
    key_id = merchants.new_api_key_id()
    async with units(Mode.READ) as unit:
        assert await unit.failed_logins.get(key_id) == LoginFailures()
    saved = LoginFailures((T0, T0 + timedelta(seconds=1, microseconds=2500)), None)
    async with units(Mode.LOCKED) as unit:
        assert await unit.failed_logins.lock(key_id) == LoginFailures()
        unit.failed_logins.save(key_id, saved, T0)
        await unit.commit()
    async with units(Mode.READ) as unit:
        found = await unit.failed_logins.get(key_id)
    # Kept to the millisecond.
    assert found.recent == (T0, T0 + timedelta(seconds=1, microseconds=2000))
    async with units(Mode.OPTIMISTIC) as unit:
        with pytest.raises(RuntimeError):
            await unit.failed_logins.lock(key_id)


async def test_purges_forget_only_what_expired(units: UnitsOfWork) -> None:
    key = await _merchant_with_key(units)
    now = datetime.now(UTC)
    expired, live = _grant(key, now, -timedelta(minutes=5)), _grant(key, now, timedelta(minutes=5))
    await _issue(units, expired, live)
    async with units(Mode.LOCKED) as unit:
        unit.tokens.revoke([expired, live], now - timedelta(minutes=10))
        for key_id, failures in (
            ("key_stale", LoginFailures((now,), None)),
            ("key_locked", LoginFailures((), now + timedelta(hours=1))),
        ):
            await unit.failed_logins.lock(key_id)
            unit.failed_logins.save(key_id, failures, now - timedelta(minutes=40))
        await unit.commit()
    async with units(Mode.OPTIMISTIC) as unit:
        counts = [
            unit.tokens.forget_expired(now),
            unit.failed_logins.forget_stale(now - timedelta(minutes=30), now),
        ]
        await unit.commit()
    assert [count.value for count in counts] == [2, 1]  # issued + revoked; the stale record
    async with units(Mode.READ) as unit:
        assert await unit.tokens.issued(key.merchant_id, live.token_id) == live
        assert await unit.tokens.revocation(expired.token_id) is None
        assert await unit.tokens.revocation(live.token_id) is not None
        assert (await unit.failed_logins.get("key_locked")).locked_until is not None
        assert await unit.failed_logins.get("key_stale") == LoginFailures()


# -- signing keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [Mode.OPTIMISTIC, Mode.LOCKED])
async def test_at_most_one_signing_key_is_current(units: UnitsOfWork, mode: Mode) -> None:
    first, second = _signing_key(1), _signing_key(2)
    async with units(mode) as unit:
        assert await unit.signing_keys.current_kid() is None
        unit.signing_keys.add_current(first, T0)
        await unit.commit()
    with pytest.raises(Conflict):
        async with units(mode) as unit:
            unit.signing_keys.add_current(second, T0)
            await unit.commit()
    async with units(Mode.READ) as unit:
        assert await unit.signing_keys.current_kid() == first.kid
        assert [k.kid for k in await unit.signing_keys.published()] == [first.kid]


async def test_rotated_keys_publish_current_first_then_retire(units: UnitsOfWork) -> None:
    keys = [_signing_key(n) for n in range(3)]
    for n, key in enumerate(keys):
        now = T0 + timedelta(minutes=n)
        async with units(Mode.LOCKED) as unit:
            old = await unit.signing_keys.current_kid()
            if old is not None:
                unit.signing_keys.demote(old, now=now, verify_until=now + timedelta(minutes=20))
            unit.signing_keys.add_current(key, now)
            await unit.commit()
    async with units(Mode.READ) as unit:
        published = await unit.signing_keys.published()
        expired = await unit.signing_keys.expired_previous(T0 + timedelta(minutes=21))
    assert [(k.kid, k.status) for k in published] == [
        (keys[2].kid, "current"),
        (keys[1].kid, "previous"),
        (keys[0].kid, "previous"),
    ]
    assert published[0].private_key_ciphertext == keys[2].private_key_ciphertext
    assert published[1].verify_until == T0 + timedelta(minutes=22)
    assert expired == [keys[0].kid]
    async with units(Mode.LOCKED) as unit:
        unit.signing_keys.retire(await unit.signing_keys.expired_previous(T0 + timedelta(hours=1)))
        await unit.commit()
    async with units(Mode.READ) as unit:
        assert [k.kid for k in await unit.signing_keys.published()] == [keys[2].kid]
        assert await unit.signing_keys.expired_previous(T0 + timedelta(hours=1)) == []


# -- idempotency keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [Mode.OPTIMISTIC, Mode.LOCKED])
async def test_an_idempotency_key_is_claimed_once(units: UnitsOfWork, mode: Mode) -> None:
    request = IdempotentRequest("admin", "pi.auth.v1.AuthService/CreateMerchant", "k-1", "fp")
    async with units(mode) as unit:
        assert await unit.idempotency.claim(request, b"first") is None
    # Not committed: the key is free again.
    async with units(mode) as unit:
        assert await unit.idempotency.claim(request, b"second") is None
        await unit.commit()
    other = IdempotentRequest("admin", request.operation, "k-1", "other")
    async with units(mode) as unit:
        assert await unit.idempotency.claim(request, b"third") == PriorRequest("fp", b"second")
        assert await unit.idempotency.claim(other, b"fourth") == PriorRequest("fp", b"second")
    # Keys are per scope and operation; a request without a key claims nothing.
    elsewhere = IdempotentRequest("mer_1", request.operation, "k-1", "fp")
    keyless = IdempotentRequest("admin", request.operation, None, "fp")
    async with units(mode) as unit:
        assert await unit.idempotency.claim(elsewhere, b"fifth") is None
        assert await unit.idempotency.claim(keyless, b"") is None
        await unit.commit()
    async with units(mode) as unit:
        assert await unit.idempotency.claim(keyless, b"") is None


async def test_old_idempotency_keys_are_forgotten(units: UnitsOfWork) -> None:
    request = IdempotentRequest("admin", "op", "k-1", "fp")
    async with units(Mode.LOCKED) as unit:
        await unit.idempotency.claim(request, b"r")
        await unit.commit()
    for cutoff, forgotten in (
        (datetime.now(UTC) - timedelta(hours=1), 0),
        (datetime.now(UTC) + timedelta(hours=1), 1),
    ):
        async with units(Mode.OPTIMISTIC) as unit:
            count = unit.idempotency.forget_before(cutoff)
            await unit.commit()
        assert count.value == forgotten
    async with units(Mode.LOCKED) as unit:
        assert await unit.idempotency.claim(request, b"again") is None
