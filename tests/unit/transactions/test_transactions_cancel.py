"""CancelTransaction on the in-memory store, with a fake payment service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from pi.platform.kernel.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from pi.platform.kernel.principal import Principal
from pi.transactions.app.use_cases import TransactionUseCases
from pi.transactions.domain import Movement, MovementKind, TransactionStatus
from tests.unit.transactions.fakes import FakePaymentLedger

ALICE = Principal.merchant("mer_alice")
BOB = Principal.merchant("mer_bob")
SERVICE = Principal.service()

Rows = Callable[[str], int]


async def create(service: TransactionUseCases, amount: int = 10_000, **fields: Any) -> Any:
    values: dict[str, Any] = {"currency": "USD", "description": "", "metadata": {}}
    values.update(fields)
    return await service.create_transaction(ALICE, amount=amount, **values)


def movement(
    transaction: Any,
    kind: MovementKind,
    *,
    id: str,
    authorized: int = 0,
    captured: int = 0,
) -> Movement:
    return Movement(
        id=id,
        merchant_id=transaction.merchant_id,
        transaction_id=transaction.id,
        payment_id="pay_test",
        kind=kind,
        authorized_delta=authorized,
        captured_delta=captured,
        refunded_delta=0,
        occur_time=datetime.now(UTC),
    )


async def test_cancel_closes_at_the_payment_service_then_shows_cancelled(
    service: TransactionUseCases, payments: FakePaymentLedger, rows: Rows
) -> None:
    created = await create(service, amount=2500, currency="JPY")
    cancelled = await service.cancel_transaction(ALICE, created.id)
    assert cancelled.status is TransactionStatus.CANCELLED
    assert cancelled.update_time >= created.update_time
    assert payments.calls == [
        {
            "merchant_id": "mer_alice",
            "transaction_id": created.id,
            "amount": 2500,
            "currency": "JPY",
        }
    ]
    assert rows("applied_movements") == 1
    assert (await service.get_transaction(ALICE, created.id)).status is TransactionStatus.CANCELLED
    # Cancelling again returns it as it is and asks nobody.
    again = await service.cancel_transaction(ALICE, created.id)
    assert again == cancelled
    assert len(payments.calls) == 1


async def test_cancel_voids_what_was_authorized_and_keeps_it_cancelled(
    service: TransactionUseCases,
) -> None:
    created = await create(service, amount=1000)
    await service.apply_movement(
        SERVICE, movement(created, MovementKind.AUTHORIZATION, id="m1", authorized=600)
    )
    cancelled = await service.cancel_transaction(ALICE, created.id)
    assert (cancelled.status, cancelled.authorized_amount) == (TransactionStatus.CANCELLED, 600)
    # The void the payment service delivers later still applies, and it stays cancelled.
    after = await service.apply_movement(
        SERVICE, movement(created, MovementKind.VOID, id="m2", authorized=-600)
    )
    assert (after.status, after.authorized_amount) == (TransactionStatus.CANCELLED, 0)


async def test_cancel_is_refused_when_money_was_captured(
    service: TransactionUseCases, payments: FakePaymentLedger
) -> None:
    created = await create(service, amount=1000)
    await service.apply_movement(
        SERVICE, movement(created, MovementKind.AUTHORIZATION, id="m1", authorized=1000)
    )
    await service.apply_movement(
        SERVICE, movement(created, MovementKind.CAPTURE, id="m2", captured=400, authorized=-600)
    )
    with pytest.raises(FailedPrecondition) as caught:
        await service.cancel_transaction(ALICE, created.id)
    assert caught.value.reason == "TRANSACTION_CAPTURED"
    assert "Refund the payments instead." in caught.value.message
    assert payments.calls == []


async def test_cancel_passes_on_the_payment_services_refusal(
    service: TransactionUseCases, payments: FakePaymentLedger, rows: Rows
) -> None:
    created = await create(service)
    payments.error = FailedPrecondition("captured", reason="TRANSACTION_CAPTURED")
    with pytest.raises(FailedPrecondition) as caught:
        await service.cancel_transaction(ALICE, created.id, idempotency_key="c1", fingerprint="f")
    assert caught.value.reason == "TRANSACTION_CAPTURED"
    assert (await service.get_transaction(ALICE, created.id)).status is TransactionStatus.PENDING
    assert rows("idempotency_keys") == 0


async def test_cancel_while_the_payment_service_is_down_changes_nothing(
    service: TransactionUseCases, payments: FakePaymentLedger, rows: Rows
) -> None:
    created = await create(service)
    payments.error = Unavailable("down", reason="PAYMENT_SERVICE_UNAVAILABLE")
    with pytest.raises(Unavailable):
        await service.cancel_transaction(ALICE, created.id, idempotency_key="c1", fingerprint="f")
    assert await service.get_transaction(ALICE, created.id) == created
    assert rows("applied_movements") == 0
    assert rows("idempotency_keys") == 0
    # The retry with the same key works once the payment service is back.
    payments.error = None
    cancelled = await service.cancel_transaction(
        ALICE, created.id, idempotency_key="c1", fingerprint="f"
    )
    assert cancelled.status is TransactionStatus.CANCELLED


async def test_cancel_of_another_merchants_transaction_is_not_found(
    service: TransactionUseCases, payments: FakePaymentLedger
) -> None:
    created = await create(service)
    with pytest.raises(NotFound) as caught:
        await service.cancel_transaction(BOB, created.id)
    assert caught.value.reason == "TRANSACTION_NOT_FOUND"
    assert payments.calls == []
    assert (await service.get_transaction(ALICE, created.id)).status is TransactionStatus.PENDING


async def test_cancel_checks_the_caller_and_the_id_first(
    service: TransactionUseCases, payments: FakePaymentLedger
) -> None:
    created = await create(service)
    with pytest.raises(PermissionDenied):
        await service.cancel_transaction(SERVICE, created.id)
    with pytest.raises(InvalidArgument) as caught:
        await service.cancel_transaction(ALICE, "")
    assert [v.field for v in caught.value.violations] == ["id"]
    assert payments.calls == []


async def test_cancel_with_a_key_replays_and_never_closes_another_transaction(
    service: TransactionUseCases, payments: FakePaymentLedger, rows: Rows
) -> None:
    first = await create(service)
    second = await create(service)
    cancelled = await service.cancel_transaction(
        ALICE, first.id, idempotency_key="cancel-1", fingerprint="fp-first"
    )
    replay = await service.cancel_transaction(
        ALICE, first.id, idempotency_key="cancel-1", fingerprint="fp-first"
    )
    assert replay == cancelled
    with pytest.raises(AlreadyExists) as caught:
        await service.cancel_transaction(
            ALICE, second.id, idempotency_key="cancel-1", fingerprint="fp-second"
        )
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert [call["transaction_id"] for call in payments.calls] == [first.id]
    assert (await service.get_transaction(ALICE, second.id)).status is TransactionStatus.PENDING
    assert rows("idempotency_keys") == 1


async def test_a_replayed_cancel_answers_what_the_first_answered(
    service: TransactionUseCases, payments: FakePaymentLedger
) -> None:
    created = await create(service, amount=1000)
    cancelled = await service.cancel_transaction(
        ALICE, created.id, idempotency_key="c", fingerprint="f"
    )
    await service.apply_movement(
        SERVICE, movement(created, MovementKind.AUTHORIZATION, id="late", authorized=10)
    )
    replay = await service.cancel_transaction(
        ALICE, created.id, idempotency_key="c", fingerprint="f"
    )
    assert replay == cancelled  # the stored answer, not the transaction as it is now
    assert len(payments.calls) == 1


async def test_cancel_after_the_outbox_delivered_the_cancellation_applies_it_once(
    service: TransactionUseCases, rows: Rows
) -> None:
    created = await create(service)
    await service.apply_movement(
        SERVICE, movement(created, MovementKind.CANCELLATION, id=f"mov_cancel_{created.id}")
    )
    cancelled = await service.cancel_transaction(ALICE, created.id)
    assert cancelled.status is TransactionStatus.CANCELLED
    assert rows("applied_movements") == 1
