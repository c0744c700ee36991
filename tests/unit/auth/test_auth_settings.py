"""`AuthSettings`: the common variables plus PI_TOKEN_TTL_SECONDS, and nothing of the
other services' (their targets)."""

import pytest

from pi.auth.domain.tokens import MAX_TOKEN_TTL
from pi.auth.settings import AuthSettings
from pi.platform.config import ConfigError
from tests.support.settings import COMMON_VARIABLES, required_environ, variables_read


def test_the_token_lifetime_defaults_to_the_most_a_token_may_live() -> None:
    settings = AuthSettings.from_env(required_environ())
    assert settings.token_ttl_seconds == 900 == MAX_TOKEN_TTL.total_seconds()
    assert (settings.grpc_port, settings.db_schema) == (50051, "auth")


def test_the_token_lifetime_is_read() -> None:
    env = {**required_environ(), "PI_TOKEN_TTL_SECONDS": "300"}
    assert AuthSettings.from_env(env).token_ttl_seconds == 300


@pytest.mark.parametrize("bad", ["0", "901", "3600", "soon"])
def test_a_token_lifetime_outside_1_to_900_seconds_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="PI_TOKEN_TTL_SECONDS"):
        AuthSettings.from_env({**required_environ(), "PI_TOKEN_TTL_SECONDS": bad})


def test_its_own_problems_are_reported_with_the_common_ones() -> None:
    env = {"PI_TOKEN_TTL_SECONDS": "3600", "PI_LOG_LEVEL": "LOUD"}
    with pytest.raises(ConfigError) as info:
        AuthSettings.from_env(env)
    text = str(info.value)
    for name in (
        "DATABASE_URL",
        "PI_ADMIN_TOKEN",
        "PI_SERVICE_TOKEN",
        "PI_MASTER_KEYS",
        "PI_LOG_LEVEL",
        "PI_TOKEN_TTL_SECONDS",
    ):
        assert name in text
    assert len(info.value.problems) == 6


def test_no_secret_in_repr() -> None:
    env = required_environ()
    text = repr(AuthSettings.from_env(env))
    assert "token_ttl_seconds=900" in text
    for secret in (env["PI_ADMIN_TOKEN"], env["PI_SERVICE_TOKEN"], env["PI_MASTER_KEYS"][2:]):
        assert secret not in text


def test_it_reads_its_own_variables_and_no_other_service_s() -> None:
    assert variables_read(AuthSettings, required_environ()) == {
        *COMMON_VARIABLES,
        "PI_TOKEN_TTL_SECONDS",
    }


def test_the_other_services_variables_are_ignored() -> None:
    base = required_environ()
    env = {**base, "PI_TRANSACTIONS_TARGET": "elsewhere:2", "PI_PAYMENTS_TARGET": "elsewhere:3"}
    settings = AuthSettings.from_env(env)
    assert settings == AuthSettings.from_env(base)
    assert not hasattr(settings, "transactions_target")
    assert not hasattr(settings, "payments_target")
