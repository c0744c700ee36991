"""The auth service's settings: the platform's common ones plus the access-token lifetime.

`AuthSettings.from_env()` reads only what auth uses; see `pi.platform.config` for the
common variables and how problems are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pi.auth.domain.tokens import MAX_TOKEN_TTL
from pi.platform.config import Environment, ServiceSettings

# The lifetime the domain caps tokens at is also the highest PI_TOKEN_TTL_SECONDS accepted,
# so a setting can never ask for more than a token will get.
MAX_TOKEN_TTL_SECONDS = int(MAX_TOKEN_TTL.total_seconds())


@dataclass(frozen=True, kw_only=True)
class AuthSettings(ServiceSettings):
    """The auth service's environment; `token_ttl_seconds` is PI_TOKEN_TTL_SECONDS."""

    service: ClassVar[str] = "auth"
    serves_admin: ClassVar[bool] = True

    token_ttl_seconds: int = MAX_TOKEN_TTL_SECONDS

    @classmethod
    def _read(cls, env: Environment) -> dict[str, Any]:
        return {
            **super()._read(env),
            "token_ttl_seconds": env.integer(
                "PI_TOKEN_TTL_SECONDS", MAX_TOKEN_TTL_SECONDS, 1, MAX_TOKEN_TTL_SECONDS
            ),
        }
