"""IssueToken (with failure throttling per address and per key) and RevokeToken."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

import jwt
import pytest

from pi.auth.domain import tokens
from pi.platform.kernel.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from pi.platform.kernel.principal import Principal
from pi.platform.security.crypto import MasterKeys
from pi.platform.security.tokens import public_key_from_jwk

if TYPE_CHECKING:  # the fixtures' types, defined in this directory's conftest
    from conftest import Auth, MakeAuth

UNKNOWN_KEY = "key_01JZZZZZZZZZZZZZZZZZZZZZZZ"
WRONG = "sk_" + "A" * 43


async def _refused(auth: Auth, key_id: str, secret: str, client: str = "") -> tuple[str, str]:
    with pytest.raises(Unauthenticated) as raised:
        await auth.use_cases.issue_token(key_id, secret, client=client)
    return raised.value.reason, raised.value.message


async def test_a_key_and_its_secret_make_a_signed_token_that_is_recorded(auth: Auth) -> None:
    created, _ = await auth.merchant()
    issued = await auth.use_cases.issue_token(created.api_key.id, created.secret)
    grant = issued.grant
    assert tokens.is_token_id(grant.token_id)
    assert (grant.merchant_id, grant.api_key_id) == (created.merchant.id, created.api_key.id)
    assert grant.issue_time == auth.clock()
    assert grant.expire_time - grant.issue_time == timedelta(minutes=15)
    (jwk,) = auth.use_cases.get_jwks()
    header = jwt.get_unverified_header(issued.access_token)
    assert (header["alg"], header["kid"]) == ("ES256", jwk["kid"])
    claims = jwt.decode(
        issued.access_token,
        public_key_from_jwk(jwk),
        algorithms=["ES256"],
        audience="pi-api",
        issuer="pi-platform",
    )
    assert claims == tokens.token_claims(grant, issuer="pi-platform", audience="pi-api")
    assert auth.state.issued_tokens == {grant.token_id: grant}


async def test_a_token_lives_at_most_fifteen_minutes(make_auth: MakeAuth) -> None:
    auth = await make_auth(token_ttl=timedelta(hours=2))
    created, _ = await auth.merchant()
    grant = (await auth.use_cases.issue_token(created.api_key.id, created.secret)).grant
    assert grant.expire_time - grant.issue_time == timedelta(minutes=15)


async def test_every_refusal_answers_the_same_and_only_real_keys_get_a_row(auth: Auth) -> None:
    created, merchant = await auth.merchant()
    revoked = await auth.use_cases.create_api_key(merchant, "old")
    await auth.use_cases.revoke_api_key(merchant, revoked.api_key.id)
    answers = {
        await _refused(auth, created.api_key.id, WRONG),
        await _refused(auth, UNKNOWN_KEY, created.secret),
        await _refused(auth, revoked.api_key.id, revoked.secret),
    }
    assert answers == {("INVALID_CREDENTIALS", "The API key id or secret is not valid.")}
    failures = auth.state.failed_logins
    for key_id in (created.api_key.id, revoked.api_key.id):
        assert failures[key_id].failures.recent == (auth.clock(),)
    # Finding 4: made-up key ids write nothing, however many are tried.
    for _ in range(20):
        await _refused(auth, f"key_01J{secrets.token_hex(12).upper()[:23]}", WRONG, client=_addr())
    assert set(failures) == {created.api_key.id, revoked.api_key.id}
    assert auth.state.issued_tokens == {}


@pytest.mark.parametrize(
    ("key_id", "secret", "field"),
    [
        ("", "sk_x", "api_key_id"),
        ("not-a-key-id", "sk_x", "api_key_id"),
        ("tok_01JAAAAAAAAAAAAAAAAAAAAAAA", "sk_x", "api_key_id"),
        (UNKNOWN_KEY, "", "api_key_secret"),
        (UNKNOWN_KEY, "s" * 257, "api_key_secret"),
    ],
)
async def test_missing_or_malformed_input_is_a_field_violation_and_not_counted(
    auth: Auth, key_id: str, secret: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await auth.use_cases.issue_token(key_id, secret)
    assert [v.field for v in raised.value.violations] == [field]
    assert auth.state.failed_logins == {}


def _addr() -> str:
    return f"198.51.100.{secrets.randbelow(250) + 1}.{secrets.randbelow(1000)}"


async def _throttled(auth: Auth, key_id: str, secret: str, client: str) -> float:
    with pytest.raises(ResourceExhausted) as raised:
        await auth.use_cases.issue_token(key_id, secret, client=client)
    assert raised.value.reason == "LOGIN_THROTTLED"
    assert raised.value.retry_after is not None
    return raised.value.retry_after


async def test_anyone_can_no_longer_lock_a_merchant_out(auth: Auth) -> None:
    """Finding 3: an attacker's failures do not stop the right secret from a client that
    has not been failing (on main: ten failures locked the key id for everyone)."""
    created, _ = await auth.merchant()
    key_id, secret = created.api_key.id, created.secret
    attacker = "203.0.113.7"
    for _ in range(6):  # the 6th failure of the key within the window starts its delays
        await _refused(auth, key_id, WRONG, client=attacker)
    assert auth.state.failed_logins[key_id].failures.locked_until is not None
    issued = await auth.use_cases.issue_token(key_id, secret, client="192.0.2.10")
    assert issued.grant.api_key_id == key_id
    # The attacker, even with the right secret, waits.
    await _throttled(auth, key_id, secret, attacker)


async def test_failures_from_one_address_are_delayed_progressively(auth: Auth) -> None:
    created, _ = await auth.merchant()
    client = "203.0.113.8"
    keys = [created.api_key.id, UNKNOWN_KEY]
    for i in range(10):  # ten free failures per address, any key
        await _refused(auth, keys[i % 2], WRONG, client=client)
    await _refused(auth, UNKNOWN_KEY, WRONG, client=client)  # the 11th: 1 s from now
    waits = []
    for _ in range(4):
        waits.append(await _throttled(auth, UNKNOWN_KEY, WRONG, client))
        auth.clock.advance(timedelta(seconds=waits[-1]))
        await _refused(auth, UNKNOWN_KEY, WRONG, client=client)
    assert waits == [1.0, 2.0, 4.0, 8.0]
    # Another address is not affected.
    other = await auth.use_cases.issue_token(created.api_key.id, created.secret, client="192.0.2.1")
    assert other.grant.api_key_id == created.api_key.id


async def test_credential_stuffing_costs_an_address_per_guess_at_a_key_under_attack(
    auth: Auth,
) -> None:
    """Guesses spread over many addresses: once the key has failed five times, each new
    address gets one guess, then waits like any failing client (measured: guesses that
    reached the secret check per address)."""
    created, _ = await auth.merchant()
    key_id = created.api_key.id
    checked = {}
    for n in range(30):
        address = f"198.51.100.{n}"
        checked[address] = 0
        for _ in range(3):
            try:
                await auth.use_cases.issue_token(key_id, WRONG, client=address)
            except Unauthenticated:
                checked[address] += 1
            except ResourceExhausted:
                pass
    assert sum(checked.values()) <= 5 + 30
    assert max(list(checked.values())[5:]) == 1


async def test_a_success_does_not_reset_the_failure_count(auth: Auth) -> None:
    created, _ = await auth.merchant()
    key_id, secret = created.api_key.id, created.secret
    for _ in range(5):
        await _refused(auth, key_id, WRONG)
    await auth.use_cases.issue_token(key_id, secret, client="192.0.2.50")
    await _refused(auth, key_id, WRONG)  # the 6th within the window: a delay follows
    await _throttled(auth, key_id, secret, "unknown")


async def test_failures_age_out_of_the_thirty_minute_window(auth: Auth) -> None:
    created, _ = await auth.merchant()
    key_id, secret = created.api_key.id, created.secret
    for _ in range(6):
        await _refused(auth, key_id, WRONG)
    auth.clock.advance(timedelta(minutes=31))
    await _refused(auth, key_id, WRONG)
    await auth.use_cases.issue_token(key_id, secret)


async def _rotated_to(make_auth: MakeAuth, auth: Auth, master_keys: MasterKeys) -> Auth:
    """`auth`'s store served with `master_keys`, after a rotation made under them retired
    the signing key sealed under the old ones."""
    both = await make_auth(auth.units, master_keys)
    await both.use_cases.signing_keys.rotate()
    auth.clock.advance(timedelta(hours=1))
    await both.use_cases.signing_keys.retire_expired()
    return both


async def test_a_secret_keeps_working_across_master_keys_and_moves_to_the_newest(
    make_auth: MakeAuth,
) -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    auth = await make_auth(master_keys=MasterKeys({1: old}))
    created, _ = await auth.merchant()
    assert auth.state.api_keys[created.api_key.id].secret_hash.version == 1
    added = await make_auth(auth.units, MasterKeys({1: old, 2: new}))
    await added.use_cases.issue_token(created.api_key.id, created.secret)
    assert auth.state.api_keys[created.api_key.id].secret_hash.version == 2
    await _rotated_to(make_auth, auth, MasterKeys({1: old, 2: new}))
    only_new = await make_auth(auth.units, MasterKeys({2: new}))
    await only_new.use_cases.issue_token(created.api_key.id, created.secret)


async def test_a_hash_under_a_master_key_no_longer_configured_is_refused(
    make_auth: MakeAuth,
) -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    auth = await make_auth(master_keys=MasterKeys({1: old}))
    created, _ = await auth.merchant()
    await _rotated_to(make_auth, auth, MasterKeys({1: old, 2: new}))
    only_new = await make_auth(auth.units, MasterKeys({2: new}))
    assert await _refused(only_new, created.api_key.id, created.secret) == (
        "INVALID_CREDENTIALS",
        "The API key id or secret is not valid.",
    )


async def test_a_merchant_revokes_its_own_token_once_and_it_is_announced(auth: Auth) -> None:
    created, merchant = await auth.merchant()
    grant = (await auth.use_cases.issue_token(created.api_key.id, created.secret)).grant
    first = await auth.use_cases.revoke_token(merchant, grant.token_id)
    assert (first.token_id, first.expire_time, first.revoke_time) == (
        grant.token_id,
        grant.expire_time,
        auth.clock(),
    )
    auth.clock.advance(timedelta(seconds=5))
    again = await auth.use_cases.revoke_token(merchant, grant.token_id)
    assert again == first
    assert auth.announced.tokens == [first, first]


async def test_another_merchants_token_is_not_found_like_a_missing_one(auth: Auth) -> None:
    alice, _ = await auth.merchant("Alice")
    _, bob = await auth.merchant("Bob")
    grant = (await auth.use_cases.issue_token(alice.api_key.id, alice.secret)).grant
    for token_id in (grant.token_id, tokens.new_token_id()):
        with pytest.raises(NotFound) as raised:
            await auth.use_cases.revoke_token(bob, token_id)
        assert raised.value.reason == "TOKEN_NOT_FOUND"
    assert auth.state.revoked_tokens == {}
    assert auth.announced.tokens == []


@pytest.mark.parametrize("token_id", ["", "key_01J", "tok_short"])
async def test_a_malformed_token_id_is_a_field_violation(auth: Auth, token_id: str) -> None:
    _, merchant = await auth.merchant()
    with pytest.raises(InvalidArgument) as raised:
        await auth.use_cases.revoke_token(merchant, token_id)
    assert [v.field for v in raised.value.violations] == ["token_id"]


async def test_only_merchants_revoke_tokens(auth: Auth) -> None:
    created, _ = await auth.merchant()
    grant = (await auth.use_cases.issue_token(created.api_key.id, created.secret)).grant
    for principal in (Principal.admin(), Principal.service()):
        with pytest.raises(PermissionDenied):
            await auth.use_cases.revoke_token(principal, grant.token_id)
