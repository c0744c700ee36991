"""Property tests of the transaction rules: derived statuses only take allowed
transitions, and a batch of movements gives each movement what applying the movements
one at a time gives it (on the in-memory store)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pi.platform.kernel.errors import DomainError
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.principal import Principal
from pi.platform.kernel.units import Mode
from pi.transactions.adapters.memory import MemoryUnits
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.domain import (
    ALLOWED_TRANSITIONS,
    Movement,
    MovementDelta,
    MovementKind,
    Transaction,
    earlier_movement_not_applied,
    new_transaction,
    validate_movement,
)
from pi.transactions.domain import apply_movement as domain_apply
from tests.unit.transactions.fakes import FakePaymentLedger

T0 = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
SERVICE = Principal.service()


@settings(max_examples=300, deadline=None)
@given(
    amount=st.integers(min_value=1, max_value=50),
    movements=st.lists(
        st.tuples(
            st.sampled_from(MovementKind),
            st.integers(min_value=-60, max_value=60),
            st.integers(min_value=0, max_value=60),
            st.integers(min_value=0, max_value=60),
        ),
        max_size=40,
    ),
)
def test_derived_status_only_takes_allowed_transitions(
    amount: int, movements: list[tuple[MovementKind, int, int, int]]
) -> None:
    txn = new_transaction(
        id="t", merchant_id="m", amount=amount, currency="JPY", description="", metadata={}, now=T0
    )
    for kind, a, c, r in movements:
        movement = MovementDelta(kind, "p", a, c, r)
        try:
            after = domain_apply(txn, movement)
        except DomainError as error:
            assert error.reason != "INVALID_STATUS_TRANSITION"
            continue
        assert after.status is txn.status or after.status in ALLOWED_TRANSITIONS[txn.status]
        assert 0 <= after.refunded_amount <= after.captured_amount
        assert after.captured_amount <= after.authorized_amount <= after.amount
        txn = after


# A batch against one movement at a time ----------------------------------------------------

TRANSACTIONS = [f"txn_0000000000000000000000000{n}" for n in range(3)]
AMOUNT = 40

_step = st.tuples(
    st.sampled_from(TRANSACTIONS),
    st.sampled_from(MovementKind),
    st.integers(min_value=1, max_value=AMOUNT // 2),  # what the movement moves
    st.integers(min_value=0, max_value=AMOUNT // 4),  # what a capture releases
    st.integers(min_value=0, max_value=5).map(lambda n: n == 0),  # malformed
    st.integers(min_value=0, max_value=6),  # 0: redeliver an earlier one, 1: reuse its id
    st.integers(min_value=0, max_value=7).map(lambda n: n == 0),  # another merchant's
)


def _deltas(kind: MovementKind, size: int, release: int, malformed: bool) -> tuple[int, int, int]:
    deltas = {
        MovementKind.AUTHORIZATION: (size, 0, 0),
        MovementKind.CAPTURE: (-release, size, 0),
        MovementKind.VOID: (-size, 0, 0),
        MovementKind.REFUND: (0, 0, size),
    }.get(kind, (0, 0, 0))
    if malformed:
        return (deltas[0] + 1, deltas[1], -deltas[2] - 1)
    return deltas


def _movements(steps: list[tuple[Any, ...]]) -> list[Movement]:
    made: list[Movement] = []
    for number, (txn, kind, size, release, malformed, again, foreign) in enumerate(steps):
        earlier = [m for m in made if m.transaction_id == txn]
        if again == 0 and earlier:
            made.append(earlier[number % len(earlier)])
            continue
        movement_id = f"m{number}"
        if again == 1 and earlier:
            movement_id = earlier[number % len(earlier)].id
        authorized, captured, refunded = _deltas(kind, size, release, malformed)
        made.append(
            Movement(
                id=movement_id,
                merchant_id="mer_other" if foreign else "mer_1",
                transaction_id=txn,
                payment_id="pay_1",
                kind=kind,
                authorized_delta=authorized,
                captured_delta=captured,
                refunded_delta=refunded,
                occur_time=T0,
            )
        )
    return made


def _store() -> tuple[MemoryUnits, TransactionUseCases]:
    units = MemoryUnits()
    use_cases = TransactionUseCases.wire(
        units, FakePaymentLedger(), PageToken(secrets.token_bytes(32)), clock=lambda: T0
    )
    return units, use_cases


async def _seed(units: MemoryUnits) -> None:
    async with units() as unit:
        for transaction_id in TRANSACTIONS:
            unit.transactions.add(
                new_transaction(
                    id=transaction_id,
                    merchant_id="mer_1",
                    amount=AMOUNT,
                    currency="USD",
                    description="",
                    metadata={},
                    now=T0,
                )
            )
        await unit.commit()


def _outcome(error: Exception | None) -> tuple[str, str | None]:
    if error is None:
        return ("OK", None)
    assert isinstance(error, DomainError), error
    return (error.code.value, error.reason)


async def _state(units: MemoryUnits) -> tuple[list[Transaction], set[str]]:
    async with units(Mode.READ) as unit:
        rows = [await unit.transactions.get("mer_1", t) for t in TRANSACTIONS]
    return [t for t in rows if t is not None], set(units.state.movements)


async def _batch_against_sequence(movements: list[Movement]) -> None:
    batched, batch_cases = _store()
    single, single_cases = _store()
    await _seed(batched)
    await _seed(single)

    results = await batch_cases.apply_movements(SERVICE, movements)
    expected: list[tuple[str, str | None]] = []
    refused: set[str] = set()
    for movement in movements:
        error: Exception | None = None
        try:
            validate_movement(movement)  # a malformed one is reported as such, always
            if movement.transaction_id in refused:
                error = earlier_movement_not_applied(movement.transaction_id)
            else:
                await single_cases.apply_movement(SERVICE, movement)
        except DomainError as refusal:
            error = refusal
        if error is not None:
            refused.add(movement.transaction_id)
        expected.append(_outcome(error))

    assert [_outcome(r.error) for r in results] == expected
    assert await _state(batched) == await _state(single)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_step, min_size=1, max_size=25))
def test_a_batch_gives_each_movement_what_one_at_a_time_gives_it(
    steps: list[tuple[Any, ...]],
) -> None:
    asyncio.run(_batch_against_sequence(_movements(steps)))


def test_the_property_meets_redeliveries_reuses_and_refusals() -> None:
    """The strategy reaches the cases the batch treats apart (a guard on the one above)."""
    t = TRANSACTIONS[0]
    auth = Movement("m0", "mer_1", t, "pay_1", MovementKind.AUTHORIZATION, 30, 0, 0, T0)
    movements = [
        auth,
        auth,  # redelivered in the batch
        dataclasses.replace(auth, authorized_delta=1),  # reused with other contents
        Movement("m3", "mer_1", TRANSACTIONS[1], "p", MovementKind.CAPTURE, 0, 5, 0, T0),
        Movement("m4", "mer_other", TRANSACTIONS[2], "p", MovementKind.FAILURE, 0, 0, 0, T0),
    ]
    asyncio.run(_batch_against_sequence(movements))
