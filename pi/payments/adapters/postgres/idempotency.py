"""Idempotency keys of the payment service on PostgreSQL, on the platform's `Idempotency`
(claim, queued claim, complete, reject reuse), plus what CreatePayment's two units need
beyond it: the key's response read under lock (T2's locked path), and replaced only if
the key still holds the pending one (T2's optimistic path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from pi.payments.adapters.postgres.responses import (
    decode_create,
    decode_payment,
    decode_refund_result,
    encode_create,
    encode_payment,
    encode_refund_result,
)
from pi.payments.adapters.postgres.tables import idempotency_keys
from pi.payments.app.requests import (
    CreateResponse,
    FinalPayment,
    PendingPayment,
    RefundResult,
    RequestKey,
)
from pi.payments.domain import Payment
from pi.platform.db.idempotency import Claim, Idempotency
from pi.platform.db.statements import Conn, Statement
from pi.platform.kernel.units import Mode

if TYPE_CHECKING:
    from pi.payments.adapters.postgres.uow import PostgresPaymentsUnit

__all__ = ["PostgresIdempotencyKeys"]

_KEY = sa.and_(
    idempotency_keys.c.scope == sa.bindparam("p_scope"),
    idempotency_keys.c.operation == sa.bindparam("p_operation"),
    idempotency_keys.c.key == sa.bindparam("p_key"),
)
_LOCK_RESPONSE = Statement(sa.select(idempotency_keys.c.response).where(_KEY).with_for_update())
# The UPDATE locks the key's row, so of two requests finishing one key the second waits
# and then finds the pending response gone.
_REPLACE_RESPONSE = Statement(
    idempotency_keys.update()
    .where(_KEY)
    .values(response=sa.bindparam("p_response", type_=idempotency_keys.c.response.type))
    .where(
        idempotency_keys.c.response == sa.bindparam("p_old", type_=idempotency_keys.c.response.type)
    )
)


def _claim(request: RequestKey) -> Claim:
    return Claim(request.scope, request.operation, request.key, request.fingerprint)


class PostgresIdempotencyKeys:
    def __init__(self, unit: PostgresPaymentsUnit, idempotency: Idempotency) -> None:
        self._unit = unit
        self._idempotency = idempotency

    async def claim_create(
        self, request: RequestKey, pending: PendingPayment
    ) -> CreateResponse | None:
        if request.key is None:
            return None
        unit = self._unit
        response = encode_create(pending)
        if unit.mode is Mode.OPTIMISTIC:
            queued = self._idempotency.queue_claim(
                unit,
                request.scope,
                request.operation,
                request.key,
                request.fingerprint,
                response=response,
            )
            if queued.inserted is not None:
                unit.expect(queued.inserted, "the idempotency key is taken")
            return None
        claim = await self._idempotency.claim(
            await unit.connection(),
            request.scope,
            request.operation,
            request.key,
            request.fingerprint,
            response=response,
        )
        return None if claim.replay is None else decode_create(claim.replay)

    async def create_response(
        self, request: RequestKey, *, seen: PendingPayment
    ) -> CreateResponse | None:
        if request.key is None:
            return None
        if not self._unit.locking:
            return seen
        row = await self._unit.read(_LOCK_RESPONSE, _key_params(request))
        return None if row is None or row.response is None else decode_create(bytes(row.response))

    async def finish_create(
        self, request: RequestKey, pending: PendingPayment, final: FinalPayment
    ) -> None:
        if request.key is None:
            return
        unit = self._unit
        if unit.locking:
            await self._idempotency.complete(
                await unit.connection(), _claim(request), encode_create(final)
            )
            return
        params = {
            **_key_params(request),
            "p_old": encode_create(pending),
            "p_response": encode_create(final),
        }
        unit.expect(unit.hit(_REPLACE_RESPONSE, params), "a duplicate request finished the key")

    async def claim_payment(self, request: RequestKey) -> Payment | None:
        replay = await self._claim_locked(request)
        return None if replay is None else decode_payment(replay)

    async def claim_refund(self, request: RequestKey) -> RefundResult | None:
        replay = await self._claim_locked(request)
        return None if replay is None else decode_refund_result(replay)

    async def complete(self, request: RequestKey, response: Payment | RefundResult) -> None:
        if request.key is None:
            return
        encoded = (
            encode_refund_result(response)
            if isinstance(response, RefundResult)
            else encode_payment(response)
        )
        await self._idempotency.complete(await self._locked_connection(), _claim(request), encoded)

    async def reject_reuse(self, request: RequestKey) -> None:
        if request.key is None:
            return
        args = (request.scope, request.operation, request.key, request.fingerprint)
        if self._unit.locking:
            await self._idempotency.reject_reuse(await self._unit.connection(), *args)
            return
        async with self._unit.reading() as conn:
            await self._idempotency.reject_reuse(conn, *args)

    async def _claim_locked(self, request: RequestKey) -> bytes | None:
        if request.key is None:
            return None
        claim = await self._idempotency.claim(
            await self._locked_connection(),
            request.scope,
            request.operation,
            request.key,
            request.fingerprint,
        )
        return claim.replay

    async def _locked_connection(self) -> Conn:
        if not self._unit.locking:
            raise RuntimeError("this key is claimed and completed in a LOCKED unit")
        return await self._unit.connection()


def _key_params(request: RequestKey) -> dict[str, str | None]:
    return {"p_scope": request.scope, "p_operation": request.operation, "p_key": request.key}
