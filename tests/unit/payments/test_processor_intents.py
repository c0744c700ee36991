"""Capture, cancel, refund and close recorded before the processor is called and settled
after, on the in-memory unit of work: a crash between the processor's approval and the
settlement (the reconciler settles it), a processor that does not answer (the intent
stays pending; a retry with the same key resumes it with the same processor key), one
that declines (the intent is undone; a declined refund is kept FAILED)."""

from __future__ import annotations

import pytest

from pi.payments.adapters.memory import MemoryOutbox, MemoryUnits
from pi.payments.adapters.processor import SandboxConnector
from pi.payments.app.use_cases import payment_use_cases
from pi.payments.domain import (
    FailureReason,
    PaymentStatus,
    RefundStatus,
)
from pi.payments.entrypoints.workers import Reconciler
from pi.platform.kernel.errors import FailedPrecondition, Unavailable
from pi.platform.kernel.pages import PageToken
from tests.support.processors import Crash, Faulty
from tests.unit.payments.conftest import Clock, FakeLedger, World


@pytest.fixture
def faulty_world() -> tuple[World, Faulty]:
    units = MemoryUnits()
    ledger = FakeLedger()
    ledger.add("txn_1", 1000)
    clock = Clock()
    faulty = Faulty(SandboxConnector(clock=clock))
    nudges: list[int] = []
    use = payment_use_cases(
        units,
        faulty,
        ledger,
        card_key=b"k" * 32,
        request_key=b"r" * 32,
        page_tokens=PageToken(b"p" * 32),
        notify=lambda: nudges.append(1),
        clock=clock,
    )
    outbox = MemoryOutbox(units.state, units.lock)
    return World(use, units, outbox, ledger, faulty.sandbox, clock, nudges), faulty


async def reconcile(world: World) -> int:
    world.clock.advance(seconds=10)
    return await Reconciler(world.use.reconcile_payment, clock=world.clock).run_once()


async def test_a_crash_after_the_processor_captured_is_settled_by_the_reconciler(
    faulty_world: tuple[World, Faulty],
) -> None:
    world, faulty = faulty_world
    held = await world.pay(amount=400, manual=True)
    faulty.crash.add("capture")
    with pytest.raises(Crash):
        await world.use.capture_payment(world.MERCHANT, held.id, amount=300)
    recorded = world.state.payments[held.id]
    assert (recorded.status, recorded.capturing_amount) == (PaymentStatus.CAPTURING, 300)
    assert [m[0] for m in world.movements()] == ["AUTHORIZATION"]  # nothing moved yet
    assert world.ref() == (400, 0, 0, False)

    faulty.crash.clear()
    assert await reconcile(world) == 1
    settled = world.state.payments[held.id]
    assert (settled.status, settled.captured_amount) == (PaymentStatus.SUCCEEDED, 300)
    assert world.movements()[-1] == ("CAPTURE", 2, -100, 300, 0)
    assert world.ref() == (0, 300, 0, False)
    # Asked twice with the one key; the sandbox captured once (a second key would refuse).
    assert faulty.calls == [("capture", f"capture_{held.id}")] * 2
    assert await reconcile(world) == 0


async def test_an_unanswered_capture_stays_capturing_and_a_retry_resumes_it(
    faulty_world: tuple[World, Faulty],
) -> None:
    world, faulty = faulty_world
    held = await world.pay(amount=400, manual=True)
    faulty.silent.add("capture")
    with pytest.raises(Unavailable) as unanswered:
        await world.use.capture_payment(world.MERCHANT, held.id, idempotency_key="cap")
    assert unanswered.value.reason == "PROCESSOR_UNAVAILABLE"
    assert world.state.payments[held.id].status is PaymentStatus.CAPTURING
    # Nothing else may happen to a payment being captured.
    with pytest.raises(FailedPrecondition) as refused:
        await world.use.cancel_payment(world.MERCHANT, held.id)
    assert refused.value.reason == "PAYMENT_NOT_CANCELLABLE"
    with pytest.raises(FailedPrecondition):
        await world.use.capture_payment(world.MERCHANT, held.id, amount=100)

    faulty.silent.clear()
    captured = await world.use.capture_payment(world.MERCHANT, held.id, idempotency_key="cap")
    assert (captured.status, captured.captured_amount) == (PaymentStatus.SUCCEEDED, 400)
    assert {key for _, key in faulty.calls} == {f"capture_{held.id}"}
    replay = await world.use.capture_payment(world.MERCHANT, held.id, idempotency_key="cap")
    assert replay == captured
    assert [m[0] for m in world.movements()] == ["AUTHORIZATION", "CAPTURE"]


