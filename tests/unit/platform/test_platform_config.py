"""What every service's settings class inherits from `ServiceSettings`: the common
variables, their defaults and checks, one `ConfigError` for every problem, no secret in
repr/str. Run on all three classes; each service's own variables are tested in
tests/unit/<service>/test_<service>_settings.py."""

import base64
import os

import pytest

from pi.platform.config import (
    SERVICE_PORTS,
    ConfigError,
    ServiceSettings,
    default_target,
    parse_master_keys,
)
from tests.support.settings import SETTINGS_TYPES

KEY = base64.b64encode(os.urandom(32)).decode()
BASE = {
    "DATABASE_URL": "postgresql://pi@db.internal:5432/pi",
    "PI_ADMIN_TOKEN": "admin-secret-token",
    "PI_SERVICE_TOKEN": "service-secret-token",
    "PI_MASTER_KEYS": f"1={KEY}",
    # Short, readable tokens: the production strength rules have tests of their own.
    "PI_ENVIRONMENT": "development",
}


@pytest.fixture(params=sorted(SETTINGS_TYPES))
def settings_type(request: pytest.FixtureRequest) -> type[ServiceSettings]:
    return SETTINGS_TYPES[request.param]


def test_the_default_ports_and_targets_are_the_documented_ones() -> None:
    assert dict(SERVICE_PORTS) == {"auth": 50051, "transactions": 50052, "payments": 50053}
    assert list(SERVICE_PORTS) == ["auth", "transactions", "payments"]  # port order
    assert default_target("payments") == "127.0.0.1:50053"


def test_defaults(settings_type: type[ServiceSettings]) -> None:
    settings = settings_type.from_env(BASE)
    service = settings_type.service
    assert settings.service == service
    assert (settings.grpc_host, settings.grpc_port) == ("127.0.0.1", SERVICE_PORTS[service])
    assert settings.database_url == "postgresql://pi@db.internal:5432/pi"
    assert settings.db_schema == service
    assert settings.db_pool_size == 20
    assert settings.redis_url is None
    assert settings.jwt_issuer == "pi-platform"
    assert settings.jwt_audience == "pi-api"
    assert settings.auth_target == "127.0.0.1:50051"
    assert settings.revocation_poll_seconds == 2.0
    assert settings.rate_limit_per_merchant == 100
    assert settings.log_level == "INFO"
    assert settings.master_keys == {1: base64.b64decode(KEY)}


def test_every_common_variable_is_read(settings_type: type[ServiceSettings]) -> None:
    env = {
        **BASE,
        "PI_GRPC_HOST": "0.0.0.0",
        "PI_GRPC_PORT": "6000",
        "DATABASE_URL": "postgresql://root@127.0.0.1:5432/test",
        "PI_DB_SCHEMA": "t_abc",
        "PI_DB_POOL_SIZE": "7",
        "PI_DB_COMMIT_GROUPS": "0",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "PI_JWT_ISSUER": "iss",
        "PI_JWT_AUDIENCE": "aud",
        "PI_AUTH_TARGET": "a:1",
        "PI_REVOCATION_POLL_SECONDS": "0.5",
        "PI_RATE_LIMIT_PER_MERCHANT": "25",
        "PI_LOG_LEVEL": "debug",
    }
    s = settings_type.from_env(env)
    assert (s.grpc_host, s.grpc_port, s.listen_address) == ("0.0.0.0", 6000, "0.0.0.0:6000")
    assert s.database_url == "postgresql://root@127.0.0.1:5432/test"
    assert (s.db_schema, s.db_pool_size, s.db_commit_groups) == ("t_abc", 7, 0)
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert (s.jwt_issuer, s.jwt_audience) == ("iss", "aud")
    assert s.auth_target == "a:1"
    assert s.revocation_poll_seconds == 0.5
    assert s.rate_limit_per_merchant == 25
    assert s.log_level == "DEBUG"


def test_blank_values_count_as_unset_and_values_are_stripped(
    settings_type: type[ServiceSettings],
) -> None:
    s = settings_type.from_env({**BASE, "PI_GRPC_PORT": "  ", "PI_LOG_LEVEL": " warn "})
    assert s.grpc_port == SERVICE_PORTS[settings_type.service]
    assert s.log_level == "WARNING"


def test_missing_required_variables_are_all_named_in_one_error(
    settings_type: type[ServiceSettings],
) -> None:
    with pytest.raises(ConfigError) as info:
        settings_type.from_env({})
    text = str(info.value)
    required = ["DATABASE_URL", "PI_SERVICE_TOKEN", "PI_MASTER_KEYS"]
    if settings_type.serves_admin:
        required.append("PI_ADMIN_TOKEN")
    else:
        assert "PI_ADMIN_TOKEN" not in text
    for name in required:
        assert name in text
    assert len(info.value.problems) == len(required)


def test_without_database_url_the_error_points_at_make_run(
    settings_type: type[ServiceSettings],
) -> None:
    env = {key: value for key, value in BASE.items() if key != "DATABASE_URL"}
    with pytest.raises(ConfigError) as info:
        settings_type.from_env(env)
    (problem,) = info.value.problems
    assert "DATABASE_URL is required" in problem
    assert "`make run`" in problem and "embedded PostgreSQL" in problem


