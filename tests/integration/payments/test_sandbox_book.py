"""The sandbox processor's PostgreSQL book: what it did is committed before it answers,
survives the connector (a process that died), is shared by two connectors (replicas),
and stays one capture per payment and one refund per key under concurrent calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import pytest

from pi.payments.adapters.processor import SandboxConnector
from pi.payments.adapters.processor.book import PostgresBook, open_postgres_book
from pi.payments.domain import FailureReason, ProcessorOutcome
from tests.support.sandbox import capture_of, card_authorization, refund_of, void_of

OpenConnector = Callable[[], Awaitable[SandboxConnector]]


@pytest.fixture
async def open_connector(pg_url: str, pg_schema: str) -> AsyncIterator[OpenConnector]:
    books: list[PostgresBook] = []

    async def open_one() -> SandboxConnector:
        book = await open_postgres_book(pg_url, schema=pg_schema)
        books.append(book)
        return SandboxConnector(book=book)

    yield open_one
    for book in books:
        await book.close()


def _row(pg_url: str, schema: str, payment_id: str) -> tuple[object, ...] | None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return conn.execute(
            f"SELECT outcome, amount, captured, refunded, voided FROM {schema}.authorizations"
            " WHERE payment_id = %s",
            (payment_id,),
        ).fetchone()


async def test_an_approval_is_committed_before_the_answer_and_outlives_the_connector(
    open_connector: OpenConnector, pg_url: str, pg_schema: str
) -> None:
    first = await open_connector()
    approved = await first.authorize(card_authorization("pay_1", 1500, capture=True))
    assert approved.outcome is ProcessorOutcome.APPROVED
    # Read on another connection, as the chaos checker does: committed already.
    assert _row(pg_url, pg_schema, "pay_1") == ("APPROVED", 1500, 1500, 0, False)
    await first.close()

    restarted = await open_connector()  # a new process: nothing in memory
    status = await restarted.status("pay_1")
    assert (status.outcome, status.reference) == (ProcessorOutcome.APPROVED, approved.reference)
    unknown = await restarted.status("pay_never")
    assert unknown.failure_reason is FailureReason.PROCESSOR_UNAVAILABLE


async def test_replicas_share_one_book_and_keys_replay_across_them(
    open_connector: OpenConnector, pg_url: str, pg_schema: str
) -> None:
    a, b = await open_connector(), await open_connector()
    first, second = await asyncio.gather(
        a.authorize(card_authorization("pay_2", 1000)),
        b.authorize(card_authorization("pay_2", 1000)),
    )
    assert first == second  # one authorization, whoever came first
    captured = await a.capture(capture_of("pay_2", 1000))
    assert captured.outcome is ProcessorOutcome.APPROVED
    assert await b.capture(capture_of("pay_2", 1000)) == captured  # same key: replayed
    other_key = await b.capture(capture_of("pay_2", 1000, key="capture_again"))
    assert other_key.outcome is ProcessorOutcome.DECLINED  # captured once only
    assert (await a.void(void_of("pay_2"))).outcome is ProcessorOutcome.DECLINED
    assert _row(pg_url, pg_schema, "pay_2") == ("APPROVED", 1000, 1000, 0, False)


async def test_concurrent_refunds_never_exceed_the_capture(
    open_connector: OpenConnector, pg_url: str, pg_schema: str
) -> None:
    a, b = await open_connector(), await open_connector()
    await a.authorize(card_authorization("pay_3", 1000, capture=True))
    results = await asyncio.gather(
        *((a if i % 2 else b).refund(refund_of("pay_3", 300, f"refund_{i}")) for i in range(6))
    )
    approved = [r for r in results if r.outcome is ProcessorOutcome.APPROVED]
    assert len(approved) == 3  # 900 of 1000; a fourth would exceed the capture
    assert _row(pg_url, pg_schema, "pay_3") == ("APPROVED", 1000, 1000, 900, False)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        kinds = conn.execute(
            f"SELECT outcome, count(*) FROM {pg_schema}.operations WHERE payment_id = 'pay_3'"
            " GROUP BY outcome ORDER BY outcome"
        ).fetchall()
    assert kinds == [("APPROVED", 3), ("DECLINED", 3)]


async def test_a_void_releases_the_hold(
    open_connector: OpenConnector, pg_url: str, pg_schema: str
) -> None:
    connector = await open_connector()
    await connector.authorize(card_authorization("pay_4", 700))
    assert (await connector.void(void_of("pay_4"))).outcome is ProcessorOutcome.APPROVED
    assert _row(pg_url, pg_schema, "pay_4") == ("APPROVED", 700, 0, 0, True)
    assert (await connector.capture(capture_of("pay_4", 700))).outcome is ProcessorOutcome.DECLINED


async def test_an_unreachable_book_answers_timeout(open_connector: OpenConnector) -> None:
    connector = await open_connector()
    await connector.close()  # the processor cannot be asked any more
    result = await connector.authorize(card_authorization("pay_5"))
    assert result.outcome is ProcessorOutcome.TIMEOUT
    assert (await connector.status("pay_5")).outcome is ProcessorOutcome.TIMEOUT
