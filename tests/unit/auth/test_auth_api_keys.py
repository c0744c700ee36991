"""CreateApiKey, ListApiKeys and RevokeApiKey."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from pi.auth.domain import merchants
from pi.auth.domain.merchants import ApiKey, SecretHash
from pi.platform.kernel.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from pi.platform.kernel.principal import Principal
from pi.platform.kernel.units import Mode

if TYPE_CHECKING:  # the fixtures' types, defined in this directory's conftest
    from conftest import Auth


async def test_a_merchant_creates_a_key_with_an_optional_name(auth: Auth) -> None:
    created, merchant = await auth.merchant()
    named = await auth.use_cases.create_api_key(merchant, "CI")
    unnamed = await auth.use_cases.create_api_key(merchant, "")
    assert named.api_key.display_name == "CI" and unnamed.api_key.display_name == ""
    assert named.api_key.merchant_id == created.merchant.id
    assert named.secret != created.secret and named.secret.startswith("sk_")
    for new in (named, unnamed):
        issued = await auth.use_cases.issue_token(new.api_key.id, new.secret)
        assert issued.grant.api_key_id == new.api_key.id


async def test_only_merchants_create_list_and_revoke_keys(auth: Auth) -> None:
    created, _ = await auth.merchant()
    for principal in (Principal.admin(), Principal.service()):
        with pytest.raises(PermissionDenied):
            await auth.use_cases.create_api_key(principal, "CI")
        with pytest.raises(PermissionDenied):
            await auth.use_cases.list_api_keys(principal)
        with pytest.raises(PermissionDenied):
            await auth.use_cases.revoke_api_key(principal, created.api_key.id)
    assert auth.state.api_keys[created.api_key.id].api_key.active


async def test_a_bad_key_name_is_a_field_violation(auth: Auth) -> None:
    _, merchant = await auth.merchant()
    with pytest.raises(InvalidArgument) as raised:
        await auth.use_cases.create_api_key(merchant, "CI\x00")
    assert [v.field for v in raised.value.violations] == ["display_name"]


async def test_keys_list_newest_first_in_pages_bound_to_the_merchant(auth: Auth) -> None:
    created, merchant = await auth.merchant()
    _, other = await auth.merchant("Other")
    made = [created.api_key.id]
    for i in range(4):
        auth.clock.advance(timedelta(seconds=1))
        made.append((await auth.use_cases.create_api_key(merchant, f"k{i}")).api_key.id)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        keys, token = await auth.use_cases.list_api_keys(
            merchant, page_size_value=2, page_token=token
        )
        pages += 1
        seen += [key.id for key in keys]
        if not token:
            break
        with pytest.raises(InvalidArgument) as raised:
            await auth.use_cases.list_api_keys(other, page_size_value=2, page_token=token)
        assert [v.field for v in raised.value.violations] == ["page_token"]
    assert seen == list(reversed(made))
    assert pages == 3
    other_keys, _ = await auth.use_cases.list_api_keys(other)
    assert not set(made) & {key.id for key in other_keys}


async def test_keys_made_in_the_same_instant_page_without_loss(auth: Auth) -> None:
    created, merchant = await auth.merchant()
    made = {created.api_key.id}
    made |= {(await auth.use_cases.create_api_key(merchant, "k")).api_key.id for _ in range(4)}
    first, token = await auth.use_cases.list_api_keys(merchant, page_size_value=3)
    rest, last = await auth.use_cases.list_api_keys(merchant, page_size_value=3, page_token=token)
    assert {key.id for key in first + rest} == made and len(first + rest) == 5
    assert last == ""


@pytest.mark.parametrize(
    ("page_size", "page_token"),
    [(-1, ""), (0, "forged"), (0, "e30.AAAA")],
    ids=["negative-size", "garbage", "bad-signature"],
)
async def test_bad_list_parameters_are_field_violations(
    auth: Auth, page_size: int, page_token: str
) -> None:
    _, merchant = await auth.merchant()
    with pytest.raises(InvalidArgument) as raised:
        await auth.use_cases.list_api_keys(
            merchant, page_size_value=page_size, page_token=page_token
        )
    field = "page_size" if page_size < 0 else "page_token"
    assert [v.field for v in raised.value.violations] == [field]


async def test_page_size_defaults_to_twenty_and_caps_at_a_hundred(auth: Auth) -> None:
    created, merchant = await auth.merchant()
    async with auth.units(Mode.LOCKED) as unit:
        for _ in range(120):
            key = ApiKey(merchants.new_api_key_id(), created.merchant.id, "k", auth.clock())
            unit.api_keys.add(key, SecretHash(b"\x00" * 32, 1))
        await unit.commit()
    default, _ = await auth.use_cases.list_api_keys(merchant)
    capped, _ = await auth.use_cases.list_api_keys(merchant, page_size_value=1000)
    assert (len(default), len(capped)) == (20, 100)


async def test_revoking_a_key_revokes_its_live_tokens_and_announces_them(auth: Auth) -> None:
    created, merchant = await auth.merchant()
    extra = await auth.use_cases.create_api_key(merchant, "CI")
    issue = auth.use_cases.issue_token
    expired = await issue(extra.api_key.id, extra.secret)
    auth.clock.advance(timedelta(minutes=16))
    already = await issue(extra.api_key.id, extra.secret)
    live = await issue(extra.api_key.id, extra.secret)
    untouched = await issue(created.api_key.id, created.secret)
    await auth.use_cases.revoke_token(merchant, already.grant.token_id)
    auth.announced.tokens.clear()

    revoked = await auth.use_cases.revoke_api_key(merchant, extra.api_key.id)

    assert revoked.revoke_time == auth.clock() and not revoked.active
    assert [t.token_id for t in auth.announced.tokens] == [live.grant.token_id]
    assert auth.announced.tokens[0].revoke_time == auth.clock()
    stored = auth.state.revoked_tokens
    assert {live.grant.token_id, already.grant.token_id} <= set(stored)
    assert expired.grant.token_id not in stored and untouched.grant.token_id not in stored
    with pytest.raises(Unauthenticated):
        await issue(extra.api_key.id, extra.secret)
    # The other key keeps working.
    await issue(created.api_key.id, created.secret)


async def test_revoking_a_revoked_key_changes_nothing(auth: Auth) -> None:
    _, merchant = await auth.merchant()
    extra = await auth.use_cases.create_api_key(merchant, "CI")
    first = await auth.use_cases.revoke_api_key(merchant, extra.api_key.id)
    auth.clock.advance(timedelta(minutes=1))
    auth.announced.tokens.clear()
    again = await auth.use_cases.revoke_api_key(merchant, extra.api_key.id)
    assert again == first
    assert auth.announced.tokens == []


async def test_another_merchants_key_is_not_found_like_a_missing_one(auth: Auth) -> None:
    alice, _ = await auth.merchant("Alice")
    _, bob = await auth.merchant("Bob")
    for key_id in (alice.api_key.id, merchants.new_api_key_id()):
        with pytest.raises(NotFound) as raised:
            await auth.use_cases.revoke_api_key(bob, key_id)
        assert raised.value.reason == "API_KEY_NOT_FOUND"
    assert auth.state.api_keys[alice.api_key.id].api_key.active


@pytest.mark.parametrize("key_id", ["", "sk_oops", "tok_01JAAAAAAAAAAAAAAAAAAAAAAA"])
async def test_a_malformed_key_id_is_a_field_violation(auth: Auth, key_id: str) -> None:
    _, merchant = await auth.merchant()
    with pytest.raises(InvalidArgument) as raised:
        await auth.use_cases.revoke_api_key(merchant, key_id)
    assert [v.field for v in raised.value.violations] == ["id"]
