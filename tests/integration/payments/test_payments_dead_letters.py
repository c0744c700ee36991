"""Dead letters on PostgreSQL: a movement the transaction service keeps refusing leaves
the outbox with its transaction's later movements, which then wait; the internal RPCs
list and retry them (the service credential only), and a retried transaction is
delivered in order."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from generated.pi.payments.v1 import payments_pb2
from pi.payments.adapters.postgres.tables import dead_letters, outbox
from pi.payments.adapters.processor import SandboxConnector
from pi.payments.app.create_payment import CreatePaymentInput
from pi.payments.app.ports import LedgerError, MovementOutcome, TransactionFacts
from pi.payments.app.use_cases import payment_use_cases
from pi.payments.domain import CaptureMode, CardInput, PaymentMethodType
from pi.payments.entrypoints.workers import OutboxDispatcher
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.principal import Principal
from pi.platform.ledger import Movement

MERCHANT = Principal.merchant("mer_dead")
EXPIRY = datetime.now(UTC).year + 2


class RefusingLedger:
    """Refuses every movement of the transactions in `refusing` (and, like the
    transaction service, every later one of theirs in the call)."""

    def __init__(self) -> None:
        self.refusing: set[str] = set()
        self.applied: list[Movement] = []

    async def lookup_transaction(self, merchant_id: str, transaction_id: str) -> TransactionFacts:
        return TransactionFacts(transaction_id, merchant_id, 10_000, "USD", cancelled=False)

    async def apply_movements(self, movements: Sequence[Movement]) -> list[MovementOutcome]:
        outcomes = []
        for movement in movements:
            if movement.transaction_id in self.refusing:
                error = LedgerError("FAILED_PRECONDITION", "no", "TRANSACTION_CANCELLED")
                outcomes.append(MovementOutcome(movement.id, error))
            else:
                self.applied.append(movement)
                outcomes.append(MovementOutcome(movement.id))
        return outcomes


async def test_a_refused_transaction_goes_to_the_dead_letters_and_comes_back_in_order(
    make_backend: Callable[[str], Awaitable[Any]],
) -> None:
    backend = await make_backend("postgresql")
    ledger = RefusingLedger()
    now = [datetime.now(UTC)]
    dispatcher = OutboxDispatcher(
        backend.outbox, ledger, base_backoff=1.0, max_attempts=3, clock=lambda: now[0]
    )
    use = payment_use_cases(
        backend.units,
        SandboxConnector(),
        ledger,
        card_key=secrets.token_bytes(32),
        request_key=secrets.token_bytes(32),
        page_tokens=PageToken(secrets.token_bytes(32)),
    )

    async def pay(transaction_id: str) -> Any:
        data = CreatePaymentInput(
            transaction_id,
            100,
            PaymentMethodType.CARD,
            CaptureMode.AUTOMATIC,
            card=CardInput("4242424242424242", 1, EXPIRY, "123"),
        )
        return await use.create_payment(MERCHANT, data, idempotency_key=None)

    await pay("txn_bad")
    await pay("txn_good")
    ledger.refusing.add("txn_bad")
    now[0] = datetime.now(UTC)
    for _ in range(3):
        await dispatcher.deliver_once()
        now[0] += timedelta(minutes=1)
    async with backend.engine.connect() as conn:
        dead = (await conn.execute(sa.select(dead_letters).order_by(dead_letters.c.seq))).all()
        left = (
            await conn.execute(sa.select(outbox.c.id).where(outbox.c.transaction_id == "txn_bad"))
        ).all()
    assert [(row.kind, row.seq) for row in dead] == [("AUTHORIZATION", 1), ("CAPTURE", 2)]
    assert dead[0].attempts == 3 and dead[0].last_error.startswith("FAILED_PRECONDITION")
    assert left == []
    assert {m.transaction_id for m in ledger.applied} == {"txn_good"}

    await pay("txn_bad")  # its movements wait behind the dead letters
    assert await dispatcher.deliver_once() == (0, False)
    assert await backend.outbox.next_due() is None
    listed = await backend.outbox.dead_letters(1, after=None)
    rest = await backend.outbox.dead_letters(5, after=(listed[0].dead_time, listed[0].movement_id))
    assert len(listed) == 1 and len(rest) == 1 and listed[0] != rest[0]

    ledger.refusing.clear()
    assert await backend.outbox.retry_dead_letters(["txn_bad"], now[0]) == 2
    await dispatcher.drain(timeout=10)
    kinds = [m.kind.value for m in ledger.applied if m.transaction_id == "txn_bad"]
    assert kinds == ["AUTHORIZATION", "CAPTURE", "AUTHORIZATION", "CAPTURE"]
    assert await backend.outbox.dead_letters(5, after=None) == []


async def test_the_dead_letter_rpcs_list_and_retry_for_the_service_credential_only(
    mesh: Any,
) -> None:
    txn = await mesh.create_transaction("mer_dl", 1000)
    held = await mesh.pay("mer_dl", txn.id, amount=400, manual=True)
    await mesh.drain()
    await mesh.stop_transactions()
    await mesh.capture("mer_dl", held.id)
    undelivered = [
        row
        for row in await _outbox_rows(mesh)
        if row.transaction_id == txn.id and row.delivered_time is None
    ]
    assert [row.kind for row in undelivered] == ["CAPTURE"]
    outbox_ = mesh.payments_app.outbox
    assert await outbox_.dead_letter(txn.id, undelivered[0].id, "refused", datetime.now(UTC)) == 1

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mesh.payment_ledger.ListDeadLetters(
            payments_pb2.ListDeadLettersRequest(), metadata=mesh.merchant("mer_dl")
        )
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    listed = await mesh.payment_ledger.ListDeadLetters(
        payments_pb2.ListDeadLettersRequest(page_size=10), metadata=mesh.service
    )
    assert [(d.transaction_id, d.kind, d.last_error) for d in listed.dead_letters] == [
        (txn.id, "CAPTURE", "refused")
    ]
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await mesh.payment_ledger.RetryDeadLetters(
            payments_pb2.RetryDeadLettersRequest(), metadata=mesh.service
        )
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    await mesh.start_transactions()
    retried = await mesh.payment_ledger.RetryDeadLetters(
        payments_pb2.RetryDeadLettersRequest(transaction_ids=[txn.id]), metadata=mesh.service
    )
    assert retried.retried_count == 1
    await mesh.drain()
    got = await mesh.get_transaction("mer_dl", txn.id)
    assert got.captured_amount == 400
    empty = await mesh.payment_ledger.ListDeadLetters(
        payments_pb2.ListDeadLettersRequest(), metadata=mesh.service
    )
    assert list(empty.dead_letters) == []


async def _outbox_rows(mesh: Any) -> list[Any]:
    async with mesh.payments_engine.connect() as conn:
        return list((await conn.execute(sa.select(outbox).order_by(outbox.c.seq))).all())
