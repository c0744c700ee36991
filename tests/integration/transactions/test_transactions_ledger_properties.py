"""Property test on PostgreSQL: the stored transaction follows the domain model exactly.

Random sequences of movements (valid, invalid and redelivered ones) are applied through
the use case; after every step the stored row equals what `domain.apply_movement` gives
for the movements accepted so far, a refused movement changes nothing, and a redelivered
movement id changes nothing.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pi.platform.kernel.errors import DomainError
from pi.platform.kernel.principal import Principal
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.domain import Movement, MovementKind, Transaction, apply_movement

ALICE = Principal.merchant("mer_alice")
SERVICE = Principal.service()
AMOUNT = 1000

# Money movements often, the ones that end or reset a transaction's story rarely.
_KINDS = [
    *[MovementKind.AUTHORIZATION, MovementKind.CAPTURE, MovementKind.REFUND] * 3,
    MovementKind.VOID,
    MovementKind.FAILURE,
    MovementKind.CANCELLATION,
]
_steps = st.lists(
    st.tuples(
        st.sampled_from(_KINDS),
        st.integers(min_value=1, max_value=100),  # percent of what the kind can move
        st.integers(min_value=0, max_value=5).map(lambda n: n == 0),  # move more than is movable
        st.integers(min_value=0, max_value=5).map(lambda n: n == 0),  # redeliver instead
    ),
    min_size=1,
    max_size=20,
)


def _deltas(
    model: Transaction, kind: MovementKind, percent: int, over: bool
) -> tuple[int, int, int]:
    """(authorized, captured, refunded) deltas moving `percent` of what is movable, or
    more than all of it if `over` (then the movement must be refused)."""
    held = model.authorized_amount - model.captured_amount
    room = {
        MovementKind.AUTHORIZATION: model.amount - model.authorized_amount,
        MovementKind.CAPTURE: held,
        MovementKind.VOID: held,
        MovementKind.REFUND: model.captured_amount - model.refunded_amount,
    }.get(kind, 0)
    size = max(1, room * percent // 100) + (room if over else 0)
    if kind is MovementKind.AUTHORIZATION:
        return size, 0, 0
    if kind is MovementKind.CAPTURE:
        return -(held - size) if size <= held else 0, size, 0
    if kind is MovementKind.VOID:
        return -size, 0, 0
    if kind is MovementKind.REFUND:
        return 0, 0, size
    return 0, 0, 0


def _comparable(transaction: Transaction) -> Transaction:
    return dataclasses.replace(transaction, update_time=transaction.create_time)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=_steps)
async def test_stored_transactions_follow_the_domain_model(
    service: TransactionUseCases, steps: list[tuple[MovementKind, int, bool, bool]]
) -> None:
    model = await service.create_transaction(
        ALICE, amount=AMOUNT, currency="USD", description="", metadata={}
    )
    applied: list[Movement] = []
    for number, (kind, percent, over, redeliver) in enumerate(steps):
        if redeliver and applied:
            movement = applied[percent % len(applied)]
        else:
            authorized, captured, refunded = _deltas(model, kind, percent, over)
            movement = Movement(
                id=f"{model.id}_{number}",
                merchant_id="mer_alice",
                transaction_id=model.id,
                payment_id="pay_1",
                kind=kind,
                authorized_delta=authorized,
                captured_delta=captured,
                refunded_delta=refunded,
                occur_time=datetime.now(UTC),
            )
        expected: Any
        if movement in applied:
            expected = model
        else:
            try:
                expected = apply_movement(model, movement)
            except DomainError as refused:
                expected = refused
        try:
            stored = await service.apply_movement(SERVICE, movement)
        except DomainError as error:
            assert isinstance(expected, DomainError), (movement, error)
            assert error.reason == expected.reason
        else:
            assert isinstance(expected, Transaction), (movement, expected)
            assert _comparable(stored) == _comparable(expected)
            if movement not in applied:
                applied.append(movement)
            model = expected
        current = await service.get_transaction(ALICE, model.id)
        assert _comparable(current) == _comparable(model)
        assert 0 <= current.refunded_amount <= current.captured_amount
        assert current.captured_amount <= current.authorized_amount <= AMOUNT
