"""Idempotency keys of the payment service on PostgreSQL, on the platform's `Idempotency`:
claim (queued in an optimistic unit), complete and reject reuse, and for CreatePayment's
settlement the key's response read under lock (T2's locked path) or replaced only if the
key still holds the pending one (T2's optimistic path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from pi.payments.adapters.postgres.responses import (
    decode_change,
    decode_create,
    encode_change,
    encode_create,
)
from pi.payments.adapters.postgres.tables import idempotency_keys
from pi.payments.app.requests import (
    ChangeResponse,
    CreateResponse,
    FinalPayment,
    PendingChange,
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


_k = idempotency_keys
# A declined capture or void gives its key back, as a claim rolled back would.
_RELEASE = Statement(
    sa.delete(_k).where(
        _k.c.scope == sa.bindparam("p_scope"),
        _k.c.operation == sa.bindparam("p_operation"),
        _k.c.key == sa.bindparam("p_key"),
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
        stored = await self._idempotency.locked_response(
            await self._unit.connection(), request.scope, request.operation, request.key
        )
        return None if stored is None else decode_create(stored)

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
        replaced = self._idempotency.queue_replace(
            unit,
            request.scope,
            request.operation,
            request.key,
            encode_create(pending),
            encode_create(final),
        )
        unit.expect(replaced, "a duplicate request finished the key")

    async def claim_change(
        self, request: RequestKey, pending: PendingChange
    ) -> ChangeResponse | None:
        if request.key is None:
            return None
        claim = await self._idempotency.claim(
            await self._locked_connection(),
            request.scope,
            request.operation,
            request.key,
            request.fingerprint,
            response=encode_change(pending),
        )
        return None if claim.replay is None else decode_change(claim.replay)

    async def change_response(self, request: RequestKey) -> ChangeResponse | None:
        if request.key is None:
            return None
        stored = await self._idempotency.locked_response(
            await self._locked_connection(), request.scope, request.operation, request.key
        )
        return None if stored is None else decode_change(stored)

    async def complete(self, request: RequestKey, response: Payment | RefundResult) -> None:
        if request.key is None:
            return
        encoded = encode_change(response)
        await self._idempotency.complete(await self._locked_connection(), _claim(request), encoded)

    async def release(self, request: RequestKey) -> None:
        if request.key is None:
            return
        await self._locked_connection()
        self._unit.execute(
            _RELEASE,
            {"p_scope": request.scope, "p_operation": request.operation, "p_key": request.key},
        )

    async def reject_reuse(self, request: RequestKey) -> None:
        if request.key is None:
            return
        args = (request.scope, request.operation, request.key, request.fingerprint)
        if self._unit.locking:
            await self._idempotency.reject_reuse(await self._unit.connection(), *args)
            return
        async with self._unit.reading() as conn:
            await self._idempotency.reject_reuse(conn, *args)

    async def _locked_connection(self) -> Conn:
        if not self._unit.locking:
            raise RuntimeError("this key is claimed and completed in a LOCKED unit")
        return await self._unit.connection()