async def test_a_retry_without_a_key_resumes_a_capture_in_flight(
    faulty_world: tuple[World, Faulty],
) -> None:
    world, faulty = faulty_world
    held = await world.pay(amount=400, manual=True)
    faulty.silent.add("capture")
    with pytest.raises(Unavailable):
        await world.use.capture_payment(world.MERCHANT, held.id, amount=250)
    faulty.silent.clear()
    captured = await world.use.capture_payment(world.MERCHANT, held.id)
    assert captured.captured_amount == 250
    assert len(faulty.calls) == 2 and len(set(faulty.calls)) == 1


async def test_a_declined_capture_leaves_the_payment_capturable_and_the_key_free(
    faulty_world: tuple[World, Faulty],
) -> None:
    world, faulty = faulty_world
    held = await world.pay(amount=400, manual=True)
    faulty.decline.add("capture")
    with pytest.raises(FailedPrecondition) as declined:
        await world.use.capture_payment(world.MERCHANT, held.id, idempotency_key="cap")
    assert declined.value.reason == "PROCESSOR_DECLINED"
    back = world.state.payments[held.id]
    assert (back.status, back.capturing_amount) == (PaymentStatus.REQUIRES_CAPTURE, 0)
    assert world.ref() == (400, 0, 0, False)
    faulty.decline.clear()
    captured = await world.use.capture_payment(world.MERCHANT, held.id, idempotency_key="cap")
    assert captured.status is PaymentStatus.SUCCEEDED


async def test_a_crash_after_a_void_is_settled_by_the_reconciler(
    faulty_world: tuple[World, Faulty],
) -> None:
    world, faulty = faulty_world
    held = await world.pay(amount=400, manual=True)
    faulty.crash.add("void")
    with pytest.raises(Crash):
        await world.use.cancel_payment(world.MERCHANT, held.id, idempotency_key="void")
    assert world.state.payments[held.id].status is PaymentStatus.CANCELLING
    assert world.ref() == (400, 0, 0, False)
    faulty.crash.clear()
    assert await reconcile(world) == 1
    assert world.state.payments[held.id].status is PaymentStatus.CANCELLED
    assert world.movements()[-1] == ("VOID", 2, -400, 0, 0)
    assert world.ref() == (0, 0, 0, False)
    # The client's retry finds it done and stores the response for its key.
    retried = await world.use.cancel_payment(world.MERCHANT, held.id, idempotency_key="void")
    assert retried.status is PaymentStatus.CANCELLED
    assert [m[0] for m in world.movements()].count("VOID") == 1


async def test_a_declined_refund_is_recorded_failed_with_its_reason(
    faulty_world: tuple[World, Faulty],
) -> None:
    world, faulty = faulty_world
    paid = await world.pay(amount=500)
    faulty.decline.add("refund")
    failed = await world.use.refund_payment(
        world.MERCHANT, paid.id, amount=200, reason="broken", idempotency_key="r1"
    )
    assert (failed.refund.status, failed.refund.failure_reason, failed.refund.amount) == (
        RefundStatus.FAILED,
        FailureReason.PROCESSOR_DECLINED,
        200,
    )
    assert world.state.refunds[failed.refund.id] == failed.refund
    assert (failed.payment.refunded_amount, failed.payment.refunding_amount) == (0, 0)
    assert failed.payment.refundable_amount == 500
    assert "REFUND" not in [m[0] for m in world.movements()]
    replay = await world.use.refund_payment(
        world.MERCHANT, paid.id, amount=200, reason="broken", idempotency_key="r1"
    )
    assert replay == failed
    faulty.decline.clear()
    done = await world.use.refund_payment(world.MERCHANT, paid.id, amount=200)
    assert done.refund.status is RefundStatus.SUCCEEDED
    assert world.ref() == (0, 500, 200, False)


