"""`PaymentsSettings`: the common variables plus PI_TRANSACTIONS_TARGET and the sandbox
processor's ledger and faults, and nothing of the other services' (auth's token lifetime,
transactions' target for this service)."""

import pytest

from pi.payments.settings import PaymentsSettings
from pi.platform.config import ConfigError
from tests.support.settings import COMMON_VARIABLES, required_environ, variables_read


def test_the_transaction_service_is_found_on_its_default_port() -> None:
    settings = PaymentsSettings.from_env(required_environ())
    assert settings.transactions_target == "127.0.0.1:50052"
    assert (settings.grpc_port, settings.db_schema) == (50053, "payments")


def test_the_transactions_target_is_read() -> None:
    env = {**required_environ(), "PI_TRANSACTIONS_TARGET": "ipv4:10.0.0.1:50052,10.0.0.2:50052"}
    settings = PaymentsSettings.from_env(env)
    assert settings.transactions_target == "ipv4:10.0.0.1:50052,10.0.0.2:50052"


def test_every_problem_is_reported_at_once() -> None:
    env = {
        "PI_TRANSACTIONS_TARGET": "t:2",
        "DATABASE_URL": "sqlite:///x.db",
        "PI_ADMIN_TOKEN": "same",
        "PI_SERVICE_TOKEN": "same",
        "PI_MASTER_KEYS": "1=!!!!",
        "PI_REVOCATION_POLL_SECONDS": "forever",
    }
    with pytest.raises(ConfigError) as info:
        PaymentsSettings.from_env(env)
    text = str(info.value)
    for name in ("DATABASE_URL", "PI_MASTER_KEYS", "PI_REVOCATION_POLL_SECONDS", "must differ"):
        assert name in text
    # + both tokens too weak for production
    assert len(info.value.problems) == 6


def test_no_secret_in_repr() -> None:
    env = {**required_environ(), "REDIS_URL": "rediss://:hunter2@cache:6380/0"}
    text = repr(PaymentsSettings.from_env(env))
    assert "transactions_target='127.0.0.1:50052'" in text
    assert "hunter2" not in text
    for secret in (env["PI_ADMIN_TOKEN"], env["PI_SERVICE_TOKEN"], env["PI_MASTER_KEYS"][2:]):
        assert secret not in text


def test_it_reads_its_own_variables_and_no_other_service_s() -> None:
    assert variables_read(PaymentsSettings, required_environ()) == {
        *COMMON_VARIABLES,
        "PI_TRANSACTIONS_TARGET",
        "PI_SANDBOX_LEDGER",
        "PI_SANDBOX_UNKNOWN_PERCENT",
        "PI_SANDBOX_CRASH_PERCENT",
        "PI_CARD_FINGERPRINT_KEY",
    }


def test_the_sandbox_keeps_its_ledger_in_memory_and_injects_no_fault_by_default() -> None:
    settings = PaymentsSettings.from_env(required_environ())
    assert settings.sandbox_ledger == "memory"
    assert (settings.sandbox_unknown_percent, settings.sandbox_crash_percent) == (0, 0)


def test_the_sandbox_ledger_and_faults_are_read_and_checked() -> None:
    env = {
        **required_environ(),
        "PI_SANDBOX_LEDGER": "postgres",
        "PI_SANDBOX_UNKNOWN_PERCENT": "10",
        "PI_SANDBOX_CRASH_PERCENT": "2",
    }
    settings = PaymentsSettings.from_env(env)
    assert settings.sandbox_ledger == "postgres"
    assert (settings.sandbox_unknown_percent, settings.sandbox_crash_percent) == (10, 2)
    bad = {**env, "PI_SANDBOX_LEDGER": "redis", "PI_SANDBOX_CRASH_PERCENT": "101"}
    with pytest.raises(ConfigError) as info:
        PaymentsSettings.from_env(bad)
    assert [p.split(" ")[0] for p in info.value.problems] == [
        "PI_SANDBOX_LEDGER",
        "PI_SANDBOX_CRASH_PERCENT",
    ]


def test_the_other_services_variables_are_ignored() -> None:
    base = required_environ()
    # Invalid for auth, which would refuse to start over it: no concern of this service.
    env = {**base, "PI_TOKEN_TTL_SECONDS": "3600", "PI_PAYMENTS_TARGET": "elsewhere:3"}
    settings = PaymentsSettings.from_env(env)
    assert settings == PaymentsSettings.from_env(base)
    assert not hasattr(settings, "token_ttl_seconds")
    assert not hasattr(settings, "payments_target")


def test_the_card_fingerprint_key_has_its_own_lineage() -> None:
    """Finding 7: with PI_CARD_FINGERPRINT_KEY the card key no longer depends on any
    master key, so every master key can rotate and retire while fingerprints stay."""
    import base64
    import secrets

    from pi.payments.bootstrap import derive_keys
    from pi.platform.security.crypto import MasterKeys

    key = secrets.token_bytes(32)
    env = {**required_environ(), "PI_CARD_FINGERPRINT_KEY": base64.b64encode(key).decode()}
    settings = PaymentsSettings.from_env(env)
    assert settings.card_fingerprint_key == key
    assert "PI_CARD_FINGERPRINT_KEY" not in repr(settings) and key.hex() not in repr(settings)
    old = MasterKeys({1: secrets.token_bytes(32)})
    new = MasterKeys({2: secrets.token_bytes(32)})
    assert derive_keys(old, key)[0] == derive_keys(new, key)[0] == key
    assert derive_keys(old)[0] != derive_keys(new)[0]  # the fallback follows the master key
    with pytest.raises(ConfigError):
        PaymentsSettings.from_env({**env, "PI_CARD_FINGERPRINT_KEY": "c2hvcnQ="})
