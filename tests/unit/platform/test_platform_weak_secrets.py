"""Finding 13: weak admin/service tokens and master keys are refused outside development."""

import base64
import secrets

import pytest

from pi.platform.config import ConfigError
from tests.support.settings import SETTINGS_TYPES, required_environ


@pytest.fixture(params=sorted(SETTINGS_TYPES))
def service(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _problems(service: str, **env: str) -> list[str]:
    try:
        SETTINGS_TYPES[service].from_env({**required_environ(), **env})
    except ConfigError as error:
        return error.problems
    return []


@pytest.mark.parametrize(
    "weak",
    ["admin", "changeme-changeme", "password" * 5, "a" * 64, "0123456789" * 4],
)
def test_short_or_low_entropy_tokens_are_refused_in_production(service: str, weak: str) -> None:
    for name in ("PI_ADMIN_TOKEN", "PI_SERVICE_TOKEN"):
        problems = _problems(service, **{name: weak})
        assert any(p.startswith(f"{name} is too weak") for p in problems), problems
        assert all(weak not in p for p in problems)  # never echoed


def test_a_master_key_that_is_not_random_is_refused_in_production(service: str) -> None:
    for key in (bytes(32), b"0123456789abcdef" * 2, b"\x01\x02" * 16):
        encoded = base64.b64encode(key).decode()
        problems = _problems(service, PI_MASTER_KEYS=f"1={encoded}")
        assert any("key version 1 does not look random" in p for p in problems), problems


def test_generated_secrets_start_in_production(service: str) -> None:
    settings = SETTINGS_TYPES[service].from_env(
        {
            **required_environ(),
            "PI_ADMIN_TOKEN": secrets.token_urlsafe(32),
            "PI_SERVICE_TOKEN": secrets.token_hex(32),
        }
    )
    assert settings.environment == "production" and not settings.development


def test_explicit_development_mode_tolerates_weak_secrets(service: str) -> None:
    weak = {
        "PI_ADMIN_TOKEN": "admin",
        "PI_SERVICE_TOKEN": "service",
        "PI_MASTER_KEYS": "1=" + base64.b64encode(bytes(32)).decode(),
    }
    assert _problems(service, **weak)  # production is the default
    settings = SETTINGS_TYPES[service].from_env(
        {**required_environ(), **weak, "PI_ENVIRONMENT": "development"}
    )
    assert settings.development


def test_an_unknown_environment_is_a_problem(service: str) -> None:
    assert any("PI_ENVIRONMENT" in p for p in _problems(service, PI_ENVIRONMENT="staging"))
