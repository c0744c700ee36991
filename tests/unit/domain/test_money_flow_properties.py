"""Property tests of the money flow: any sequence of payment operations keeps every
invariant, and the transaction's running amounts always equal the sum over its payments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pi.payments.domain import ALLOWED_TRANSITIONS as PAYMENT_TRANSITIONS
from pi.payments.domain import (
    CaptureMode,
    CardInput,
    FailureReason,
    Payment,
    PaymentChange,
    PaymentMethodType,
    PaymentRequest,
    PaymentStatus,
    ProcessorOutcome,
    Refund,
    RefundStatus,
    TransactionRef,
    authorize_outcome,
    cancel_outcome,
    capture_outcome,
    card_brand,
    check_ref_invariants,
    luhn_check_digit,
    luhn_valid,
    refund_outcome,
    start_cancel,
    start_capture,
    start_close,
    start_payment,
    start_refund,
    validate_card,
    validate_payment_request,
)
from pi.platform.kernel.errors import DomainError, ValidationErrors
from pi.transactions.domain import (
    ALLOWED_TRANSITIONS,
    MovementDelta,
    Transaction,
    TransactionStatus,
    apply_movement,
    derive_status,
    new_transaction,
)

TODAY = date(2026, 6, 15)
T0 = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)

# Reasons a client may legitimately get for an operation that is not possible right now.
# LEDGER_INVARIANT_VIOLATED and INVALID_STATUS_TRANSITION must never occur.
CLIENT_REASONS = {
    "INVALID_ARGUMENT",
    "TRANSACTION_CLOSED",
    "AMOUNT_EXCEEDS_REMAINING",
    "PAYMENT_NOT_CAPTURABLE",
    "AMOUNT_EXCEEDS_AUTHORIZED",
    "PAYMENT_NOT_CANCELLABLE",
    "PAYMENT_NOT_REFUNDABLE",
    "AMOUNT_EXCEEDS_REFUNDABLE",
    "PAYMENT_NOT_PROCESSING",
    "TRANSACTION_CAPTURED",
    "PAYMENT_PROCESSING",
}

OUTCOMES: list[tuple[ProcessorOutcome, FailureReason | None]] = [
    (ProcessorOutcome.APPROVED, None),
    (ProcessorOutcome.APPROVED, None),
    (ProcessorOutcome.DECLINED, FailureReason.CARD_DECLINED),
    (ProcessorOutcome.DECLINED, FailureReason.INSUFFICIENT_FUNDS),
    (ProcessorOutcome.DECLINED, None),
    (ProcessorOutcome.PENDING, None),
    (ProcessorOutcome.TIMEOUT, None),
]


@dataclass(frozen=True)
class Op:
    """One step: `create` (start + processor answer), `settle` (a later answer),
    `give_up` (reconciler VOID_AND_FAIL), `capture`, `cancel`, `refund`, `close` (each
    recorded, then answered by `outcome`: APPROVED or DECLINED settle it, PENDING and
    TIMEOUT leave it pending), `resolve` (a later answer to a pending capture, void or
    refund). `index` picks a payment (modulo how many exist)."""

    name: str
    index: int = 0
    amount: int | None = None
    mode: CaptureMode = CaptureMode.AUTOMATIC
    outcome: ProcessorOutcome = ProcessorOutcome.APPROVED
    reason: FailureReason | None = None


@dataclass
class World:
    ref: TransactionRef
    txn: Transaction
    payments: dict[str, Payment] = field(default_factory=dict)
    pending_refunds: dict[str, Refund] = field(default_factory=dict)
    transitions: list[tuple[TransactionStatus, TransactionStatus]] = field(default_factory=list)
    clock: datetime = T0
    counter: int = 0

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        self.counter += 1
        return self.clock

    def pick(self, index: int) -> Payment | None:
        if not self.payments:
            return None
        return list(self.payments.values())[index % len(self.payments)]

    def apply(
        self,
        ref: TransactionRef,
        payments: list[Payment],
        movements: tuple[MovementDelta, ...],
    ) -> None:
        for payment in payments:
            old = self.payments.get(payment.id)
            if old is not None and old.status is not payment.status:
                assert payment.status in PAYMENT_TRANSITIONS[old.status]
            self.payments[payment.id] = payment
        self.ref = ref
        for movement in movements:
            before = self.txn.status
            self.txn = apply_movement(self.txn, movement, now=self.clock)
            self.transitions.append((before, self.txn.status))

    def apply_change(self, change: PaymentChange) -> None:
        self.apply(change.ref, [change.payment], change.movements)
        if change.refund is not None:
            if change.refund.status is RefundStatus.PENDING:
                self.pending_refunds[change.refund.id] = change.refund
            else:
                del self.pending_refunds[change.refund.id]


def card_payment_request(amount: int, mode: CaptureMode) -> PaymentRequest:
    return validate_payment_request(
        transaction_id="txn_1",
        amount=amount,
        method=PaymentMethodType.CARD,
        capture_mode=mode,
        card=CardInput("4242424242424242", 12, 2030, "123"),
        bank_transfer=None,
        wallet=None,
        today=TODAY,
    )


def run(world: World, op: Op) -> None:
    now = world.tick()
    if op.name == "create":
        begun = start_payment(
            world.ref,
            card_payment_request(op.amount or 0, op.mode),
            payment_id=f"pay_{world.counter}",
            merchant_id="mer_1",
            fingerprint_key=b"k",
            now=now,
        )
        world.apply_change(begun)
        answered = authorize_outcome(
            world.ref, begun.payment, op.outcome, failure_reason=op.reason, now=now
        )
        world.apply_change(answered)
        return
    if op.name == "close":
        closed = start_close(world.ref, world.payments.values(), now=now)
        world.apply(closed.ref, list(closed.voided), closed.movements)
        if op.outcome is ProcessorOutcome.APPROVED:
            for voided in closed.voided:
                world.apply_change(cancel_outcome(world.ref, voided, approved=True, now=now))
        return
    payment = world.pick(op.index)
    if payment is None:
        return
    if op.name == "settle":
        change = authorize_outcome(
            world.ref, payment, op.outcome, failure_reason=op.reason, now=now
        )
    elif op.name == "give_up":
        change = authorize_outcome(
            world.ref,
            payment,
            ProcessorOutcome.DECLINED,
            failure_reason=FailureReason.PROCESSOR_UNAVAILABLE,
            now=now,
        )
    elif op.name == "resolve":
        resolve(world, payment, op, now)
        return
    elif op.name == "capture":
        change = start_capture(world.ref, payment, op.amount, now=now)
    elif op.name == "cancel":
        change = start_cancel(world.ref, payment, now=now)
    else:
        assert op.name == "refund"
        change = start_refund(
            world.ref, payment, op.amount, refund_id=f"ref_{world.counter}", now=now
        )
    world.apply_change(change)
    if op.name in ("capture", "cancel", "refund"):
        resolve(world, world.payments[payment.id], op, now)


def resolve(world: World, payment: Payment, op: Op, now: datetime) -> None:
    """The processor's answer (`op.outcome`) to what `payment` waits for, if final."""
    if op.outcome not in (ProcessorOutcome.APPROVED, ProcessorOutcome.DECLINED):
        return
    approved = op.outcome is ProcessorOutcome.APPROVED
    if payment.status is PaymentStatus.CAPTURING:
        world.apply_change(capture_outcome(world.ref, payment, approved=approved, now=now))
    elif payment.status is PaymentStatus.CANCELLING:
        # A closed transaction's voids are approved: its authorizations are not captured.
        approved = approved or world.ref.closed
        world.apply_change(cancel_outcome(world.ref, payment, approved=approved, now=now))
    else:
        pending = [r for r in world.pending_refunds.values() if r.payment_id == payment.id]
        if pending:
            change = refund_outcome(
                world.ref, payment, pending[0], approved=approved, failure_reason=op.reason, now=now
            )
            world.apply_change(change)