@pytest.mark.parametrize(
    "url", ["sqlite:///var/payments.db", "sqlite+aiosqlite:///x.db", "mysql://x/y", "var/db"]
)
def test_only_postgresql_urls_are_accepted(url: str, settings_type: type[ServiceSettings]) -> None:
    with pytest.raises(ConfigError, match="must be a postgresql:// URL"):
        settings_type.from_env({**BASE, "DATABASE_URL": url})


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://pi@db/pi",
        "postgres://pi@db/pi",
        "postgresql+psycopg://pi@db/pi",
        "postgresql://postgres@/pi?host=/var/lib/pi/postgres&port=5432",
    ],
)
def test_postgresql_urls_are_accepted(url: str, settings_type: type[ServiceSettings]) -> None:
    assert settings_type.from_env({**BASE, "DATABASE_URL": url}).database_url == url


def test_invalid_common_values_are_all_reported(settings_type: type[ServiceSettings]) -> None:
    env = {
        **BASE,
        "PI_GRPC_PORT": "http",
        "DATABASE_URL": "mysql://x/y",
        "PI_DB_SCHEMA": "Robert'); DROP",
        "PI_DB_POOL_SIZE": "0",
        "PI_DB_COMMIT_GROUPS": "-1",
        "REDIS_URL": "http://x",
        "PI_REVOCATION_POLL_SECONDS": "-1",
        "PI_RATE_LIMIT_PER_MERCHANT": "lots",
        "PI_LOG_LEVEL": "LOUD",
    }
    with pytest.raises(ConfigError) as info:
        settings_type.from_env(env)
    names = [problem.split()[0] for problem in info.value.problems]
    assert names == [
        "PI_GRPC_PORT",
        "DATABASE_URL",
        "PI_DB_SCHEMA",
        "PI_DB_POOL_SIZE",
        "PI_DB_COMMIT_GROUPS",
        "REDIS_URL",
        "PI_REVOCATION_POLL_SECONDS",
        "PI_RATE_LIMIT_PER_MERCHANT",
        "PI_LOG_LEVEL",
    ]


def test_a_rate_limit_of_zero_disables_it_and_negative_or_huge_ones_are_refused(
    settings_type: type[ServiceSettings],
) -> None:
    env = {**BASE, "PI_RATE_LIMIT_PER_MERCHANT": "0"}
    assert settings_type.from_env(env).rate_limit_per_merchant == 0
    for bad in ("-1", "1000001", "2.5"):
        with pytest.raises(ConfigError, match="PI_RATE_LIMIT_PER_MERCHANT"):
            settings_type.from_env({**BASE, "PI_RATE_LIMIT_PER_MERCHANT": bad})


def test_admin_and_service_tokens_must_differ(settings_type: type[ServiceSettings]) -> None:
    env = {**BASE, "PI_SERVICE_TOKEN": BASE["PI_ADMIN_TOKEN"]}
    with pytest.raises(ConfigError, match="must differ"):
        settings_type.from_env(env)


def test_tokens_must_be_sendable_as_a_header(settings_type: type[ServiceSettings]) -> None:
    with pytest.raises(ConfigError) as info:
        settings_type.from_env({**BASE, "PI_ADMIN_TOKEN": "a b", "PI_SERVICE_TOKEN": "s\x00t"})
    assert len(info.value.problems) == 2
    assert "a b" not in str(info.value)


def test_secrets_are_neither_in_repr_nor_in_str(settings_type: type[ServiceSettings]) -> None:
    env = {
        **BASE,
        "DATABASE_URL": "postgresql://pi:db-password@db/pi",
        "REDIS_URL": "redis://:redis-password@cache:6379/0",
    }
    settings = settings_type.from_env(env)
    for text in (repr(settings), str(settings), f"{settings}"):
        assert settings_type.__name__ in text
        for secret in (
            "admin-secret-token",
            "service-secret-token",
            KEY,
            "db-password",
            "redis-password",
        ):
            assert secret not in text


def test_settings_are_frozen_and_compare_by_value(settings_type: type[ServiceSettings]) -> None:
    s = settings_type.from_env(BASE)
    with pytest.raises(AttributeError):
        s.grpc_port = 1  # type: ignore[misc]
    assert s == settings_type.from_env(BASE)
    assert hash(s) == hash(settings_type.from_env(BASE))


def test_master_keys_parse_several_versions_std_and_urlsafe_base64() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    raw = (
        f"1={base64.b64encode(k1).decode()}, 2={base64.urlsafe_b64encode(k2).decode().rstrip('=')}"
    )
    assert parse_master_keys(raw) == {1: k1, 2: k2}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "no keys"),
        ("abc", "form"),
        ("x=" + KEY, "not an integer"),
        ("0=" + KEY, "positive"),
        (f"1={KEY},1={KEY}", "twice"),
        ("1=!!!!", "base64"),
        ("1=" + base64.b64encode(b"short").decode(), "32 bytes"),
    ],
)
def test_bad_master_keys_are_rejected(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_master_keys(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "1=" + base64.b64encode(b"short-secret-material").decode(),
        KEY,  # the key without its "1=": base64 padding makes it look like "<version>="
        KEY.rstrip("="),  # ... or like an entry without "="
    ],
)
def test_bad_master_keys_do_not_echo_the_key_material(
    raw: str, settings_type: type[ServiceSettings]
) -> None:
    with pytest.raises(ConfigError) as info:
        settings_type.from_env({**BASE, "PI_MASTER_KEYS": raw})
    text = str(info.value)
    assert "PI_MASTER_KEYS" in text
    material = raw.removeprefix("1=").rstrip("=")
    assert not any(material[i : i + 6] in text for i in range(len(material) - 5))
