"""The payment service's settings: the platform's common ones plus where the transaction
service answers (the ledger the outbox delivers movements to) and the sandbox
processor's ledger and faults:

- `PI_SANDBOX_LEDGER`: `memory` (default; the sandbox forgets on restart) or `postgres`
  (its own schema `sandbox_processor` in this service's database, kept across restarts
  and shared by replicas);
- `PI_SANDBOX_UNKNOWN_PERCENT` (0 to 100, default 0): that share of processor calls
  answers TIMEOUT (half lose the request, half the answer);
- `PI_SANDBOX_CRASH_PERCENT` (0 to 100, default 0): after that share of approvals the
  process kills itself (SIGKILL) before recording them. For fault runs only.

`PaymentsSettings.from_env()` reads only what this service uses; see
`pi.platform.config` for the common variables and how problems are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pi.platform.config import Environment, ServiceSettings, default_target

SANDBOX_LEDGERS = ("memory", "postgres")


@dataclass(frozen=True, kw_only=True)
class PaymentsSettings(ServiceSettings):
    """The payment service's environment; `transactions_target` is PI_TRANSACTIONS_TARGET."""

    service: ClassVar[str] = "payments"

    transactions_target: str = default_target("transactions")
    sandbox_ledger: str = "memory"
    sandbox_unknown_percent: int = 0
    sandbox_crash_percent: int = 0

    @classmethod
    def _read(cls, env: Environment) -> dict[str, Any]:
        ledger = env.text("PI_SANDBOX_LEDGER", "memory").lower()
        if ledger not in SANDBOX_LEDGERS:
            env.problem(f"PI_SANDBOX_LEDGER must be one of {', '.join(SANDBOX_LEDGERS)}.")
        return {
            **super()._read(env),
            "transactions_target": env.target("transactions"),
            "sandbox_ledger": ledger,
            "sandbox_unknown_percent": env.integer("PI_SANDBOX_UNKNOWN_PERCENT", 0, 0, 100),
            "sandbox_crash_percent": env.integer("PI_SANDBOX_CRASH_PERCENT", 0, 0, 100),
        }