def check_world(world: World) -> None:
    ref, txn, payments = world.ref, world.txn, list(world.payments.values())
    check_ref_invariants(ref)
    assert 0 <= txn.refunded_amount <= txn.captured_amount <= txn.authorized_amount <= txn.amount
    # the transaction's view equals the sum over its payments ...
    assert txn.authorized_amount == sum(p.authorized_amount for p in payments)
    assert txn.captured_amount == sum(p.captured_amount for p in payments)
    assert txn.refunded_amount == sum(p.refunded_amount for p in payments)
    # ... and so does the payment service's ledger row
    assert ref.held_amount == sum(p.held_amount for p in payments)
    assert ref.captured_amount == txn.captured_amount
    assert ref.refunded_amount == txn.refunded_amount
    assert ref.held_amount + ref.captured_amount <= ref.amount
    assert ref.closed == txn.cancelled
    for p in payments:
        assert 0 <= p.refunded_amount <= p.captured_amount <= p.amount
        assert (p.captured_amount > 0) == (p.status is PaymentStatus.SUCCEEDED)
        assert (p.failure_reason is not None) == (p.status is PaymentStatus.FAILED)
        assert p.refunding_amount == sum(
            r.amount for r in world.pending_refunds.values() if r.payment_id == p.id
        )
        assert p.refunded_amount + p.refunding_amount <= p.captured_amount
        if ref.closed:
            assert p.status is not PaymentStatus.REQUIRES_CAPTURE
            assert p.status is not PaymentStatus.PROCESSING
    assert txn.status is derive_status(
        cancelled=txn.cancelled,
        authorized=txn.authorized_amount,
        captured=txn.captured_amount,
        refunded=txn.refunded_amount,
        last_payment_failed=txn.last_payment_failed,
    )
    for old, new in world.transitions:
        assert old is new or new in ALLOWED_TRANSITIONS[old]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[Op]]:
    amount = draw(st.integers(min_value=1, max_value=2000))
    some_amount = st.one_of(
        st.just(0),
        st.integers(min_value=1, max_value=max(1, amount // 3)),
        st.integers(min_value=1, max_value=amount + 5),
        st.integers(min_value=-3, max_value=amount * 2 + 5),
    )
    maybe_amount = st.one_of(st.none(), some_amount)
    index = st.integers(min_value=0, max_value=30)
    outcome = st.sampled_from(OUTCOMES)

    def answered(name: str, amounts: st.SearchStrategy[int]) -> st.SearchStrategy[Op]:
        return st.builds(
            lambda i, a, m, o: Op(name, i, a, m, o[0], o[1]),
            index,
            amounts,
            st.sampled_from(CaptureMode),
            outcome,
        )

    def on_payment(name: str) -> st.SearchStrategy[Op]:
        return st.builds(lambda i, a: Op(name, i, a), index, maybe_amount)

    create = answered("create", some_amount)
    # Repeated branches weigh the choice: mostly money moving.
    op = st.one_of(
        create,
        create,
        create,
        answered("settle", st.just(0)),
        on_payment("give_up"),
        answered("capture", maybe_amount),
        answered("capture", maybe_amount),
        answered("cancel", st.just(0)),
        answered("refund", maybe_amount),
        answered("refund", maybe_amount),
        answered("resolve", st.just(0)),
    )
    ops = [draw(create), *draw(st.lists(op, min_size=2, max_size=40))]
    # Closing ends most activity, so it happens at most once, anywhere in the sequence.
    close_at = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=len(ops))))
    if close_at is not None:
        ops.insert(close_at, Op("close", outcome=draw(outcome)[0]))
    return amount, ops


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_any_sequence_of_operations_keeps_every_invariant(
    scenario: tuple[int, list[Op]],
) -> None:
    amount, ops = scenario
    txn = new_transaction(
        id="txn_1",
        merchant_id="mer_1",
        amount=amount,
        currency="USD",
        description="",
        metadata={},
        now=T0,
    )
    world = World(ref=TransactionRef("txn_1", "mer_1", amount, "USD"), txn=txn)
    for op in ops:
        snapshot = (world.ref, dict(world.payments), world.txn)
        try:
            run(world, op)
        except DomainError as error:
            assert error.reason in CLIENT_REASONS, (op, error.reason, error.message)
            assert (world.ref, world.payments, world.txn) == snapshot  # refused: no change
        check_world(world)


