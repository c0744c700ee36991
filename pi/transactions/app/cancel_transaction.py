"""CancelTransaction: close a transaction on which nothing is captured (money-flow agreement)."""

from __future__ import annotations

from pi.platform.kernel.errors import FailedPrecondition
from pi.platform.kernel.principal import Principal, require_merchant
from pi.platform.kernel.units import Mode
from pi.transactions.app.apply_movements import apply_one
from pi.transactions.app.ports import Clock, PaymentLedger, UnitsOfWork
from pi.transactions.app.queries import find_transaction, require_id
from pi.transactions.app.replays import decode, encode
from pi.transactions.domain import REASON_TRANSACTION_CAPTURED, Transaction, cancellation

__all__ = ["OPERATION", "CancelTransaction"]

OPERATION = "CancelTransaction"


class CancelTransaction:
    """The payment service closes the transaction first (it refuses with
    TRANSACTION_CAPTURED if anything was captured, and voids open authorizations); then
    its cancellation movement is applied here, so the answer already shows CANCELLED.
    Cancelling a cancelled transaction returns it unchanged. If the payment service
    cannot be reached, UNAVAILABLE and nothing changed here.

    No unit of work is held open across the call to the payment service. The
    idempotency key is checked before that call and claimed with the local effect, so a
    key reused for another transaction never closes it.
    """

    def __init__(self, units: UnitsOfWork, payments: PaymentLedger, clock: Clock) -> None:
        self._units = units
        self._payments = payments
        self._clock = clock

    async def __call__(
        self,
        principal: Principal,
        transaction_id: str,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> Transaction:
        merchant_id = require_merchant(principal)
        require_id(transaction_id, "id")
        if idempotency_key is not None:
            # Only a check: the unit is left without a commit, the key is claimed below.
            async with self._units(Mode.LOCKED) as uow:
                replay = await uow.idempotency.claim(
                    merchant_id, OPERATION, idempotency_key, fingerprint
                )
                if replay is not None:
                    return decode(replay)
        async with self._units(Mode.READ) as uow:
            transaction = await find_transaction(uow, merchant_id, transaction_id)
        movement = None
        if not transaction.cancelled:
            if transaction.captured_amount > 0:
                raise FailedPrecondition(
                    "Money was captured on the transaction: it cannot be cancelled. "
                    "Refund the payments instead.",
                    reason=REASON_TRANSACTION_CAPTURED,
                )
            closed = await self._payments.close_transaction(
                merchant_id=merchant_id,
                transaction_id=transaction_id,
                amount=transaction.amount,
                currency=transaction.currency,
            )
            movement = cancellation(
                closed.movement_id,
                merchant_id=merchant_id,
                transaction_id=transaction_id,
                now=self._clock(),
            )
        async with self._units(Mode.LOCKED) as uow:
            replay = await uow.idempotency.claim(
                merchant_id, OPERATION, idempotency_key, fingerprint
            )
            if replay is not None:
                return decode(replay)
            if movement is not None:
                transaction = await apply_one(uow, movement, self._clock)
            else:
                transaction = await find_transaction(uow, merchant_id, transaction_id)
            await uow.idempotency.complete(
                merchant_id, OPERATION, idempotency_key, encode(transaction)
            )
            await uow.commit()
        return transaction
