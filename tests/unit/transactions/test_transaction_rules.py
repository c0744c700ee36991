"""Transaction rules: validation, status derivation, transitions and movements."""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from datetime import UTC, datetime, timedelta

import pytest

from pi.platform.kernel.errors import DomainError, FailedPrecondition, InvalidArgument
from pi.platform.kernel.text import text_problem
from pi.transactions.domain import (
    ALLOWED_TRANSITIONS,
    MAX_DESCRIPTION_LENGTH,
    Movement,
    MovementDelta,
    MovementKind,
    Transaction,
    TransactionStatus,
    apply_movement,
    check_transition,
    derive_status,
    metadata_problems,
    new_transaction,
    validate_movement_shape,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
S = TransactionStatus
K = MovementKind


def make_txn(amount: int = 1000, **changes: object) -> Transaction:
    txn = new_transaction(
        id="txn_1",
        merchant_id="mer_1",
        amount=amount,
        currency="USD",
        description="",
        metadata={},
        now=NOW,
    )
    return dataclasses.replace(txn, **changes)  # type: ignore[arg-type]  # test overrides


def delta(kind: MovementKind, a: int = 0, c: int = 0, r: int = 0) -> MovementDelta:
    return MovementDelta(kind, "pay_1", authorized_delta=a, captured_delta=c, refunded_delta=r)


def apply_all(txn: Transaction, *movements: MovementDelta) -> Transaction:
    for movement in movements:
        txn = apply_movement(txn, movement)
    return txn


# --- new_transaction -------------------------------------------------------------------


def test_new_transaction_is_pending_with_zero_amounts() -> None:
    txn = new_transaction(
        id="txn_1",
        merchant_id="mer_1",
        amount=1999,
        currency="EUR",
        description="Order #12\nTwo items",
        metadata={"order_id": "12", "note": ""},
        now=NOW,
    )
    assert txn.status is S.PENDING
    assert (txn.authorized_amount, txn.captured_amount, txn.refunded_amount) == (0, 0, 0)
    assert txn.last_payment_failed is False
    assert txn.create_time == txn.update_time == NOW
    assert dict(txn.metadata) == {"order_id": "12", "note": ""}


def test_new_transaction_metadata_is_a_read_only_copy() -> None:
    source = {"a": "1"}
    txn = new_transaction(
        id="t", merchant_id="m", amount=1, currency="USD", description="", metadata=source, now=NOW
    )
    source["b"] = "2"
    assert dict(txn.metadata) == {"a": "1"}
    with pytest.raises(TypeError):
        txn.metadata["c"] = "3"  # type: ignore[index]  # proving it is read-only


def test_new_transaction_reports_every_wrong_field_at_once() -> None:
    with pytest.raises(InvalidArgument) as raised:
        new_transaction(
            id="t",
            merchant_id="m",
            amount=0,
            currency="usd",
            description="x" * (MAX_DESCRIPTION_LENGTH + 1),
            metadata={"": "v"},
            now=NOW,
        )
    fields = [v.field for v in raised.value.violations]
    assert fields == [
        "transaction.amount",
        "transaction.currency",
        "transaction.description",
        "transaction.metadata",
    ]
    assert raised.value.reason == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("description", "ok"),
    [
        ("", True),
        ("x" * MAX_DESCRIPTION_LENGTH, True),
        ("x" * (MAX_DESCRIPTION_LENGTH + 1), False),
        ("line one\nline two\ttabbed\r\n", True),
        ("Caf\u00e9 \u00a0100 \u20ac \U0001f468\u200d\U0001f469\u200d\U0001f467", True),
        ("nul\x00byte", False),
        ("bell\x07", False),
        ("escape\x1b[31m", False),
        ("del\x7f", False),
        ("lone \ud800 surrogate", False),
    ],
)
def test_description_rules(description: str, ok: bool) -> None:
    problem = text_problem(description, max_length=MAX_DESCRIPTION_LENGTH, multiline=True)
    assert (problem is None) is ok


def test_single_line_text_refuses_newlines() -> None:
    assert text_problem("a\nb", max_length=10) is not None
    assert text_problem("a b", max_length=10) is None


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ({f"k{i}": "v" for i in range(50)}, None),
        ({f"k{i}": "v" for i in range(51)}, "at most 50 keys"),
        ({"k" * 40: "v"}, None),
        ({"k" * 41: "v"}, "at most 40 characters"),
        ({"": "v"}, "must not be empty"),
        ({"new\nline": "v"}, "printable"),
        ({"tab\tkey": "v"}, "printable"),
        ({"k": "v" * 500}, None),
        ({"k": "v" * 501}, "at most 500 characters"),
        ({"k": "nul\x00"}, "control characters"),
        ({"k": ""}, None),
        ({"emoji \U0001f600": "\u00e9t\u00e9"}, None),
    ],
)
def test_metadata_rules(metadata: dict[str, str], fragment: str | None) -> None:
    problems = metadata_problems(metadata)
    if fragment is None:
        assert problems == []
    else:
        assert any(fragment in p for p in problems), problems


