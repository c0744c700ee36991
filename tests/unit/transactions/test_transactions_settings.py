"""`TransactionsSettings`: the common variables plus PI_PAYMENTS_TARGET, and nothing of
the other services' (auth's token lifetime, payments' target for this service)."""

import pytest

from pi.platform.config import ConfigError
from pi.transactions.settings import TransactionsSettings
from tests.support.settings import COMMON_VARIABLES, required_environ, variables_read


def test_the_payment_service_is_found_on_its_default_port() -> None:
    settings = TransactionsSettings.from_env(required_environ())
    assert settings.payments_target == "127.0.0.1:50053"
    assert (settings.grpc_port, settings.db_schema) == (50052, "transactions")


def test_the_payments_target_is_read() -> None:
    env = {**required_environ(), "PI_PAYMENTS_TARGET": "payments.pi.svc:50053"}
    assert TransactionsSettings.from_env(env).payments_target == "payments.pi.svc:50053"


def test_every_problem_is_reported_at_once() -> None:
    env = {"PI_PAYMENTS_TARGET": "p:3", "PI_GRPC_PORT": "70000", "REDIS_URL": "http://x"}
    with pytest.raises(ConfigError) as info:
        TransactionsSettings.from_env(env)
    text = str(info.value)
    for name in (
        "PI_GRPC_PORT",
        "DATABASE_URL",
        "REDIS_URL",
        "PI_SERVICE_TOKEN",
        "PI_MASTER_KEYS",
    ):
        assert name in text
    # Only auth, which serves the admin API, needs the admin token.
    assert "PI_ADMIN_TOKEN" not in text
    assert len(info.value.problems) == 5


def test_no_secret_in_repr() -> None:
    env = {**required_environ(), "DATABASE_URL": "postgresql://pi:hunter2@db/pi"}
    text = repr(TransactionsSettings.from_env(env))
    assert "payments_target='127.0.0.1:50053'" in text
    assert "hunter2" not in text
    for secret in (env["PI_ADMIN_TOKEN"], env["PI_SERVICE_TOKEN"], env["PI_MASTER_KEYS"][2:]):
        assert secret not in text


def test_it_reads_its_own_variables_and_no_other_service_s() -> None:
    assert variables_read(TransactionsSettings, required_environ()) == {
        *COMMON_VARIABLES,
        "PI_PAYMENTS_TARGET",
    }


def test_the_other_services_variables_are_ignored() -> None:
    base = required_environ()
    # Invalid for auth, which would refuse to start over it: no concern of this service.
    env = {**base, "PI_TOKEN_TTL_SECONDS": "3600", "PI_TRANSACTIONS_TARGET": "elsewhere:2"}
    settings = TransactionsSettings.from_env(env)
    assert settings == TransactionsSettings.from_env(base)
    assert not hasattr(settings, "token_ttl_seconds")
    assert not hasattr(settings, "transactions_target")
