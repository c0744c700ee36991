"""The unit of work's contract, on PostgreSQL and in memory alike (the `backend` fixture
runs each test on both): what the use cases rely on from their repositories, the rules
the database enforces, idempotency keys, and the outbox queue."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pi.payments.app.requests import (
    FinalPayment,
    PendingChange,
    PendingPayment,
    RefundResult,
    RequestKey,
)
from pi.payments.domain import (
    CaptureMode,
    CardBrand,
    CardFacts,
    FailureReason,
    Payment,
    PaymentMethodType,
    PaymentStatus,
    Refund,
    RefundStatus,
    TransactionRef,
)
from pi.platform.kernel.errors import AlreadyExists
from pi.platform.kernel.units import Conflict, Mode
from pi.platform.ledger import Movement, MovementKind

M = "mer_units"
T0 = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
REF = TransactionRef("txn_1", M, 1000, "USD")


def payment(id: str = "pay_1", *, at: int = 0, **changes: Any) -> Payment:
    values: dict[str, Any] = {
        "id": id,
        "merchant_id": M,
        "transaction_id": "txn_1",
        "amount": 400,
        "currency": "USD",
        "method": PaymentMethodType.CARD,
        "capture_mode": CaptureMode.MANUAL,
        "status": PaymentStatus.PROCESSING,
        "failure_reason": None,
        "captured_amount": 0,
        "refunded_amount": 0,
        "card": CardFacts(CardBrand.VISA, "4242", "f" * 32, 12, 2030),
        "bank_transfer": None,
        "wallet": None,
        "processor_reference": None,
        "create_time": T0 + timedelta(seconds=at),
        "update_time": T0 + timedelta(seconds=at),
    }
    values.update(changes)
    return Payment(**values)


def movement(id: str, transaction_id: str = "txn_1", at: datetime = T0) -> Movement:
    return Movement(id, M, transaction_id, None, MovementKind.FAILURE, 0, 0, 0, at)


async def with_ref(backend: Any, ref: TransactionRef = REF) -> None:
    async with backend.units() as unit:
        await unit.refs.add(ref, now=T0)
        await unit.commit()


async def test_a_ref_is_added_once_and_its_facts_never_change(backend: Any) -> None:
    async with backend.units() as unit:
        assert await unit.refs.get("txn_1") is None
        assert await unit.refs.add(REF, now=T0) == REF
        other_facts = dataclasses.replace(REF, amount=5, currency="EUR")
        assert await unit.refs.add(other_facts, now=T0) == REF
        assert await unit.refs.add_all(
            [other_facts, TransactionRef("txn_2", M, 9, "JPY")], now=T0
        ) == {"txn_2"}
        await unit.commit()
    async with backend.units(Mode.READ) as unit:
        assert await unit.refs.get("txn_1") == REF
        found = await unit.refs.get_all(["txn_1", "txn_2", "txn_3"])
        assert set(found) == {"txn_1", "txn_2"}
        assert found["txn_2"].amount == 9
        assert await unit.refs.get_all([]) == {}


async def test_ref_changes_are_deltas_and_number_their_movements_in_order(backend: Any) -> None:
    await with_ref(backend)
    held = dataclasses.replace(REF, held_amount=400)
    async with backend.units() as unit:
        ref = await unit.refs.get("txn_1")
        await unit.refs.update(ref, held, [movement("mov_a"), movement("mov_b")], now=T0)
        await unit.commit()
    captured = dataclasses.replace(REF, captured_amount=300)
    async with backend.units() as unit:
        ref = await unit.refs.get("txn_1")
        assert ref == held
        await unit.refs.settle(ref, captured, [movement("mov_c")], now=T0)
        await unit.commit()
    row = await backend.ref("txn_1")
    assert (row.held_amount, row.captured_amount, row.movement_count) == (0, 300, 3)
    rows = await backend.outbox_rows()
    assert [(r.id, r.seq) for r in rows] == [("mov_a", 1), ("mov_b", 2), ("mov_c", 3)]


async def test_concurrent_settlements_number_each_refs_movements_and_a_stale_one_writes_none(
    backend: Any,
) -> None:
    """Settlements of payments on six refs at once: on PostgreSQL the group commit sends
    their outbox appends as one statement over every movement. Each ref's movements are
    numbered after its own count, and the one whose hold is gone appends nothing."""
    refs = [TransactionRef(f"txn_{n}", M, 1000, "USD") for n in range(6)]
    for ref in refs:
        await with_ref(backend, ref)
        async with backend.units() as unit:  # a movement already, so seqs start at 2
            await unit.refs.update(
                ref,
                dataclasses.replace(ref, held_amount=400),
                [movement(f"mov_{ref.transaction_id}_0", ref.transaction_id)],
                now=T0,
            )
            await unit.commit()

    async def settle(ref: TransactionRef, moves: int, held: int = 400) -> None:
        # What T1 held (`held`), all captured: the settlement releases that much.
        holding = dataclasses.replace(ref, held_amount=held)
        async with backend.units(Mode.OPTIMISTIC) as unit:
            seen = await unit.refs.get(ref.transaction_id, seen=holding)
            made = [
                movement(f"mov_{ref.transaction_id}_{i}", ref.transaction_id)
                for i in range(1, moves + 1)
            ]
            captured = dataclasses.replace(ref, captured_amount=held)
            await unit.refs.settle(seen, captured, made, now=T0)
            await unit.commit()

    # txn_5's unit releases a hold of 500 where the row holds 400: its settlement is stale.
    runs = [settle(ref, 1 + n % 2) for n, ref in enumerate(refs[:5])]
    runs.append(settle(refs[5], 1, held=500))
    results = await asyncio.gather(*runs, return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["NoneType"] * 5 + ["Conflict"]
    rows = await backend.outbox_rows()
    numbered = sorted((r.transaction_id, r.seq, r.id) for r in rows)
    expected = []
    for n, ref in enumerate(refs):
        t = ref.transaction_id
        expected.append((t, 1, f"mov_{t}_0"))
        if n < 5:
            expected += [(t, 1 + i, f"mov_{t}_{i}") for i in range(1, 2 + n % 2)]
    assert numbered == sorted(expected)
    for n, ref in enumerate(refs):
        row = await backend.ref(ref.transaction_id)
        settled = n < 5
        assert (row.held_amount, row.captured_amount) == ((0, 400) if settled else (400, 0))
        assert row.movement_count == (2 + n % 2 if settled else 1)
    if backend.name == "postgresql":
        assert backend.units._database.group_commit.stats.merged > 0


@pytest.mark.parametrize(
    "amounts",
    [
        {"held_amount": 700, "captured_amount": 400},  # held + captured > amount
        {"captured_amount": 100, "refunded_amount": 101},  # refunded > captured
        {"held_amount": -1},
    ],
)
async def test_a_ref_change_that_breaks_the_budget_is_refused_and_keeps_nothing(
    backend: Any, amounts: dict[str, int]
) -> None:
    await with_ref(backend)
    with pytest.raises(backend.violation):
        async with backend.units() as unit:
            ref = await unit.refs.get("txn_1")
            await unit.refs.update(ref, dataclasses.replace(REF, **amounts), now=T0)
            await unit.commit()
    assert (await backend.ref("txn_1")).held_amount == 0


async def test_an_optimistic_change_on_a_stale_ref_conflicts_and_keeps_nothing(
    backend: Any,
) -> None:
    await with_ref(backend)
    stale = dataclasses.replace(REF, held_amount=100)  # what another request read
    with pytest.raises(Conflict):
        async with backend.units(Mode.OPTIMISTIC) as unit:
            ref = await unit.refs.get("txn_1", seen=stale)
            await unit.refs.update(ref, dataclasses.replace(ref, held_amount=500), now=T0)
            await unit.payments.add(payment())
            await unit.commit()
    assert await backend.count("payments") == 0
    assert (await backend.ref("txn_1")).held_amount == 0


async def test_a_settlement_whose_hold_is_gone_conflicts(backend: Any) -> None:
    await with_ref(backend)
    holding = dataclasses.replace(REF, held_amount=400)  # as if T1 held 400
    with pytest.raises(Conflict):
        async with backend.units(Mode.OPTIMISTIC) as unit:
            ref = await unit.refs.get("txn_1", seen=holding)
            await unit.refs.settle(ref, REF, [movement("mov_f")], now=T0)
            await unit.commit()
    assert await backend.outbox_rows() == []


async def test_a_payment_needs_its_transactions_ref_in_the_same_currency(backend: Any) -> None:
    await with_ref(backend)
    with pytest.raises(backend.violation):
        async with backend.units() as unit:
            await unit.payments.add(payment(currency="EUR"))
            await unit.commit()
    with pytest.raises(backend.violation):
        async with backend.units() as unit:
            await unit.payments.add(payment(transaction_id="txn_unknown"))
            await unit.commit()
    assert await backend.count("payments") == 0


@pytest.mark.parametrize(
    ("start", "change"),
    [
        (
            {"status": PaymentStatus.FAILED, "failure_reason": FailureReason.CARD_DECLINED},
            {"status": PaymentStatus.PROCESSING, "failure_reason": None},
        ),
        ({"status": PaymentStatus.REQUIRES_CAPTURE}, {"status": PaymentStatus.PROCESSING}),
        (
            {"status": PaymentStatus.SUCCEEDED, "captured_amount": 400},
            {"captured_amount": 300},
        ),
        (
            {"status": PaymentStatus.SUCCEEDED, "captured_amount": 400, "refunded_amount": 0},
            {"refunded_amount": 401},
        ),
        ({"status": PaymentStatus.REQUIRES_CAPTURE}, {"status": PaymentStatus.FAILED}),
    ],
)
async def test_payment_changes_outside_the_state_machine_are_refused(
    backend: Any, start: dict[str, Any], change: dict[str, Any]
) -> None:
    await with_ref(backend)
    first = payment(**start)
    async with backend.units() as unit:
        await unit.payments.add(first)
        await unit.commit()
    with pytest.raises(backend.violation):
        async with backend.units() as unit:
            current = await unit.payments.get("pay_1")
            await unit.payments.update(current, dataclasses.replace(current, **change))
            await unit.commit()
    async with backend.units(Mode.READ) as unit:
        assert await unit.payments.get("pay_1") == first


async def test_a_payment_change_on_a_stale_read_conflicts(backend: Any) -> None:
    await with_ref(backend)
    async with backend.units() as unit:
        await unit.payments.add(payment())
        await unit.commit()
    settled = payment(status=PaymentStatus.REQUIRES_CAPTURE, processor_reference="sbx_1")
    async with backend.units() as unit:
        current = await unit.payments.get("pay_1")
        await unit.payments.update(current, settled)
        await unit.commit()
    with pytest.raises(Conflict):
        async with backend.units(Mode.OPTIMISTIC) as unit:
            seen = await unit.payments.get("pay_1", seen=payment())  # still PROCESSING
            failed = dataclasses.replace(
                seen, status=PaymentStatus.FAILED, failure_reason=FailureReason.CARD_DECLINED
            )
            await unit.payments.update(seen, failed)
            await unit.commit()
    async with backend.units(Mode.READ) as unit:
        assert await unit.payments.get("pay_1") == settled


async def test_leaving_a_unit_without_commit_keeps_nothing_and_read_units_do_not_write(
    backend: Any,
) -> None:
    async with backend.units() as unit:
        await unit.refs.add(REF, now=T0)
    assert await backend.ref("txn_1") is None
    with pytest.raises(RuntimeError):
        async with backend.units(Mode.READ) as unit:
            await unit.payments.add(payment())


async def test_payments_are_found_only_by_their_merchant_and_listed_newest_first(
    backend: Any,
) -> None:
    await with_ref(backend, dataclasses.replace(REF, amount=10_000))
    await with_ref(backend, TransactionRef("txn_2", M, 10_000, "USD"))
    made = [payment(f"pay_{i}", at=i // 2) for i in range(6)]
    made.append(payment("pay_other_txn", at=9, transaction_id="txn_2"))
    async with backend.units() as unit:
        for each in made:
            await unit.payments.add(each)
        await unit.commit()
    async with backend.units(Mode.READ) as unit:
        assert await unit.payments.find("pay_1", M) == made[1]
        assert await unit.payments.find("pay_1", "mer_other") is None
        first = await unit.payments.of_merchant(M, transaction_id="txn_1", after=None, limit=4)
        assert [p.id for p in first] == ["pay_5", "pay_4", "pay_3", "pay_2"]
        cursor = (first[-1].create_time, first[-1].id)
        rest = await unit.payments.of_merchant(M, transaction_id="txn_1", after=cursor, limit=4)
        assert [p.id for p in rest] == ["pay_1", "pay_0"]
        everything = await unit.payments.of_merchant(M, transaction_id=None, after=None, limit=9)
        assert everything[0].id == "pay_other_txn"
        assert (
            await unit.payments.of_merchant("mer_other", transaction_id=None, after=None, limit=9)
            == []
        )
        oldest_first = await unit.payments.of_transaction("txn_1")
        assert [p.id for p in oldest_first] == [f"pay_{i}" for i in range(6)]
        due = await unit.payments.waiting(T0 + timedelta(seconds=2), 3, after=None)
        assert [p.id for p in due] == ["pay_0", "pay_1", "pay_2"]
        after = (due[-1].update_time, due[-1].id)
        more = await unit.payments.waiting(T0 + timedelta(seconds=2), 3, after=after)
        assert [p.id for p in more] == ["pay_3"]


async def test_refunds_belong_to_a_payment_of_the_transaction(backend: Any) -> None:
    await with_ref(backend)
    refund = Refund("ref_1", "pay_1", 100, "USD", "", RefundStatus.SUCCEEDED, T0)
    with pytest.raises(backend.violation):
        async with backend.units() as unit:
            await unit.refunds.add(refund, merchant_id=M, transaction_id="txn_1")
            await unit.commit()
    async with backend.units() as unit:
        await unit.payments.add(payment(status=PaymentStatus.SUCCEEDED, captured_amount=400))
        await unit.refunds.add(refund, merchant_id=M, transaction_id="txn_1")
        await unit.commit()
    assert await backend.count("refunds") == 1


KEY = RequestKey(M, "CreatePayment", "k1", "a" * 64)


async def test_a_create_key_holds_pending_then_final_and_replays_it(backend: Any) -> None:
    pending = PendingPayment("pay_1")
    async with backend.units() as unit:
        assert await unit.idempotency.claim_create(KEY, pending) is None
        await unit.commit()
    async with backend.units() as unit:
        assert await unit.idempotency.claim_create(KEY, PendingPayment("pay_2")) == pending
        assert await unit.idempotency.create_response(KEY, seen=pending) == pending
    final = FinalPayment(payment())
    async with backend.units() as unit:
        await unit.idempotency.create_response(KEY, seen=pending)
        await unit.idempotency.finish_create(KEY, pending, final)
        await unit.commit()
    async with backend.units() as unit:
        assert await unit.idempotency.claim_create(KEY, PendingPayment("pay_3")) == final
    with pytest.raises(AlreadyExists) as reused:
        async with backend.units() as unit:
            await unit.idempotency.claim_create(
                dataclasses.replace(KEY, fingerprint="b" * 64), pending
            )
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    async with backend.units(Mode.READ) as unit:
        await unit.idempotency.reject_reuse(KEY)
        with pytest.raises(AlreadyExists):
            await unit.idempotency.reject_reuse(dataclasses.replace(KEY, fingerprint="b" * 64))


async def test_an_optimistic_claim_of_a_taken_key_conflicts(backend: Any) -> None:
    async with backend.units() as unit:
        await unit.idempotency.claim_create(KEY, PendingPayment("pay_1"))
        await unit.commit()
    with pytest.raises(Conflict):
        async with backend.units(Mode.OPTIMISTIC) as unit:
            await unit.idempotency.claim_create(KEY, PendingPayment("pay_2"))
            await unit.commit()
    async with backend.units() as unit:
        assert await unit.idempotency.claim_create(KEY, PendingPayment("pay_2")) == (
            PendingPayment("pay_1")
        )


async def test_finishing_a_key_a_duplicate_finished_first_conflicts(backend: Any) -> None:
    pending = PendingPayment("pay_1")
    async with backend.units() as unit:
        await unit.idempotency.claim_create(KEY, pending)
        await unit.commit()
    async with backend.units() as unit:
        await unit.idempotency.finish_create(KEY, pending, FinalPayment(payment()))
        await unit.commit()
    with pytest.raises(Conflict):
        async with backend.units(Mode.OPTIMISTIC) as unit:
            await unit.idempotency.finish_create(KEY, pending, FinalPayment(payment(amount=1)))
            await unit.commit()
    async with backend.units() as unit:
        assert await unit.idempotency.claim_create(KEY, pending) == FinalPayment(payment())


async def test_keys_of_the_other_operations_hold_pending_then_replay_their_response(
    backend: Any,
) -> None:
    await with_ref(backend)
    capture = RequestKey(M, "CapturePayment", "k1", "c" * 64)
    refund = RequestKey(M, "RefundPayment", "k1", "d" * 64)
    result = RefundResult(
        Refund("ref_1", "pay_1", 100, "USD", "why", RefundStatus.SUCCEEDED, T0), payment()
    )
    async with backend.units() as unit:
        assert await unit.idempotency.claim_change(capture, PendingChange("pay_1")) is None
        assert await unit.idempotency.claim_change(refund, PendingChange("ref_1")) is None
        await unit.commit()
    # A retry finds the intent it resumes.
    async with backend.units() as unit:
        assert await unit.idempotency.claim_change(capture, PendingChange("pay_x")) == (
            PendingChange("pay_1")
        )
        assert await unit.idempotency.change_response(refund) == PendingChange("ref_1")
        await unit.idempotency.complete(capture, payment())
        await unit.idempotency.complete(refund, result)
        await unit.commit()
    async with backend.units() as unit:
        assert await unit.idempotency.claim_change(capture, PendingChange("pay_1")) == payment()
        assert await unit.idempotency.claim_change(refund, PendingChange("ref_2")) == result
        assert await unit.idempotency.change_response(refund) == result
    # A claim that went with its rollback leaves the key free; a released one too.
    cancel = RequestKey(M, "CancelPayment", "k1", "e" * 64)
    async with backend.units() as unit:
        await unit.idempotency.claim_change(cancel, PendingChange("pay_1"))
    async with backend.units() as unit:
        assert await unit.idempotency.claim_change(cancel, PendingChange("pay_1")) is None
        await unit.commit()
    async with backend.units() as unit:
        await unit.idempotency.change_response(cancel)
        await unit.idempotency.release(cancel)
        await unit.commit()
    async with backend.units() as unit:
        assert await unit.idempotency.change_response(cancel) is None
        assert await unit.idempotency.claim_change(cancel, PendingChange("pay_2")) is None
        await unit.commit()
    with pytest.raises(AlreadyExists):
        async with backend.units() as unit:
            await unit.idempotency.claim_change(
                dataclasses.replace(cancel, fingerprint="f" * 64), PendingChange("pay_1")
            )
    # No key: nothing claimed, stored or replayed.
    anonymous = RequestKey(M, "CapturePayment", None, "c" * 64)
    async with backend.units() as unit:
        assert await unit.idempotency.claim_change(anonymous, PendingChange("pay_1")) is None
        await unit.idempotency.complete(anonymous, payment())
        await unit.idempotency.release(anonymous)
        await unit.commit()
    assert await backend.count("idempotency_keys") == 3


async def test_a_pending_refund_is_settled_once_and_listed_until_then(backend: Any) -> None:
    await with_ref(backend)
    pending = Refund("ref_1", "pay_1", 100, "USD", "", RefundStatus.PENDING, T0)
    later = Refund("ref_2", "pay_1", 50, "USD", "", RefundStatus.PENDING, T0 + timedelta(1))
    async with backend.units() as unit:
        await unit.payments.add(payment(status=PaymentStatus.SUCCEEDED, captured_amount=400))
        await unit.refunds.add(pending, merchant_id=M, transaction_id="txn_1")
        await unit.refunds.add(later, merchant_id=M, transaction_id="txn_1")
        await unit.commit()
    async with backend.units(Mode.READ) as unit:
        due = await unit.refunds.pending(T0 + timedelta(2), 1, after=None)
        assert due == [pending]
        more = await unit.refunds.pending(T0 + timedelta(2), 1, after=(T0, "ref_1"))
        assert more == [later]
        assert await unit.refunds.pending(T0, 5, after=None) == []
    failed = dataclasses.replace(
        pending, status=RefundStatus.FAILED, failure_reason=FailureReason.PROCESSOR_DECLINED
    )
    async with backend.units() as unit:
        assert await unit.refunds.get("ref_1") == pending
        await unit.refunds.update(pending, failed)
        await unit.commit()
    with pytest.raises(Conflict):
        async with backend.units(Mode.OPTIMISTIC) as unit:
            await unit.refunds.update(pending, dataclasses.replace(failed, failure_reason=None))
            await unit.commit()
    # The database keeps a FAILED refund's reason, and only a FAILED one has a reason.
    with pytest.raises(backend.violation):
        async with backend.units() as unit:
            await unit.refunds.update(
                later, dataclasses.replace(later, failure_reason=None, status=RefundStatus.FAILED)
            )
            await unit.commit()
    async with backend.units(Mode.READ) as unit:
        assert await unit.refunds.get("ref_1") == failed
        assert await unit.refunds.pending(T0 + timedelta(2), 5, after=None) == [later]


async def test_the_outbox_queue_delivers_in_order_and_holds_back_behind_a_retry(
    backend: Any,
) -> None:
    await with_ref(backend)
    await with_ref(backend, TransactionRef("txn_2", M, 1000, "USD"))
    now = datetime.now(UTC)
    async with backend.units() as unit:
        for transaction_id, ids in (("txn_1", ["m1", "m2"]), ("txn_2", ["m3"])):
            ref = await unit.refs.get(transaction_id)
            made = [movement(i, transaction_id, now) for i in ids]
            await unit.refs.update(ref, ref, made, now=now)
        await unit.commit()
    outbox = backend.outbox
    assert await outbox.undelivered_count() == 3
    assert await outbox.next_due() == now
    due = await outbox.due(now, 10)
    assert [(q.id, q.seq, q.attempts) for q in due] == [("m1", 1, 0), ("m2", 2, 0), ("m3", 1, 0)]
    assert [q.movement.id for q in due] == ["m1", "m2", "m3"]
    assert await outbox.due(now, 1) == due[:1]

    later = now + timedelta(minutes=1)
    await outbox.postpone("txn_1", "m1", later, "refused " * 100)
    await outbox.mark_delivered(["m3"], now)
    assert await outbox.undelivered_count() == 2
    assert await outbox.due(now, 10) == []
    assert await outbox.next_due() == later
    async with backend.units() as unit:  # written after the postponement, due at once
        ref = await unit.refs.get("txn_1")
        await unit.refs.update(ref, ref, [movement("m4", "txn_1", now)], now=now)
        await unit.commit()
    # m4 is due, but waits behind m1 (due later) until m1 is delivered.
    assert await outbox.due(now, 10) == []
    retried = await outbox.due(later, 10)
    assert [(q.id, q.attempts) for q in retried] == [("m1", 1), ("m2", 0)]
    rows = {row.id: row for row in await backend.outbox_rows()}
    assert rows["m1"].last_error == ("refused " * 100)[:500]
    await outbox.mark_delivered(["m1", "m2"], now)
    assert [q.id for q in await outbox.due(now, 10)] == ["m4"]

    await outbox.mark_delivered(["m4"], now)
    assert await outbox.next_due() is None
    assert await outbox.purge(delivered_before=now) == 0
    assert await outbox.purge(delivered_before=now + timedelta(seconds=1)) == 4
    assert await backend.outbox_rows() == []
