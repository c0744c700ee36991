"""`python -m pi.<service> [serve | migrate]`: the command line the services share."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pi.platform.config import ServiceSettings
from tests.support.processes import run_cli, service_environ, unreachable


@pytest.fixture(params=["transactions", "payments"])
def service(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def environ(service: str, settings_factory: Callable[..., ServiceSettings]) -> dict[str, str]:
    nobody = unreachable()  # no other service is running
    return service_environ(
        settings_factory(service),
        PI_AUTH_TARGET=nobody,
        PI_TRANSACTIONS_TARGET=nobody,
        PI_PAYMENTS_TARGET=nobody,
    )


def test_serving_refuses_an_unmigrated_database(service: str, environ: dict[str, str]) -> None:
    result = run_cli(service, environ)
    assert result.returncode != 0
    assert f"python -m pi.{service} migrate" in result.stderr


def test_migrate_is_repeatable(service: str, environ: dict[str, str]) -> None:
    assert run_cli(service, environ, "migrate").returncode == 0
    again = run_cli(service, environ, "migrate")
    assert again.returncode == 0, again.stderr
