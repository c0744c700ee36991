"""One replica at a time runs the payment service's dispatcher and reconciler: two real
payment service instances (two pools on one schema) share the workers' advisory-lock
lease. The leader delivers what the other commits; when the leader's connection is
closed under it, it stops its workers; when the leader dies, the other takes over."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from pi.payments import bootstrap as payments_bootstrap
from pi.payments.adapters.postgres.lease import lease_key
from pi.payments.app.create_payment import CreatePaymentInput
from pi.payments.app.ports import MovementOutcome, TransactionFacts
from pi.payments.bootstrap import PaymentsApp
from pi.payments.domain import CaptureMode, CardInput, PaymentMethodType
from pi.payments.settings import PaymentsSettings
from pi.platform.db.engine import libpq_url
from pi.platform.kernel.principal import Principal
from pi.platform.ledger import Movement
from pi.platform.security.tokens import StaticKeySource

MERCHANT = Principal.merchant("mer_lead")
EXPIRY = datetime.now(UTC).year + 2


class RecordingLedger:
    def __init__(self) -> None:
        self.applied: list[Movement] = []

    async def lookup_transaction(self, merchant_id: str, transaction_id: str) -> TransactionFacts:
        return TransactionFacts(transaction_id, merchant_id, 10_000, "USD", cancelled=False)

    async def apply_movements(self, movements: Sequence[Movement]) -> list[MovementOutcome]:
        self.applied.extend(movements)
        return [MovementOutcome(m.id) for m in movements]


class Replica:
    def __init__(self, app: PaymentsApp, ledger: RecordingLedger) -> None:
        self.app = app
        self.ledger = ledger
        self.task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        return self.app.leadership.leading

    def start(self) -> None:
        self.task = asyncio.create_task(self.app.leadership.run())

    async def die(self) -> None:
        """The process stops: its tasks end and its connections close."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.app.database.close()

    async def pay(self, transaction_id: str) -> Any:
        data = CreatePaymentInput(
            transaction_id,
            100,
            PaymentMethodType.CARD,
            CaptureMode.AUTOMATIC,
            card=CardInput("4242424242424242", 1, EXPIRY, "123"),
        )
        return await self.app.use_cases.create_payment(MERCHANT, data, idempotency_key=None)


async def eventually(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


@pytest.fixture
async def replicas(
    pay_settings: PaymentsSettings, es256_signer: Any
) -> AsyncIterator[tuple[Replica, Replica]]:
    keys = StaticKeySource({es256_signer.kid: es256_signer.public_key})
    made = []
    for _ in range(2):
        ledger = RecordingLedger()
        app = await payments_bootstrap.build(pay_settings, ledger=ledger, key_source=keys)
        made.append(Replica(app, ledger))
    try:
        yield made[0], made[1]
    finally:
        for replica in made:
            if replica.task is not None and not replica.task.done():
                replica.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replica.task
            with contextlib.suppress(Exception):
                await replica.app.close()


def terminate_lease_holder(pg_url: str, lease_name: str) -> int:
    """Close the session holding the lease from the server's side; how many were closed."""
    key = lease_key(lease_name) & 0xFFFF_FFFF_FFFF_FFFF
    with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted AND classid = %s AND objid = %s AND objsubid = 1",
            (key >> 32, key & 0xFFFF_FFFF),
        ).fetchall()
    return len(rows)


async def test_one_replica_leads_delivers_for_both_and_the_other_takes_over(
    replicas: tuple[Replica, Replica], pay_settings: PaymentsSettings, pg_url: str
) -> None:
    first, second = replicas
    first.start()
    await eventually(lambda: first.leading)
    second.start()
    await asyncio.sleep(3)  # more than a retry: the lease is taken
    assert first.leading and not second.leading

    # What the follower commits, the leader delivers (by polling: nobody nudges it).
    await second.pay("txn_follower")
    await eventually(lambda: len(first.ledger.applied) == 2)
    assert {m.transaction_id for m in first.ledger.applied} == {"txn_follower"}
    assert second.ledger.applied == []

    # The leader's connection is closed under it: it stops its workers, and the lease,
    # freed with the session, goes to whichever replica asks first.
    lease = f"{pay_settings.db_schema}.workers"
    assert await asyncio.to_thread(terminate_lease_holder, pg_url, lease) == 1
    await eventually(lambda: first.app.leadership.terms == 2 or second.leading)
    await eventually(lambda: first.leading != second.leading)

    # The leader dies: the other takes over and delivers.
    leader, follower = (first, second) if first.leading else (second, first)
    await leader.die()
    await eventually(lambda: follower.leading)
    await follower.pay("txn_after")
    await eventually(lambda: any(m.transaction_id == "txn_after" for m in follower.ledger.applied))
