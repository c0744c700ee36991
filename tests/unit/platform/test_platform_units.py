"""The in-memory unit of work use-case tests run on: one unit at a time, rolled back
unless committed; and `optimistically`'s fallback, on units that conflict on demand."""

import asyncio
from dataclasses import dataclass, field

import pytest

from pi.platform.kernel.errors import Aborted
from pi.platform.kernel.units import (
    REASON_CONCURRENT_UPDATE,
    Conflict,
    MemoryUnitOfWork,
    Mode,
    optimistically,
)


@dataclass
class State:
    balances: dict[str, int] = field(default_factory=dict)


class Unit(MemoryUnitOfWork[State]):
    def deposit(self, account: str, amount: int) -> None:
        self.state.balances[account] = self.state.balances.get(account, 0) + amount


async def test_a_memory_unit_keeps_only_what_it_committed() -> None:
    state, lock = State(), asyncio.Lock()
    async with Unit(state, lock) as unit:
        unit.deposit("a", 5)
        await unit.commit()
    async with Unit(state, lock) as unit:
        unit.deposit("a", 100)  # left without commit
    with pytest.raises(ValueError):
        async with Unit(state, lock) as unit:
            unit.deposit("b", 1)
            raise ValueError
    assert state.balances == {"a": 5}


async def test_memory_units_run_one_at_a_time() -> None:
    state, lock = State({"a": 0}), asyncio.Lock()

    async def increment() -> None:
        async with Unit(state, lock) as unit:
            value = unit.state.balances["a"]
            await asyncio.sleep(0)  # another unit would interleave here without the lock
            unit.state.balances["a"] = value + 1
            await unit.commit()

    await asyncio.gather(*(increment() for _ in range(10)))
    assert state.balances == {"a": 10}


async def test_a_read_unit_has_nothing_to_commit() -> None:
    async with Unit(State(), asyncio.Lock(), Mode.READ) as unit:
        with pytest.raises(RuntimeError):
            await unit.commit()


async def test_optimistically_retries_a_conflict_on_a_locked_unit_then_aborts() -> None:
    state, lock = State(), asyncio.Lock()
    seen: list[Mode] = []

    async def conflicts_once(unit: Unit) -> str:
        seen.append(unit.mode)
        if unit.mode is Mode.OPTIMISTIC:
            raise Conflict("changed")
        return "done"

    assert await optimistically(lambda mode: Unit(state, lock, mode), conflicts_once) == "done"
    assert seen == [Mode.OPTIMISTIC, Mode.LOCKED]

    async def always_conflicts(unit: Unit) -> str:
        raise Conflict("changed")

    with pytest.raises(Aborted) as raised:
        await optimistically(lambda mode: Unit(state, lock, mode), always_conflicts)
    assert raised.value.reason == REASON_CONCURRENT_UPDATE