# --- Luhn ----------------------------------------------------------------------------------


@st.composite
def valid_card_numbers(draw: st.DrawFn) -> str:
    body = draw(st.text(alphabet="0123456789", min_size=11, max_size=18))
    return body + luhn_check_digit(body)


@given(valid_card_numbers())
def test_a_generated_valid_number_passes(number: str) -> None:
    assert luhn_valid(number)
    errors = ValidationErrors()
    cvc = "1234" if number.startswith(("34", "37")) else "123"
    spaced = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    details = validate_card(CardInput(spaced, 12, 2030, cvc), today=TODAY, errors=errors)
    assert not errors and details is not None
    assert details.number == number and details.brand is card_brand(number)


@given(valid_card_numbers(), st.data())
def test_any_single_digit_change_fails(number: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(min_value=0, max_value=len(number) - 1))
    replacement = data.draw(st.sampled_from([d for d in "0123456789" if d != number[position]]))
    changed = number[:position] + replacement + number[position + 1 :]
    assert not luhn_valid(changed)


def test_payment_change_objects_are_immutable() -> None:
    change = start_payment(
        TransactionRef("txn_1", "mer_1", 10, "USD"),
        card_payment_request(0, CaptureMode.MANUAL),
        payment_id="pay_1",
        merchant_id="mer_1",
        fingerprint_key=b"k",
        now=T0,
    )
    try:
        change.payment.status = PaymentStatus.SUCCEEDED  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:  # pragma: no cover
        raise AssertionError("Payment must be frozen")