async def test_a_pending_refund_holds_its_amount_until_the_reconciler_settles_it(
    faulty_world: tuple[World, Faulty],
) -> None:
    world, faulty = faulty_world
    paid = await world.pay(amount=500)
    faulty.crash.add("refund")
    with pytest.raises(Crash):
        await world.use.refund_payment(world.MERCHANT, paid.id, amount=300, idempotency_key="r")
    (pending,) = world.state.refunds.values()
    assert pending.status is RefundStatus.PENDING
    assert world.state.payments[paid.id].refunding_amount == 300
    faulty.crash.clear()
    with pytest.raises(FailedPrecondition) as over:
        await world.use.refund_payment(world.MERCHANT, paid.id, amount=201)
    assert over.value.metadata == {"refundable": "200"}

    assert await reconcile(world) == 1
    assert world.state.refunds[pending.id].status is RefundStatus.SUCCEEDED
    payment = world.state.payments[paid.id]
    assert (payment.refunded_amount, payment.refunding_amount) == (300, 0)
    assert world.movements()[-1] == ("REFUND", 3, 0, 0, 300)
    # The client's retry gets the refund the reconciler settled, not a second one.
    retried = await world.use.refund_payment(
        world.MERCHANT, paid.id, amount=300, idempotency_key="r"
    )
    assert retried.refund.id == pending.id
    assert retried.refund.status is RefundStatus.SUCCEEDED
    # Asked by the first attempt and by the reconciler; the retry found it settled.
    assert [key for op, key in faulty.calls if op == "refund"] == [pending.id] * 2


async def test_an_unanswered_refund_is_resumed_with_the_same_processor_key(
    faulty_world: tuple[World, Faulty],
) -> None:
    world, faulty = faulty_world
    paid = await world.pay(amount=500)
    faulty.silent.add("refund")
    with pytest.raises(Unavailable):
        await world.use.refund_payment(world.MERCHANT, paid.id, idempotency_key="r")
    faulty.silent.clear()
    done = await world.use.refund_payment(world.MERCHANT, paid.id, idempotency_key="r")
    assert (done.refund.status, done.refund.amount) == (RefundStatus.SUCCEEDED, 500)
    assert [key for _, key in faulty.calls] == [done.refund.id, done.refund.id]
    assert len(world.state.refunds) == 1


async def test_a_close_whose_void_gets_no_answer_leaves_it_to_the_reconciler(
    faulty_world: tuple[World, Faulty],
) -> None:
    world, faulty = faulty_world
    held = await world.pay(amount=400, manual=True)
    faulty.silent.add("void")
    closed = await world.use.close_transaction(
        world.SERVICE, merchant_id="mer_unit", transaction_id="txn_1", amount=1000, currency="USD"
    )
    assert closed.voided_payment_ids == (held.id,)
    assert world.state.payments[held.id].status is PaymentStatus.CANCELLING
    assert world.ref() == (400, 0, 0, True)
    assert [m[0] for m in world.movements()] == ["AUTHORIZATION", "CANCELLATION"]
    faulty.silent.clear()
    world.clock.advance(minutes=1)
    assert await reconcile(world) == 1
    assert world.state.payments[held.id].status is PaymentStatus.CANCELLED
    assert world.ref() == (0, 0, 0, True)
    assert [m[0] for m in world.movements()] == ["AUTHORIZATION", "CANCELLATION", "VOID"]


