"""Idempotency keys in memory: typed responses where PostgreSQL holds their encodings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pi.payments.adapters.memory.state import StoredKey
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
from pi.platform.kernel.idempotency import check_same_request, in_progress
from pi.platform.kernel.units import Conflict, Mode

if TYPE_CHECKING:
    from pi.payments.adapters.memory.units import MemoryPaymentsUnit

__all__ = ["MemoryKeys"]


class MemoryKeys:
    """Idempotency keys holding typed responses (PostgreSQL holds their encodings)."""

    def __init__(self, unit: MemoryPaymentsUnit) -> None:
        self._unit = unit

    async def claim_create(
        self, request: RequestKey, pending: PendingPayment
    ) -> CreateResponse | None:
        stored = self._claim(request, pending)
        if stored is None:
            return None
        assert isinstance(stored, PendingPayment | FinalPayment)
        return stored

    async def create_response(
        self, request: RequestKey, *, seen: PendingPayment
    ) -> CreateResponse | None:
        if request.key is None:
            return None
        if self._unit.optimistic:
            return seen
        stored = self._stored(request)
        if stored is None or stored.response is None:
            return None
        assert isinstance(stored.response, PendingPayment | FinalPayment)
        return stored.response

    async def finish_create(
        self, request: RequestKey, pending: PendingPayment, final: FinalPayment
    ) -> None:
        stored = self._stored(request)
        if stored is None:
            return
        self._unit.writable()
        if self._unit.optimistic and stored.response != pending:
            raise Conflict("a duplicate request finished the key")
        stored.response = final

    async def claim_change(
        self, request: RequestKey, pending: PendingChange
    ) -> ChangeResponse | None:
        replay = self._claim(request, pending, locked=True)
        assert replay is None or isinstance(replay, PendingChange | Payment | RefundResult)
        return replay

    async def change_response(self, request: RequestKey) -> ChangeResponse | None:
        stored = self._stored(request)
        if stored is None or stored.response is None:
            return None
        assert isinstance(stored.response, PendingChange | Payment | RefundResult)
        return stored.response

    async def release(self, request: RequestKey) -> None:
        if request.key is not None:
            self._unit.writable().keys.pop((request.scope, request.operation, request.key), None)

    async def complete(self, request: RequestKey, response: Payment | RefundResult) -> None:
        stored = self._stored(request)
        if stored is not None:
            self._unit.writable()
            stored.response = response

    async def reject_reuse(self, request: RequestKey) -> None:
        stored = self._stored(request)
        if stored is not None:
            check_same_request(stored.request_hash, request.fingerprint, request.key)

    def _stored(self, request: RequestKey) -> StoredKey | None:
        if request.key is None:
            return None
        return self._unit.state.keys.get((request.scope, request.operation, request.key))

    def _claim(
        self,
        request: RequestKey,
        response: PendingPayment | PendingChange,
        *,
        locked: bool = False,
    ) -> CreateResponse | ChangeResponse | None:
        if request.key is None:
            return None
        if locked and self._unit.mode is not Mode.LOCKED:
            raise RuntimeError("this key is claimed and completed in a LOCKED unit")
        keys = self._unit.writable().keys
        stored = keys.get((request.scope, request.operation, request.key))
        if stored is None:
            now = datetime.now(UTC)
            keys[(request.scope, request.operation, request.key)] = StoredKey(
                request.fingerprint, response, now
            )
            return None
        if self._unit.optimistic:  # PostgreSQL would find out at the commit
            raise Conflict("the idempotency key is taken")
        check_same_request(stored.request_hash, request.fingerprint, request.key)
        if stored.response is None:
            raise in_progress()
        return stored.response