def test_metadata_problem_never_echoes_a_huge_or_raw_key() -> None:
    problems = metadata_problems({"k" * 5000 + "\x00": "v"})
    assert len(problems) == 1 and len(problems[0]) < 120


# --- derive_status ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cancelled", "authorized", "captured", "refunded", "failed", "status"),
    [
        (False, 0, 0, 0, False, S.PENDING),
        (False, 0, 0, 0, True, S.FAILED),
        (False, 100, 0, 0, False, S.AUTHORIZED),
        (False, 100, 0, 0, True, S.AUTHORIZED),
        (False, 100, 100, 0, False, S.COMPLETED),
        (False, 100, 40, 0, True, S.COMPLETED),
        (False, 100, 100, 30, False, S.PARTIALLY_REFUNDED),
        (False, 100, 100, 100, False, S.REFUNDED),
        (False, 100, 60, 60, True, S.REFUNDED),
        (True, 0, 0, 0, False, S.CANCELLED),
        (True, 100, 0, 0, True, S.CANCELLED),
    ],
)
def test_derive_status_rules(
    cancelled: bool, authorized: int, captured: int, refunded: int, failed: bool, status: S
) -> None:
    assert (
        derive_status(
            cancelled=cancelled,
            authorized=authorized,
            captured=captured,
            refunded=refunded,
            last_payment_failed=failed,
        )
        is status
    )


# --- check_transition ------------------------------------------------------------------


def test_every_status_may_stay_the_same() -> None:
    for status in S:
        check_transition(status, status)


@pytest.mark.parametrize(
    ("old", "new"),
    [(old, new) for old in S for new in S if old is not new],
)
def test_check_transition_matches_the_table(old: S, new: S) -> None:
    if new in ALLOWED_TRANSITIONS[old]:
        check_transition(old, new)
    else:
        with pytest.raises(FailedPrecondition) as raised:
            check_transition(old, new)
        assert raised.value.reason == "INVALID_STATUS_TRANSITION"
        assert raised.value.metadata == {"from": old.value, "to": new.value}


def test_cancelled_is_terminal() -> None:
    assert ALLOWED_TRANSITIONS[S.CANCELLED] == frozenset()


def test_transition_table_is_exactly_what_movements_can_reach() -> None:
    """Explore every state one transaction can reach with small movements: each status
    change must be in the table, and each table edge must occur."""
    amount = 3
    start = make_txn(amount=amount)
    candidates = [delta(K.AUTHORIZATION, a=a) for a in range(1, amount + 1)]
    candidates += [
        delta(K.CAPTURE, a=-rel, c=c) for c in range(1, amount + 1) for rel in range(amount + 1)
    ]
    candidates += [delta(K.VOID, a=-a) for a in range(1, amount + 1)]
    candidates += [delta(K.REFUND, r=r) for r in range(1, amount + 1)]
    candidates += [delta(K.FAILURE), MovementDelta(K.CANCELLATION, None)]

    def key(t: Transaction) -> tuple[object, ...]:
        return (t.status, t.authorized_amount, t.captured_amount, t.refunded_amount,
                t.last_payment_failed)  # fmt: skip

    seen = {key(start)}
    queue = deque([start])
    edges: set[tuple[S, S]] = set()
    while queue:
        txn = queue.popleft()
        for movement in candidates:
            try:
                after = apply_movement(txn, movement)
            except FailedPrecondition as error:
                assert error.reason != "INVALID_STATUS_TRANSITION"
                continue
            if after.status is not txn.status:
                edges.add((txn.status, after.status))
            if key(after) not in seen:
                seen.add(key(after))
                queue.append(after)
    table = {(old, new) for old, news in ALLOWED_TRANSITIONS.items() for new in news}
    assert edges == table
    assert {k[0] for k in seen} == set(S)


# --- movements -------------------------------------------------------------------------

VALID_SHAPES = [
    delta(K.AUTHORIZATION, a=5),
    delta(K.CAPTURE, c=5),
    delta(K.CAPTURE, a=-3, c=5),
    delta(K.VOID, a=-5),
    delta(K.REFUND, r=5),
    delta(K.FAILURE),
    delta(K.CANCELLATION),
]

