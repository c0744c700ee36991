"""Settings helpers for tests.

`SETTINGS_TYPES`: each service's settings class by service name, for tests that go over
all three (`settings_factory(service)`, the Kubernetes secrets check).
`required_environ()`: the least a service starts with (fresh secrets each call).
`variables_read(settings_type, environ)`: the names `from_env` looked up, to check that a
service reads its own variables and no other service's.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator, Mapping

from pi.auth.settings import AuthSettings
from pi.payments.settings import PaymentsSettings
from pi.platform.config import ServiceSettings
from pi.transactions.settings import TransactionsSettings

SETTINGS_TYPES: Mapping[str, type[ServiceSettings]] = {
    settings.service: settings
    for settings in (AuthSettings, TransactionsSettings, PaymentsSettings)
}

COMMON_VARIABLES = frozenset(
    {
        "PI_GRPC_HOST",
        "PI_GRPC_PORT",
        "DATABASE_URL",
        "PI_DB_SCHEMA",
        "PI_DB_POOL_SIZE",
        "PI_DB_COMMIT_GROUPS",
        "REDIS_URL",
        "PI_ADMIN_TOKEN",
        "PI_SERVICE_TOKEN",
        "PI_MASTER_KEYS",
        "PI_TLS_CA",
        "PI_TLS_CERT",
        "PI_TLS_KEY",
        "PI_HEALTH_PORT",
        "PI_DB_SERVICE_ROLE",
        "PI_DB_SERVICE_ROLE_PASSWORD",
        "PI_JWT_ISSUER",
        "PI_JWT_AUDIENCE",
        "PI_AUTH_TARGET",
        "PI_REVOCATION_POLL_SECONDS",
        "PI_REVOCATION_MAX_STALENESS_SECONDS",
        "PI_ENVIRONMENT",
        "PI_RATE_LIMIT_PER_MERCHANT",
        "PI_RATE_LIMIT_PER_CLIENT_ADDRESS",
        "PI_LOG_LEVEL",
    }
)
"""What every service reads (the README's Configuration table)."""


def required_environ() -> dict[str, str]:
    return {
        "DATABASE_URL": "postgresql://pi@db.internal:5432/pi",
        "PI_ADMIN_TOKEN": "adm_" + secrets.token_urlsafe(24),
        "PI_SERVICE_TOKEN": "svc_" + secrets.token_urlsafe(24),
        "PI_MASTER_KEYS": "1=" + base64.b64encode(secrets.token_bytes(32)).decode(),
    }


class _Recording(Mapping[str, str]):
    """An environment that notes every name looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.looked_up: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.looked_up.add(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def variables_read(settings_type: type[ServiceSettings], environ: Mapping[str, str]) -> set[str]:
    recording = _Recording(environ)
    settings_type.from_env(recording)
    return recording.looked_up