async def test_a_transaction_with_a_capture_in_flight_cannot_be_closed(
    faulty_world: tuple[World, Faulty],
) -> None:
    world, faulty = faulty_world
    held = await world.pay(amount=400, manual=True)
    faulty.silent.add("capture")
    with pytest.raises(Unavailable):
        await world.use.capture_payment(world.MERCHANT, held.id)
    with pytest.raises(FailedPrecondition) as refused:
        await world.use.close_transaction(
            world.SERVICE,
            merchant_id="mer_unit",
            transaction_id="txn_1",
            amount=1000,
            currency="USD",
        )
    assert refused.value.reason == "PAYMENT_PROCESSING"


async def test_a_retry_after_the_reconciler_settled_does_not_ask_the_processor_again(
    faulty_world: tuple[World, Faulty],
) -> None:
    world, faulty = faulty_world
    held = await world.pay(amount=400, manual=True)
    faulty.crash.add("capture")
    with pytest.raises(Crash):
        await world.use.capture_payment(world.MERCHANT, held.id, idempotency_key="cap")
    faulty.crash.clear()
    faulty.decline.add("capture")
    assert await reconcile(world) == 1
    assert world.state.payments[held.id].status is PaymentStatus.REQUIRES_CAPTURE
    asked = len(faulty.calls)
    with pytest.raises(FailedPrecondition) as declined:
        await world.use.capture_payment(world.MERCHANT, held.id, idempotency_key="cap")
    assert declined.value.reason == "PROCESSOR_DECLINED"
    assert len(faulty.calls) == asked
    faulty.decline.clear()  # the key was given back: the retry captures
    captured = await world.use.capture_payment(world.MERCHANT, held.id, idempotency_key="cap")
    assert captured.status is PaymentStatus.SUCCEEDED


async def test_a_payment_the_reconciler_failed_is_not_authorized_by_a_retry(
    faulty_world: tuple[World, Faulty],
) -> None:
    world, faulty = faulty_world
    faulty.crash.add("authorize")  # the service dies sending it: the key stays pending
    with pytest.raises(Crash):
        await world.pay(amount=400, key="pay-once")
    (lost,) = world.state.payments.values()
    assert lost.status is PaymentStatus.PROCESSING
    faulty.crash.clear()
    assert await reconcile(world) == 1  # "never received": FAILED, nothing charged
    assert world.state.payments[lost.id].status is PaymentStatus.FAILED
    asked = list(faulty.authorizations)
    # The client retries with its key: the answer is the settled payment, and the
    # processor is not asked to authorize what this service already failed.
    retried = await world.pay(amount=400, key="pay-once")
    assert (retried.id, retried.status) == (lost.id, PaymentStatus.FAILED)
    assert faulty.authorizations == asked == [lost.id]
    # Nothing is held or charged for it at the processor.
    answer = await faulty.sandbox.status(lost.id)
    assert answer.failure_reason is FailureReason.PROCESSOR_UNAVAILABLE


async def test_a_slow_authorize_landing_after_the_reconciler_failed_it_charges_nothing(
    faulty_world: tuple[World, Faulty],
) -> None:
    """The race `make chaos` found: a client's retry (or a slow first call) authorizes a
    PROCESSING payment while the reconciler hears "never received" and fails it. The
    processor's answer fences the payment, so the late authorize is declined."""
    world, faulty = faulty_world
    faulty.crash.add("authorize")
    with pytest.raises(Crash):
        await world.pay(amount=400, key="pay-race")
    (lost,) = world.state.payments.values()
    faulty.crash.clear()
    asked = await faulty.sandbox.status(lost.id)  # the reconciler asks first ...
    late = await world.pay(amount=400, key="pay-race")  # ... the retry authorizes ...
    assert asked.failure_reason is FailureReason.PROCESSOR_UNAVAILABLE
    assert (late.id, late.status) == (lost.id, PaymentStatus.FAILED)
    assert late.failure_reason is FailureReason.PROCESSOR_UNAVAILABLE
    assert faulty.authorizations == [lost.id, lost.id]
    assert await reconcile(world) == 0  # ... and finds nothing left to settle
    assert world.state.payments[lost.id].status is PaymentStatus.FAILED
    ref = world.state.refs["txn_1"].ref
    assert (ref.held_amount, ref.captured_amount) == (0, 0)  # released; nothing captured