INVALID_SHAPES = [
    (delta(K.AUTHORIZATION), "movement.authorized_delta"),
    (delta(K.AUTHORIZATION, a=-5), "movement.authorized_delta"),
    (delta(K.AUTHORIZATION, a=5, c=1), "movement.captured_delta"),
    (delta(K.CAPTURE), "movement.captured_delta"),
    (delta(K.CAPTURE, a=1, c=5), "movement.authorized_delta"),
    (delta(K.CAPTURE, c=5, r=1), "movement.refunded_delta"),
    (delta(K.VOID), "movement.authorized_delta"),
    (delta(K.VOID, a=5), "movement.authorized_delta"),
    (delta(K.REFUND), "movement.refunded_delta"),
    (delta(K.REFUND, r=-1), "movement.refunded_delta"),
    (delta(K.REFUND, a=1, r=1), "movement.authorized_delta"),
    (delta(K.FAILURE, a=1), "movement.authorized_delta"),
    (delta(K.CANCELLATION, a=-1), "movement.authorized_delta"),
]


@pytest.mark.parametrize("movement", VALID_SHAPES)
def test_movement_shapes_that_are_accepted(movement: MovementDelta) -> None:
    validate_movement_shape(movement)


@pytest.mark.parametrize(("movement", "field"), INVALID_SHAPES)
def test_movement_shapes_that_are_refused(movement: MovementDelta, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_movement_shape(movement)
    assert field in [v.field for v in raised.value.violations]


def test_movement_kind_mirrors_the_proto_names() -> None:
    assert [k.value for k in K] == [
        "AUTHORIZATION",
        "CAPTURE",
        "VOID",
        "REFUND",
        "FAILURE",
        "CANCELLATION",
    ]
    assert all(k.name == k.value for k in K)
    assert all(s.name == s.value for s in S)


def test_movement_from_delta_copies_the_deltas() -> None:
    movement = Movement.from_delta(
        delta(K.CAPTURE, a=-2, c=8),
        id="mov_1",
        merchant_id="mer_1",
        transaction_id="txn_1",
        occur_time=NOW,
    )
    assert movement == Movement(
        id="mov_1",
        merchant_id="mer_1",
        transaction_id="txn_1",
        payment_id="pay_1",
        kind=K.CAPTURE,
        authorized_delta=-2,
        captured_delta=8,
        refunded_delta=0,
        occur_time=NOW,
    )
    assert apply_movement(make_txn(authorized_amount=10, status=S.AUTHORIZED), movement) == (
        apply_movement(make_txn(authorized_amount=10, status=S.AUTHORIZED), delta(K.CAPTURE, -2, 8))
    )


# --- apply_movement --------------------------------------------------------------------


def test_authorize_capture_refund_lifecycle() -> None:
    txn = make_txn(1000)
    txn = apply_movement(txn, delta(K.AUTHORIZATION, a=1000))
    assert (txn.status, txn.authorized_amount) == (S.AUTHORIZED, 1000)
    txn = apply_movement(txn, delta(K.CAPTURE, a=-250, c=750))
    assert (txn.status, txn.authorized_amount, txn.captured_amount) == (S.COMPLETED, 750, 750)
    txn = apply_movement(txn, delta(K.REFUND, r=100))
    assert (txn.status, txn.refunded_amount) == (S.PARTIALLY_REFUNDED, 100)
    txn = apply_movement(txn, delta(K.REFUND, r=650))
    assert (txn.status, txn.refunded_amount) == (S.REFUNDED, 750)


def test_apply_movement_does_not_change_its_input_and_sets_update_time() -> None:
    txn = make_txn()
    later = NOW + timedelta(minutes=1)
    after = apply_movement(txn, delta(K.AUTHORIZATION, a=10), now=later)
    assert txn.authorized_amount == 0 and txn.status is S.PENDING
    assert after.update_time == later and after.create_time == NOW
    assert apply_movement(txn, delta(K.FAILURE)).update_time == NOW


def test_failure_then_void_of_the_rest_is_failed_and_authorization_clears_it() -> None:
    txn = apply_all(make_txn(), delta(K.FAILURE))
    assert (txn.status, txn.last_payment_failed) == (S.FAILED, True)
    txn = apply_movement(txn, delta(K.AUTHORIZATION, a=100))
    assert (txn.status, txn.last_payment_failed) == (S.AUTHORIZED, False)
    txn = apply_movement(txn, delta(K.FAILURE))
    assert txn.status is S.AUTHORIZED
    assert apply_movement(txn, delta(K.VOID, a=-100)).status is S.FAILED


def test_void_of_every_authorization_returns_to_pending() -> None:
    txn = apply_all(make_txn(), delta(K.AUTHORIZATION, a=100), delta(K.VOID, a=-100))
    assert (txn.status, txn.authorized_amount) == (S.PENDING, 0)


def test_refund_after_full_refund_then_new_capture_is_partial_again() -> None:
    txn = apply_all(
        make_txn(100),
        delta(K.AUTHORIZATION, a=50),
        delta(K.CAPTURE, c=50),
        delta(K.REFUND, r=50),
    )
    assert txn.status is S.REFUNDED
    txn = apply_all(txn, delta(K.AUTHORIZATION, a=50), delta(K.CAPTURE, c=50))
    assert txn.status is S.PARTIALLY_REFUNDED


def test_cancellation_is_sticky_and_late_voids_still_apply() -> None:
    txn = apply_all(make_txn(), delta(K.AUTHORIZATION, a=100), MovementDelta(K.CANCELLATION, None))
    assert txn.status is S.CANCELLED and txn.cancelled
    txn = apply_all(
        txn,
        delta(K.VOID, a=-100),
        delta(K.AUTHORIZATION, a=10),
        delta(K.FAILURE),
        delta(K.VOID, a=-10),
        MovementDelta(K.CANCELLATION, None),
    )
    assert (txn.status, txn.authorized_amount) == (S.CANCELLED, 0)


@pytest.mark.parametrize(
    ("setup", "movement", "reason", "invariant"),
    [
        ([], delta(K.AUTHORIZATION, a=1001), "LEDGER_INVARIANT_VIOLATED", "authorized <= amount"),
        (
            [delta(K.AUTHORIZATION, a=600)],
            delta(K.AUTHORIZATION, a=401),
            "LEDGER_INVARIANT_VIOLATED",
            "authorized <= amount",
        ),
        ([], delta(K.CAPTURE, c=1), "LEDGER_INVARIANT_VIOLATED", "captured <= authorized"),
        (
            [delta(K.AUTHORIZATION, a=100)],
            delta(K.CAPTURE, a=-1, c=100),
            "LEDGER_INVARIANT_VIOLATED",
            "captured <= authorized",
        ),
        ([], delta(K.VOID, a=-1), "LEDGER_INVARIANT_VIOLATED", "0 <= authorized"),
        ([], delta(K.REFUND, r=1), "LEDGER_INVARIANT_VIOLATED", "refunded <= captured"),
        (
            [delta(K.AUTHORIZATION, a=100), delta(K.CAPTURE, c=100), delta(K.REFUND, r=60)],
            delta(K.REFUND, r=41),
            "LEDGER_INVARIANT_VIOLATED",
            "refunded <= captured",
        ),
        (
            [delta(K.AUTHORIZATION, a=100), delta(K.CAPTURE, c=1)],
            MovementDelta(K.CANCELLATION, None),
            "TRANSACTION_CAPTURED",
            None,
        ),
        (
            [delta(K.AUTHORIZATION, a=100), MovementDelta(K.CANCELLATION, None)],
            delta(K.CAPTURE, c=10),
            "TRANSACTION_CANCELLED",
            None,
        ),
        (
            [MovementDelta(K.CANCELLATION, None)],
            delta(K.REFUND, r=1),
            "TRANSACTION_CANCELLED",
            None,
        ),
    ],
)
def test_movements_that_would_break_an_invariant_are_refused(
    setup: list[MovementDelta], movement: MovementDelta, reason: str, invariant: str | None
) -> None:
    txn = apply_all(make_txn(1000), *setup)
    with pytest.raises(FailedPrecondition) as raised:
        apply_movement(txn, movement)
    assert raised.value.reason == reason
    if invariant is not None:
        assert raised.value.metadata["invariant"] == invariant
        assert raised.value.metadata["transaction_id"] == "txn_1"


def test_malformed_movement_is_invalid_argument_before_any_state_check() -> None:
    with pytest.raises(InvalidArgument):
        apply_movement(make_txn(), delta(K.REFUND, r=-5))


def test_every_error_is_a_domain_error_with_a_stable_reason() -> None:
    reasons = set()
    txn = make_txn(10)
    for kind, a, c, r in itertools.product(K, (-20, 0, 20), (0, 20), (0, 20)):
        try:
            apply_movement(txn, delta(kind, a, c, r))
        except DomainError as error:
            reasons.add(error.reason)
    assert reasons == {"INVALID_ARGUMENT", "LEDGER_INVARIANT_VIOLATED"}
