"""The fault run's checker finds what it must: on PostgreSQL, with rows written as a
broken service would leave them, each kind of finding is reported (and a consistent
state gives none). The tables hold only the columns the checker reads."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from chaos.checks import Schemas, check
from chaos.load import Journal, PaymentRecord

TABLES = """
CREATE TABLE {p}.payments (id text PRIMARY KEY, transaction_id text, status text,
    amount bigint, captured_amount bigint, refunded_amount bigint,
    update_time timestamptz DEFAULT now());
CREATE TABLE {p}.refunds (id text PRIMARY KEY, payment_id text, amount bigint, status text);
CREATE TABLE {p}.outbox (id text PRIMARY KEY, delivered_time timestamptz);
CREATE TABLE {t}.transactions (id text PRIMARY KEY, amount bigint, captured_amount bigint,
    refunded_amount bigint);
CREATE TABLE {s}.authorizations (payment_id text PRIMARY KEY, outcome text, amount bigint,
    captured bigint, refunded bigint, voided boolean);
"""


@pytest.fixture
def world(_pg_admin: Callable[[str], None], pg_url: str) -> Iterator[tuple[str, Schemas]]:
    names = [f"t_{uuid.uuid4().hex[:16]}" for _ in range(3)]
    for name in names:
        _pg_admin(f'CREATE SCHEMA "{name}"')
    schemas = Schemas(payments=names[0], transactions=names[1], processor=names[2])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(TABLES.format(p=names[0], t=names[1], s=names[2]))
    yield pg_url, schemas
    for name in names:
        _pg_admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _sql(url: str, statement: str, *params: object) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params or None)


def _paid(url: str, s: Schemas, tx: str, pid: str, *, captured: int, refunded: int = 0) -> None:
    """A consistent captured payment of 1000: ours, the transaction's and the processor's."""
    _sql(url, f"INSERT INTO {s.transactions}.transactions VALUES (%s, 1000, %s, %s)",
         tx, captured, refunded)  # fmt: skip
    _sql(url, f"INSERT INTO {s.payments}.payments VALUES (%s, %s, 'SUCCEEDED', 1000, %s, %s)",
         pid, tx, captured, refunded)  # fmt: skip
    _sql(url, f"INSERT INTO {s.processor}.authorizations VALUES (%s, 'APPROVED', 1000, %s, %s,"
         " false)", pid, captured, refunded)  # fmt: skip
    if refunded:
        _sql(url, f"INSERT INTO {s.payments}.refunds VALUES (%s, %s, %s, 'SUCCEEDED')",
             f"r_{pid}", pid, refunded)  # fmt: skip


def _journal(*records: PaymentRecord) -> Journal:
    journal = Journal()
    for record in records:
        journal.transactions[record.transaction_id] = record.amount
        journal.add(record)
    return journal


def _record(tx: str, pid: str | None, status: str = "SUCCEEDED", **view: int) -> PaymentRecord:
    record = PaymentRecord(f"key_{tx}", tx, 1000, manual=status == "REQUIRES_CAPTURE")
    if pid:
        record.payment_ids.add(pid)
        record.acked = {"id": pid, "status": status, "captured": 1000, "refunded": 0, **view}
    return record


def test_a_consistent_state_has_no_finding(world: tuple[str, Schemas]) -> None:
    url, s = world
    _paid(url, s, "tx_1", "pay_1", captured=1000, refunded=250)
    found = check(url, _journal(_record("tx_1", "pay_1", refunded=250)), 30, s)
    assert found.summary()["lost"] == 0 and not found.failed(), found.summary()
    assert found.statuses == {"SUCCEEDED": 1}


def test_money_the_processor_moved_that_we_did_not_record_is_a_mismatch(
    world: tuple[str, Schemas],
) -> None:
    url, s = world
    _paid(url, s, "tx_1", "pay_1", captured=1000)
    # A refund the processor made whose settle never committed (the crash of F2).
    _sql(url, f"UPDATE {s.processor}.authorizations SET refunded = 400")
    record = _record("tx_1", "pay_1")
    record.unknown.add("refund")  # the client never heard back: not lost, but mismatched
    found = check(url, _journal(record), 30, s)
    assert (len(found.lost), len(found.mismatch)) == (0, 1)
    assert "400" in found.mismatch[0]


def test_an_acknowledged_payment_missing_or_changed_is_lost(world: tuple[str, Schemas]) -> None:
    url, s = world
    _paid(url, s, "tx_1", "pay_1", captured=1000)
    _sql(url, f"INSERT INTO {s.transactions}.transactions VALUES ('tx_2', 1000, 0, 0)")
    journal = _journal(_record("tx_1", "pay_1", refunded=100), _record("tx_2", "pay_gone"))
    found = check(url, journal, 30, s)
    assert sorted(found.lost) == [
        "payment pay_1: told refunded 100, holds 0",
        "payment pay_gone (key key_tx_2) is missing",
    ]


def test_two_payments_for_one_key_or_transaction_are_double_charges(
    world: tuple[str, Schemas],
) -> None:
    url, s = world
    _paid(url, s, "tx_1", "pay_1", captured=1000)
    _sql(url, f"INSERT INTO {s.payments}.payments VALUES ('pay_2', 'tx_1', 'SUCCEEDED', 1000,"
         " 1000, 0)")  # fmt: skip
    _sql(url, f"INSERT INTO {s.processor}.authorizations VALUES ('pay_2', 'APPROVED', 1000,"
         " 1000, 0, false)")  # fmt: skip
    record = _record("tx_1", "pay_1")
    record.payment_ids.add("pay_2")
    found = check(url, _journal(record), 30, s)
    assert len(found.double) == 2  # the key answered twice; the transaction charged twice
    assert found.mismatch  # and the transaction's 1000 is not its payments' 2000


def test_a_hold_released_here_but_not_at_the_processor_is_a_mismatch(
    world: tuple[str, Schemas],
) -> None:
    url, s = world
    _sql(url, f"INSERT INTO {s.transactions}.transactions VALUES ('tx_1', 1000, 0, 0)")
    _sql(url, f"INSERT INTO {s.payments}.payments VALUES ('pay_1', 'tx_1', 'CANCELLED', 1000,"
         " 0, 0)")  # fmt: skip
    _sql(url, f"INSERT INTO {s.processor}.authorizations VALUES ('pay_1', 'APPROVED', 1000,"
         " 0, 0, false)")  # fmt: skip
    found = check(url, _journal(_record("tx_1", "pay_1", "CANCELLED", captured=0)), 30, s)
    assert len(found.mismatch) == 1 and "CANCELLED" in found.mismatch[0]


def test_pending_past_the_window_and_backlogs_are_reported(world: tuple[str, Schemas]) -> None:
    url, s = world
    _sql(url, f"INSERT INTO {s.transactions}.transactions VALUES ('tx_1', 1000, 0, 0)")
    _sql(url, f"INSERT INTO {s.payments}.payments VALUES ('pay_1', 'tx_1', 'PROCESSING', 1000,"
         " 0, 0, now() - interval '5 minutes')")  # fmt: skip
    _sql(url, f"INSERT INTO {s.payments}.outbox VALUES ('m1', NULL), ('m2', now())")
    _sql(url, f"CREATE TABLE {s.payments}.dead_letters (id text)")
    _sql(url, f"INSERT INTO {s.payments}.dead_letters VALUES ('m3')")
    found = check(url, _journal(_record("tx_1", "pay_1", "PROCESSING")), 30, s)
    assert found.pending == ["payment pay_1 still PROCESSING"]
    assert found.outbox_undelivered == 1
    assert found.dead_letters == {f"{s.payments}.dead_letters": 1}


def test_a_payment_failed_here_but_charged_there_is_a_mismatch(world: tuple[str, Schemas]) -> None:
    url, s = world
    _sql(url, f"INSERT INTO {s.transactions}.transactions VALUES ('tx_1', 1000, 0, 0)")
    _sql(url, f"INSERT INTO {s.payments}.payments VALUES ('pay_1', 'tx_1', 'FAILED', 1000, 0, 0)")
    _sql(url, f"INSERT INTO {s.processor}.authorizations VALUES ('pay_1', 'APPROVED', 1000,"
         " 1000, 0, false)")  # fmt: skip
    found = check(url, _journal(_record("tx_1", "pay_1", "FAILED", captured=0)), 30, s)
    assert found.mismatch == [
        "payment pay_1: FAILED here; captured/refunded 0/0 here, 1000/0 there"
    ]
    assert not found.lost
