"""The payment service's settings: the platform's common ones plus where the transaction
service answers (the ledger the outbox delivers movements to) and the sandbox
processor's ledger and faults:

- `PI_SANDBOX_LEDGER`: `memory` (default; the sandbox forgets on restart) or `postgres`
  (its own schema `sandbox_processor` in this service's database, kept across restarts
  and shared by replicas);
- `PI_SANDBOX_UNKNOWN_PERCENT` (0 to 100, default 0): that share of processor calls
  answers TIMEOUT (half lose the request, half the answer);
- `PI_SANDBOX_CRASH_PERCENT` (0 to 100, default 0): after that share of approvals the
  process kills itself (SIGKILL) before recording them. For fault runs only;
- `PI_CARD_FINGERPRINT_KEY`: the card fingerprint key (base64 of 32 random bytes; its own
  lineage, apart from the master keys, so that they can rotate and retire while
  fingerprints stay comparable).

`PaymentsSettings.from_env()` reads only what this service uses; see
`pi.platform.config` for the common variables and how problems are reported.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pi.platform.config import MASTER_KEY_BYTES, Environment, ServiceSettings, default_target

SANDBOX_LEDGERS = ("memory", "postgres")


@dataclass(frozen=True, kw_only=True)
class PaymentsSettings(ServiceSettings):
    """The payment service's environment; `transactions_target` is PI_TRANSACTIONS_TARGET."""

    service: ClassVar[str] = "payments"

    transactions_target: str = default_target("transactions")
    sandbox_ledger: str = "memory"
    sandbox_unknown_percent: int = 0
    sandbox_crash_percent: int = 0
    #: None: derived from the oldest master key (deployments from before the key existed).
    card_fingerprint_key: bytes | None = field(default=None, repr=False)

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
            "card_fingerprint_key": _fingerprint_key(env),
        }


def _fingerprint_key(env: Environment) -> bytes | None:
    raw = env.get("PI_CARD_FINGERPRINT_KEY")
    if raw is None:
        return None
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        env.problem("PI_CARD_FINGERPRINT_KEY is not valid base64.")
        return None
    if len(key) != MASTER_KEY_BYTES or len(set(key)) < 16:
        env.problem(f"PI_CARD_FINGERPRINT_KEY must be {MASTER_KEY_BYTES} random bytes.")
        return None
    return key
