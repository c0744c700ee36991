"""CreateMerchant: register a merchant with its first API key (admin only).

Idempotent under the admin scope: a retry with the same key replays the first response,
secret included (see `idempotency`).
"""

from __future__ import annotations

from pi.auth.app.api_keys import new_api_key
from pi.auth.app.idempotency import SealedResponses, replayed
from pi.auth.app.payloads import registration_from_json, registration_to_json
from pi.auth.app.ports import Clock, IdempotentRequest, SecretHasher, UnitOfWork, UnitsOfWork
from pi.auth.domain import merchants
from pi.auth.domain.merchants import Merchant, MerchantRegistration
from pi.platform.kernel.principal import Principal, require_admin
from pi.platform.kernel.text import printable_text
from pi.platform.kernel.units import optimistically

ADMIN_SCOPE = "admin"
OP_CREATE_MERCHANT = "pi.auth.v1.AuthService/CreateMerchant"


class CreateMerchant:
    def __init__(
        self, units: UnitsOfWork, hasher: SecretHasher, sealed: SealedResponses, clock: Clock
    ) -> None:
        self._units = units
        self._hasher = hasher
        self._sealed = sealed
        self._clock = clock

    async def __call__(
        self,
        principal: Principal,
        display_name: str,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> MerchantRegistration:
        require_admin(principal)
        name = printable_text(display_name, "display_name", merchants.MAX_DISPLAY_NAME)
        request = IdempotentRequest(ADMIN_SCOPE, OP_CREATE_MERCHANT, idempotency_key, fingerprint)
        now = self._clock()

        async def register(unit: UnitOfWork) -> MerchantRegistration:
            async with unit:
                merchant = Merchant(merchants.new_merchant_id(), name, now)
                first = new_api_key(self._hasher, merchant.id, merchants.FIRST_KEY_NAME, now)
                result = MerchantRegistration(merchant, first.created.api_key, first.created.secret)
                response = self._sealed.seal(request, registration_to_json(result))
                prior = await unit.idempotency.claim(request, response)
                if prior is not None:
                    return registration_from_json(
                        self._sealed.open(request, replayed(request, prior))
                    )
                unit.merchants.add(merchant)
                unit.api_keys.add(first.created.api_key, first.secret_hash)
                await unit.commit()
                return result

        return await optimistically(self._units, register)
