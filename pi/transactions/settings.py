"""The transaction service's settings: the platform's common ones plus where the payment
service answers (cancellations, and the facts the publisher pushes to it).

`TransactionsSettings.from_env()` reads only what this service uses; see
`pi.platform.config` for the common variables and how problems are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pi.platform.config import Environment, ServiceSettings, default_target


@dataclass(frozen=True, kw_only=True)
class TransactionsSettings(ServiceSettings):
    """The transaction service's environment; `payments_target` is PI_PAYMENTS_TARGET."""

    service: ClassVar[str] = "transactions"

    payments_target: str = default_target("payments")

    @classmethod
    def _read(cls, env: Environment) -> dict[str, Any]:
        return {**super()._read(env), "payments_target": env.target("payments")}
