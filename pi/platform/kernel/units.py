"""Units of work as use cases see them: modes, conflicts, the optimistic tactic, and an
in-memory unit for use-case tests.

Standard library only: a service's `app/ports.py` names these, its PostgreSQL adapter
implements them (`pi.platform.db.unit_of_work`, where the modes are explained) and its
in-memory adapter builds on `MemoryUnitOfWork`.
"""

from __future__ import annotations

import asyncio
import copy
import enum
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from pi.platform.kernel.errors import Aborted

__all__ = [
    "REASON_CONCURRENT_UPDATE",
    "Conflict",
    "MemoryUnitOfWork",
    "Mode",
    "Unit",
    "optimistically",
]

REASON_CONCURRENT_UPDATE = "CONCURRENT_UPDATE"

_T = TypeVar("_T")
_U = TypeVar("_U", bound="Unit")
_S = TypeVar("_S")


class Mode(enum.Enum):
    """How a unit reads and writes: READ (autocommit reads only), OPTIMISTIC (snapshot
    reads, conditional writes checked at commit), LOCKED (a transaction whose reads lock
    what they return)."""

    READ = "read"
    OPTIMISTIC = "optimistic"
    LOCKED = "locked"


class Conflict(Exception):
    """A write the unit expected to hit missed: a row changed since it was read. The unit
    rolled back; decide again on a LOCKED unit (`optimistically` does)."""


class Unit(Protocol):
    """What every unit of work offers, whatever its repositories."""

    @property
    def mode(self) -> Mode: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...


async def optimistically(new_unit: Callable[[Mode], _U], step: Callable[[_U], Awaitable[_T]]) -> _T:
    """`step` on an OPTIMISTIC unit; if it conflicts, once more on a LOCKED one.

    `step` enters the unit it is given (`async with unit:`), reads, decides and commits;
    it may run twice, so it calls nothing outside the unit between its reads and its
    commit. A conflict under locks means a writer that does not take them: it is reported
    as `Aborted(CONCURRENT_UPDATE)`, which the client may retry.
    """
    try:
        return await step(new_unit(Mode.OPTIMISTIC))
    except Conflict:
        pass
    try:
        return await step(new_unit(Mode.LOCKED))
    except Conflict as conflict:
        raise Aborted(
            "The request met a concurrent change; retry it with the same idempotency key.",
            reason=REASON_CONCURRENT_UPDATE,
        ) from conflict


class MemoryUnitOfWork(Generic[_S]):
    """The in-memory side of a service's unit of work, for use-case tests.

    `state` is the service's whole store (e.g. a dataclass of dicts), shared by every unit
    made on it together with `lock`. A unit holds the lock for its block, so units run
    one at a time and nothing ever conflicts; leaving the block without `commit()` puts
    the state back as it was. Subclasses add repositories that read and change `state`.
    """

    def __init__(self, state: _S, lock: asyncio.Lock, mode: Mode = Mode.LOCKED) -> None:
        self.state = state
        self._lock = lock
        self._mode = mode
        self._snapshot: dict[str, Any] | None = None
        self._committed = False

    @property
    def mode(self) -> Mode:
        return self._mode

    async def __aenter__(self) -> Self:
        await self._lock.acquire()
        self._snapshot = copy.deepcopy(vars(self.state))
        self._committed = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if not self._committed and self._snapshot is not None:
                vars(self.state).clear()
                vars(self.state).update(self._snapshot)
        finally:
            self._snapshot = None
            self._lock.release()

    async def commit(self) -> None:
        if self._mode is Mode.READ:
            raise RuntimeError("a READ unit has nothing to commit")
        self._committed = True
