"""The payment service's settings: the platform's common ones plus where the transaction
service answers (the ledger the outbox delivers movements to).

`PaymentsSettings.from_env()` reads only what this service uses; see
`pi.platform.config` for the common variables and how problems are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pi.platform.config import Environment, ServiceSettings, default_target


@dataclass(frozen=True, kw_only=True)
class PaymentsSettings(ServiceSettings):
    """The payment service's environment; `transactions_target` is PI_TRANSACTIONS_TARGET."""

    service: ClassVar[str] = "payments"

    transactions_target: str = default_target("transactions")

    @classmethod
    def _read(cls, env: Environment) -> dict[str, Any]:
        return {**super()._read(env), "transactions_target": env.target("transactions")}
