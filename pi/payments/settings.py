"""The payment service's settings: the platform's common ones plus where the transaction
service answers (the ledger the outbox delivers movements to) and the card fingerprint
key (PI_CARD_FINGERPRINT_KEY: base64 of 32 random bytes; its own lineage, apart from the
master keys, so that they can rotate and retire while fingerprints stay comparable).

`PaymentsSettings.from_env()` reads only what this service uses; see
`pi.platform.config` for the common variables and how problems are reported.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pi.platform.config import MASTER_KEY_BYTES, Environment, ServiceSettings, default_target


@dataclass(frozen=True, kw_only=True)
class PaymentsSettings(ServiceSettings):
    """The payment service's environment; `transactions_target` is PI_TRANSACTIONS_TARGET."""

    service: ClassVar[str] = "payments"

    transactions_target: str = default_target("transactions")
    #: None: derived from the oldest master key (deployments from before the key existed).
    card_fingerprint_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def _read(cls, env: Environment) -> dict[str, Any]:
        return {
            **super()._read(env),
            "transactions_target": env.target("transactions"),
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
