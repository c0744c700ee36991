"""Auth domain rules: formats, names, throttle and claims, with an injected clock."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from pi.auth.domain import merchants, signing_keys, tokens
from pi.auth.domain.throttle import LoginFailures, ThrottlePolicy
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


# -- throttle ------------------------------------------------------------------------------


def _fail(policy: ThrottlePolicy, times: list[datetime]) -> LoginFailures:
    state = LoginFailures()
    for t in times:
        state = policy.after_failure(state, t)
    return state


def test_free_failures_cost_nothing_then_each_one_doubles_the_delay() -> None:
    policy = ThrottlePolicy(free_failures=5)
    delays = [policy.delay_after(n).total_seconds() for n in range(1, 10)]
    assert delays == [0, 0, 0, 0, 0, 1, 2, 4, 8]
    assert policy.delay_after(10_000) == timedelta(minutes=15)
    now = T0
    state = _fail(policy, [now + timedelta(seconds=i) for i in range(5)])
    assert state.locked_until is None
    now = T0 + timedelta(seconds=5)
    state = policy.after_failure(state, now)
    assert state.locked_until == now + timedelta(seconds=1)
    assert policy.is_locked(state, now + timedelta(milliseconds=999))
    assert not policy.is_locked(state, now + timedelta(seconds=1))


def test_attempts_while_delayed_are_not_counted_and_do_not_extend_the_delay() -> None:
    policy = ThrottlePolicy(free_failures=2)
    state = _fail(policy, [T0, T0, T0])
    until = state.locked_until
    assert until == T0 + timedelta(seconds=1)
    assert policy.after_failure(state, T0 + timedelta(milliseconds=500)) == state


def test_failures_age_out_of_the_sliding_window() -> None:
    policy = ThrottlePolicy(free_failures=3, window=timedelta(minutes=30))
    times = [T0 + timedelta(minutes=11 * i) for i in range(20)]  # at most 3 per window
    state = _fail(policy, times)
    assert state.locked_until is None
    assert policy.is_failing(state, times[-1])
    assert not policy.is_failing(state, times[-1] + timedelta(minutes=30))


def test_recent_failures_are_bounded() -> None:
    policy = ThrottlePolicy(free_failures=3)
    now = T0
    state = LoginFailures()
    for _ in range(200):
        state = policy.after_failure(state, now)
        now = state.locked_until or now
    assert len(state.recent) <= policy.tracked
    assert state.locked_until is not None and state.locked_until > state.recent[-1]


def test_stale_records_can_be_forgotten() -> None:
    policy = ThrottlePolicy(free_failures=1)
    state = _fail(policy, [T0])
    assert not policy.is_stale(state, T0 + timedelta(minutes=10))
    assert policy.is_stale(state, T0 + timedelta(minutes=31))


# -- claims --------------------------------------------------------------------------------


def test_claims_carry_the_registered_names_the_key_and_the_scopes() -> None:
    grant = tokens.grant_token(
        merchant_id="mer_1",
        api_key_id="key_1",
        now=T0,
        ttl=timedelta(minutes=15),
        scopes=frozenset({"payments:write", "transactions:read"}),
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
        "scope": "transactions:read payments:write",
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
