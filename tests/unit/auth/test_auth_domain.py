"""Auth domain rules: formats, names, lockout and claims, with an injected clock."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from pi.auth.domain import merchants, signing_keys, tokens
from pi.auth.domain.lockout import LockoutPolicy, LoginFailures
from pi.platform.kernel.errors import InvalidArgument

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def test_api_secret_is_sk_and_43_url_safe_characters() -> None:
    secret = merchants.new_api_secret()
    assert re.fullmatch(r"sk_[A-Za-z0-9_-]{43}", secret)
    assert len(secret) == merchants.SECRET_LENGTH


def test_api_secrets_are_unique() -> None:
    assert len({merchants.new_api_secret() for _ in range(1000)}) == 1000


def test_identifiers_have_their_prefix_and_ulid_body() -> None:
    for make, check, prefix in (
        (merchants.new_api_key_id, merchants.is_api_key_id, "key"),
        (merchants.new_merchant_id, merchants.is_merchant_id, "mer"),
        (tokens.new_token_id, tokens.is_token_id, "tok"),
    ):
        value = make()
        assert re.fullmatch(prefix + r"_[0-9A-HJKMNP-TV-Z]{26}", value)
        assert check(value)
    assert not merchants.is_api_key_id("tok_" + "0" * 26)
    assert not merchants.is_api_key_id("key_short")
    assert not merchants.is_api_key_id("")


def test_identifiers_sort_by_creation_time() -> None:
    first = merchants.new_api_key_id()
    later = [merchants.new_api_key_id() for _ in range(3)]
    assert all(first[:14] <= other[:14] for other in later)


def test_check_id_distinguishes_missing_from_malformed() -> None:
    with pytest.raises(InvalidArgument) as missing:
        merchants.check_id("", field_path="id", kind="API key", valid=False)
    assert missing.value.violations[0].description == "is required"
    with pytest.raises(InvalidArgument) as malformed:
        merchants.check_id("nope", field_path="id", kind="API key", valid=False)
    assert malformed.value.violations[0].field == "id"
    merchants.check_id("key_x", field_path="id", kind="API key", valid=True)


# -- lockout -------------------------------------------------------------------------------


def _fail(policy: LockoutPolicy, times: list[datetime]) -> LoginFailures:
    state = LoginFailures()
    for t in times:
        state = policy.after_failure(state, t)
    return state


def test_ten_failures_within_thirty_minutes_lock_for_thirty_minutes() -> None:
    policy = LockoutPolicy()
    times = [T0 + timedelta(minutes=3 * i) for i in range(10)]  # 0 .. 27 min
    state = _fail(policy, times[:9])
    assert not policy.is_locked(state, times[8])
    state = policy.after_failure(state, times[9])
    assert policy.is_locked(state, times[9])
    assert policy.is_locked(state, times[9] + timedelta(minutes=29, seconds=59))
    assert not policy.is_locked(state, times[9] + timedelta(minutes=30))


def test_failures_spread_over_more_than_thirty_minutes_do_not_lock() -> None:
    policy = LockoutPolicy()
    times = [T0 + timedelta(minutes=4 * i) for i in range(20)]  # 4 min apart: ≤ 8 per window
    state = _fail(policy, times)
    assert not policy.is_locked(state, times[-1])


def test_window_is_sliding_not_fixed() -> None:
    """9 failures late in one window plus 1 early in the next still lock (a fixed window
    starting at the first failure would have reset in between)."""
    policy = LockoutPolicy()
    times = [T0] + [T0 + timedelta(minutes=29, seconds=50 + i) for i in range(8)]
    times += [T0 + timedelta(minutes=30, seconds=5)]
    state = _fail(policy, times)
    assert not policy.is_locked(state, times[-1])  # 9 within the window ending now
    state = policy.after_failure(state, times[-1] + timedelta(seconds=1))
    assert policy.is_locked(state, times[-1] + timedelta(seconds=1))


def test_attempts_while_locked_do_not_extend_the_lock() -> None:
    policy = LockoutPolicy()
    state = _fail(policy, [T0 + timedelta(seconds=i) for i in range(10)])
    until = state.locked_until
    assert until is not None
    later = policy.after_failure(state, T0 + timedelta(minutes=20))
    assert later.locked_until == until


def test_count_starts_over_after_the_lock_expires() -> None:
    policy = LockoutPolicy()
    state = _fail(policy, [T0 + timedelta(seconds=i) for i in range(10)])
    after = T0 + timedelta(minutes=31)
    state = policy.after_failure(state, after)
    assert not policy.is_locked(state, after)
    assert len(state.recent) == 1


def test_recent_failures_are_bounded_by_the_threshold() -> None:
    policy = LockoutPolicy(max_failures=3, window=timedelta(minutes=1))
    state = _fail(policy, [T0 + timedelta(minutes=2 * i) for i in range(50)])
    assert len(state.recent) <= 3


def test_stale_records_can_be_forgotten() -> None:
    policy = LockoutPolicy()
    state = _fail(policy, [T0])
    assert not policy.is_stale(state, T0 + timedelta(minutes=10))
    assert policy.is_stale(state, T0 + timedelta(minutes=31))
    locked = _fail(policy, [T0 + timedelta(seconds=i) for i in range(10)])
    assert not policy.is_stale(locked, T0 + timedelta(minutes=29))


# -- claims --------------------------------------------------------------------------------


def test_claims_carry_the_registered_names_and_the_key() -> None:
    grant = tokens.grant_token(
        merchant_id="mer_1", api_key_id="key_1", now=T0, ttl=timedelta(minutes=15)
    )
    claims = tokens.token_claims(grant, issuer="pi-platform", audience="pi-api")
    assert claims == {
        "iss": "pi-platform",
        "aud": "pi-api",
        "sub": "mer_1",
        "iat": int(T0.timestamp()),
        "exp": int(T0.timestamp()) + 900,
        "jti": grant.token_id,
        "key": "key_1",
    }
    assert tokens.is_token_id(grant.token_id)


def test_token_lifetime_is_capped_at_fifteen_minutes() -> None:
    grant = tokens.grant_token(
        merchant_id="mer_1", api_key_id="key_1", now=T0, ttl=timedelta(hours=2)
    )
    assert grant.expire_time - grant.issue_time == timedelta(minutes=15)


def test_token_lifetime_must_be_positive() -> None:
    with pytest.raises(ValueError):
        tokens.grant_token(merchant_id="m", api_key_id="k", now=T0, ttl=timedelta(0))


def test_previous_signing_key_outlives_every_token_it_may_have_signed() -> None:
    until = signing_keys.verify_until(
        T0, max_ttl=timedelta(minutes=15), signer_lag=timedelta(seconds=65)
    )
    last_token_signed = T0 + timedelta(seconds=65)
    assert until > last_token_signed + timedelta(minutes=15)
