"""ApplyMovement and ApplyMovements: the payment service reports money movements.

Money on a transaction changes only through movements: the payment service reports them
in batches (`ApplyMovements`, one unit of work per batch) or one at a time
(`ApplyMovement`), and CancelTransaction applies the cancellation movement the payment
service returns when it closes a transaction (`apply_one`). A movement id is applied at
most once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pi.platform.kernel.errors import DomainError, InvalidArgument
from pi.platform.kernel.principal import Principal, require_service
from pi.platform.kernel.units import Mode
from pi.platform.ledger import Movement
from pi.transactions.app.ports import Clock, StorageRefused, UnitOfWork, UnitsOfWork
from pi.transactions.domain import (
    Transaction,
    UnreadableMovement,
    apply_movement,
    earlier_movement_not_applied,
    invalid_movement,
    movement_id_reused,
    readable,
    same_movement,
    transaction_not_found,
    validate_movement,
)

__all__ = [
    "MAX_BATCH_MOVEMENTS",
    "ApplyMovement",
    "ApplyMovements",
    "MovementResult",
    "apply_one",
]

MAX_BATCH_MOVEMENTS = 1000
"""At most this many movements per ApplyMovements call (transactions.proto)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MovementResult:
    """What ApplyMovements did with one movement.

    `error` is None if the movement is applied (now, or earlier with the same contents);
    else the `DomainError` ApplyMovement would raise for it, or `Aborted`
    (EARLIER_MOVEMENT_NOT_APPLIED) if it was not attempted. Any other exception means it
    failed inside the service (INTERNAL); it was logged.
    """

    movement_id: str
    error: Exception | None = None


async def apply_one(uow: UnitOfWork, movement: Movement, clock: Clock) -> Transaction:
    """Apply a well-formed movement on a LOCKED unit; the transaction after it.

    Lock the transaction, record the movement id (a redelivery changes nothing, if it is
    the same movement), decide with the domain rules, write the change. The unit rolls
    back unless the caller commits.
    """
    current = await uow.transactions.get(movement.merchant_id, movement.transaction_id)
    if current is None:
        raise transaction_not_found(movement.transaction_id)
    now = clock()
    if not await uow.movements.record(movement, now):
        earlier = await uow.movements.get(movement.id)
        if earlier is not None and not same_movement(earlier, movement):
            raise movement_id_reused(movement)
        return current
    after = apply_movement(current, movement, now=now)
    return await uow.transactions.advance(current, after)


class ApplyMovement:
    """Apply a movement once; applying its id again returns the transaction as it is.

    One unit of work: lock the transaction row, record the movement id (a duplicate
    changes nothing), add the deltas and store the derived status. A movement that would
    break an invariant is FAILED_PRECONDITION and nothing is written; a transaction the
    movement's merchant does not own is NOT_FOUND.
    """

    def __init__(self, units: UnitsOfWork, clock: Clock) -> None:
        self._units = units
        self._clock = clock

    async def __call__(self, principal: Principal, movement: Movement) -> Transaction:
        require_service(principal)
        validate_movement(movement)
        async with self._units(Mode.LOCKED) as uow:
            transaction = await apply_one(uow, movement, self._clock)
            await uow.commit()
        return transaction


class ApplyMovements:
    """Apply a batch of movements; one result per movement, in the given order.

    Each movement gets the outcome ApplyMovement would give it alone; the movements of
    one transaction apply in the given order, and once one of them is refused the later
    ones of that transaction are not attempted (ABORTED), while other transactions go
    on. InvalidArgument for the request as a whole only if it holds no movements or more
    than `MAX_BATCH_MOVEMENTS`.

    One unit of work for the whole batch (`Movements.apply_batch`). Should the store
    still refuse something the rules allowed, the batch is rolled back and its movements
    are applied one by one, so one bad movement cannot hold back the others.
    """

    def __init__(self, units: UnitsOfWork, clock: Clock) -> None:
        self._units = units
        self._clock = clock

    async def __call__(
        self, principal: Principal, movements: Sequence[Movement | UnreadableMovement]
    ) -> list[MovementResult]:
        require_service(principal)
        if not movements:
            raise InvalidArgument.field("movements", "is required")
        if len(movements) > MAX_BATCH_MOVEMENTS:
            raise InvalidArgument.field(
                "movements", f"must hold at most {MAX_BATCH_MOVEMENTS} movements"
            )
        invalid = [invalid_movement(movement) for movement in movements]
        try:
            errors = await self._apply_batch(movements, invalid)
        except StorageRefused:
            log.warning(
                "the database refused a batch of movements; applying them one by one",
                exc_info=True,
                extra={"movements": len(movements)},
            )
            errors = await self._apply_one_by_one(movements, invalid)
        return [
            MovementResult(movement.id, error)
            for movement, error in zip(movements, errors, strict=True)
        ]

    async def _apply_batch(
        self,
        movements: Sequence[Movement | UnreadableMovement],
        invalid: Sequence[InvalidArgument | None],
    ) -> list[Exception | None]:
        if not readable(movements, invalid):
            return list(invalid)
        async with self._units(Mode.LOCKED) as uow:
            errors = await uow.movements.apply_batch(movements, invalid, self._clock())
            await uow.commit()
        return errors

    async def _apply_one_by_one(
        self,
        movements: Sequence[Movement | UnreadableMovement],
        invalid: Sequence[InvalidArgument | None],
    ) -> list[Exception | None]:
        """The batch's outcome with one unit of work per movement (`apply_one`)."""
        errors: list[Exception | None] = list(invalid)
        refused: set[str] = set()
        for index, movement in enumerate(movements):
            if errors[index] is not None or isinstance(movement, UnreadableMovement):
                refused.add(movement.transaction_id)
                continue
            if movement.transaction_id in refused:
                errors[index] = earlier_movement_not_applied(movement.transaction_id)
                continue
            try:
                async with self._units(Mode.LOCKED) as uow:
                    await apply_one(uow, movement, self._clock)
                    await uow.commit()
            except DomainError as error:
                errors[index] = error
            except StorageRefused as error:
                log.exception("the database refused a movement", extra={"movement_id": movement.id})
                errors[index] = error
            if errors[index] is not None:
                refused.add(movement.transaction_id)
        return errors
