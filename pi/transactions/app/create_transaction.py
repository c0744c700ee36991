"""CreateTransaction: a new PENDING transaction, idempotent, announced to the payment service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from pi.platform.kernel.ids import new_id
from pi.platform.kernel.principal import Principal, require_merchant
from pi.platform.kernel.units import optimistically
from pi.transactions.app.ports import Clock, FactsQueue, UnitOfWork, UnitsOfWork
from pi.transactions.app.replays import decode, encode
from pi.transactions.domain import ID_PREFIX, Transaction, new_transaction

__all__ = ["FACTS_WAIT_SECONDS", "OPERATION", "CreateTransaction"]

OPERATION = "CreateTransaction"
FACTS_WAIT_SECONDS = 0.05
"""How long CreateTransaction waits for its facts to reach the payment service (see
`CreateTransaction._announce`): a few batch round trips on a healthy mesh, small next to
the lookup it saves the first payment."""


class CreateTransaction:
    """A new PENDING transaction; every invalid field is reported at once.

    With an idempotency key, a retry of the same request returns the first result and a
    different request under the key is ALREADY_EXISTS (IDEMPOTENCY_KEY_REUSED). The key
    is claimed already holding the response, in the same unit as the insert: both commit
    together or not at all, so no separate completion is needed.
    """

    def __init__(
        self,
        units: UnitsOfWork,
        clock: Clock,
        *,
        facts: FactsQueue | None = None,
        facts_wait: float = FACTS_WAIT_SECONDS,
    ) -> None:
        """`facts` is told of each new transaction once it is committed (not of
        replays); what it returns, if not None, is awaited for at most `facts_wait`
        seconds (0: not at all) before CreateTransaction answers, whatever its outcome."""
        if facts_wait < 0:
            raise ValueError("facts_wait must not be negative")
        self._units = units
        self._clock = clock
        self._facts = facts
        self._facts_wait = facts_wait

    async def __call__(
        self,
        principal: Principal,
        *,
        amount: int,
        currency: str,
        description: str,
        metadata: Mapping[str, str],
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> Transaction:
        merchant_id = require_merchant(principal)
        transaction = new_transaction(
            id=new_id(ID_PREFIX),
            merchant_id=merchant_id,
            amount=amount,
            currency=currency,
            description=description,
            metadata=metadata,
            now=self._clock(),
        )
        response = encode(transaction)

        async def record(uow: UnitOfWork) -> Transaction | None:
            # Optimistically the claim and the insert go with the BEGIN in one round
            # trip; a key found taken conflicts, and the claim made again under locks
            # gives the stored response (or the error).
            async with uow:
                replay = await uow.idempotency.claim(
                    merchant_id, OPERATION, idempotency_key, fingerprint, response=response
                )
                if replay is not None:
                    return decode(replay)
                uow.transactions.add(transaction)
                await uow.commit()
            return None

        replayed = await optimistically(self._units, record)
        if replayed is not None:
            return replayed
        await self._announce(transaction)
        return transaction

    async def _announce(self, transaction: Transaction) -> None:
        """Hand a committed new transaction to `facts` and give its facts up to
        `facts_wait` to reach the payment service.

        A client usually pays right after creating; if the facts got there first, that
        payment skips the LookupTransaction round trip. The wait is only a bet: a timeout
        or a push that failed just means the payment looks the transaction up, so neither
        fails the create nor is logged (the publisher's stats count them).
        """
        if self._facts is None:
            return
        pushed = self._facts.publish(transaction)
        if pushed is None or self._facts_wait <= 0:
            return
        # The publisher tolerates a future cancelled by this timeout. asyncio.timeout, not
        # wait_for: on Python 3.11 wait_for can swallow the request's own cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._facts_wait):
                await pushed
