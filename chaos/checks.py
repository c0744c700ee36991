"""After a scenario: compare what clients were told, what PostgreSQL holds, and what the
sandbox processor's own book says. Plain SQL on the `payments`, `transactions` and
`sandbox_processor` schemas, so it holds whatever the services do inside.

Counted per scenario:
- lost: a payment or transaction acknowledged to a client that is missing, or whose
  state differs from the last one acknowledged when no later call of the client on it
  went unanswered (an unanswered call may or may not have happened);
- double charges: one creation key answered with two payment ids, one refund key with
  two refunds, or one transaction with money taken by more than one payment;
- money mismatches: per payment, the processor's captured, refunded, voided/held
  against ours; per transaction, its amounts against the sum of its payments and
  refunds; per payment, the refunds against its refunded amount;
- pending: a unit still PROCESSING past the reconciler's window; the outbox backlog and
  every dead-letter table found are reported.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

from chaos.load import Journal, PaymentRecord

HOLDING = "REQUIRES_CAPTURE"


@dataclass(frozen=True)
class Schemas:
    """Where the services and the sandbox processor keep their tables."""

    payments: str = "payments"
    transactions: str = "transactions"
    processor: str = "sandbox_processor"


DEFAULT_SCHEMAS = Schemas()


@dataclass
class Findings:
    lost: list[str] = field(default_factory=list)
    double: list[str] = field(default_factory=list)
    mismatch: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    outbox_undelivered: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)

    def failed(self) -> bool:
        return bool(self.lost or self.double or self.mismatch or self.pending)

    def summary(self, examples: int = 100) -> dict[str, Any]:
        return {
            "lost": len(self.lost),
            "double_charges": len(self.double),
            "money_mismatches": len(self.mismatch),
            "pending_past_window": len(self.pending),
            "outbox_undelivered": self.outbox_undelivered,
            "dead_letters": self.dead_letters,
            "payment_statuses": dict(self.statuses),
            "examples": {
                "lost": self.lost[:examples],
                "double_charges": self.double[:examples],
                "money_mismatches": self.mismatch[:examples],
                "pending": self.pending[:examples],
            },
        }


def _rows(conn: psycopg.Connection[Any], query: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(query, params or None).fetchall()


def wait_settled(
    url: str, transaction_ids: list[str], timeout: float, s: Schemas = DEFAULT_SCHEMAS
) -> float:
    """Wait until the outbox is delivered and none of these payments is PROCESSING (the
    reconciler and dispatcher done); seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                backlog = _rows(
                    conn, f"SELECT count(*) FROM {s.payments}.outbox WHERE delivered_time IS NULL"
                )[0][0]
                processing = _rows(
                    conn,
                    f"SELECT count(*) FROM {s.payments}.payments"
                    " WHERE transaction_id = ANY(%s) AND status = 'PROCESSING'",
                    transaction_ids,
                )[0][0]
            if backlog == 0 and processing == 0:
                break
        except psycopg.Error:
            pass
        time.sleep(0.5)
    return time.monotonic() - started


def check(
    url: str, journal: Journal, window_seconds: float, s: Schemas = DEFAULT_SCHEMAS
) -> Findings:
    found = Findings()
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        _check_payments(conn, s, journal, found)
        _check_transactions(conn, s, journal, found)
        _check_pending(conn, s, journal, found, window_seconds)
        _report_backlogs(conn, s, found)
    return found


def _check_payments(
    conn: psycopg.Connection[Any], s: Schemas, journal: Journal, found: Findings
) -> None:
    # Every payment of the scenario's transactions: also those whose creation was never
    # answered (the processor may have charged them all the same).
    ours = {
        row[0]: row
        for row in _rows(
            conn,
            "SELECT id, transaction_id, status, amount, captured_amount, refunded_amount"
            f" FROM {s.payments}.payments WHERE transaction_id = ANY(%s)",
            sorted(journal.transactions),
        )
    }
    ids = sorted(ours)
    theirs = {
        row[0]: row
        for row in _rows(
            conn,
            "SELECT payment_id, outcome, amount, captured, refunded, voided"
            f" FROM {s.processor}.authorizations WHERE payment_id = ANY(%s)",
            ids,
        )
    }
    refunds = dict(
        _rows(
            conn,
            f"SELECT payment_id, sum(amount) FROM {s.payments}.refunds"
            " WHERE payment_id = ANY(%s) AND status = 'SUCCEEDED' GROUP BY payment_id",
            ids,
        )
    )
    unanswered = {pid: r.unknown for r in journal.payments for pid in r.payment_ids}
    for pid, row in ours.items():
        found.statuses[row[2]] += 1
        unknown = sorted(unanswered.get(pid, ()))
        context = f" (client calls left unanswered: {', '.join(unknown)})" if unknown else ""
        _against_processor(pid, row, theirs.get(pid), found, context)
        if int(refunds.get(pid) or 0) != row[5]:
            found.mismatch.append(
                f"payment {pid}: refunds sum to {refunds.get(pid) or 0}, refunded {row[5]}"
            )
    for record in journal.payments:
        if len(record.payment_ids) > 1:
            found.double.append(f"key {record.key}: payments {sorted(record.payment_ids)}")
        for key, refund_ids in record.refund_ids.items():
            if len(refund_ids) > 1:
                found.double.append(f"refund key {key}: refunds {sorted(refund_ids)}")
        for pid in record.payment_ids:
            if pid not in ours:
                found.lost.append(f"payment {pid} (key {record.key}) is missing")
            else:
                _against_ack(record, ours[pid], found)


def _against_ack(record: PaymentRecord, row: tuple[Any, ...], found: Findings) -> None:
    acked = record.acked
    if acked is None or acked["status"] == "PROCESSING":
        return  # nothing final was promised
    _pid, _tx, status, _amount, captured, refunded = row
    unknown = record.unknown
    moved = {"capture", "cancel"} & unknown
    if status != acked["status"] and not moved:
        found.lost.append(f"payment {row[0]}: told {acked['status']}, holds {status}")
    if captured != acked["captured"] and "capture" not in unknown:
        found.lost.append(f"payment {row[0]}: told captured {acked['captured']}, holds {captured}")
    if refunded < acked["refunded"] or (refunded != acked["refunded"] and "refund" not in unknown):
        found.lost.append(f"payment {row[0]}: told refunded {acked['refunded']}, holds {refunded}")


def _against_processor(
    pid: str, row: tuple[Any, ...], book: tuple[Any, ...] | None, found: Findings, context: str
) -> None:
    _pid, _tx, status, _amount, captured, refunded = row
    if book is None:
        if status in (HOLDING, "SUCCEEDED") or captured or refunded:
            found.mismatch.append(f"payment {pid}: {status} here, unknown to the processor")
        return
    _p, outcome, held, p_captured, p_refunded, voided = book
    problems = []
    if (p_captured, p_refunded) != (captured, refunded):
        problems.append(
            f"captured/refunded {captured}/{refunded} here, {p_captured}/{p_refunded} there"
        )
    holding_there = outcome == "APPROVED" and not voided and p_captured == 0 and held > 0
    if (status == HOLDING) != holding_there and status != "PROCESSING":
        problems.append(f"processor {outcome}, held {held}, voided {voided}")
    if problems:
        found.mismatch.append(f"payment {pid}: {status} here; {'; '.join(problems)}{context}")


def _check_transactions(
    conn: psycopg.Connection[Any], s: Schemas, journal: Journal, found: Findings
) -> None:
    ids = sorted(journal.transactions)
    rows = _rows(
        conn,
        "SELECT t.id, t.amount, t.captured_amount, t.refunded_amount,"
        " coalesce(p.captured, 0), coalesce(p.refunded, 0), coalesce(p.charged, 0)"
        f" FROM {s.transactions}.transactions t LEFT JOIN ("
        "   SELECT transaction_id, sum(captured_amount) AS captured,"
        "          sum(refunded_amount) AS refunded,"
        "          count(*) FILTER (WHERE captured_amount > 0 OR status = 'REQUIRES_CAPTURE')"
        "            AS charged"
        f"   FROM {s.payments}.payments WHERE transaction_id = ANY(%s) GROUP BY transaction_id"
        " ) p ON p.transaction_id = t.id WHERE t.id = ANY(%s)",
        ids,
        ids,
    )
    seen = set()
    for tid, amount, captured, refunded, p_captured, p_refunded, charged in rows:
        seen.add(tid)
        if amount != journal.transactions[tid]:
            found.lost.append(f"transaction {tid}: told amount {journal.transactions[tid]}")
        if (captured, refunded) != (p_captured, p_refunded):
            found.mismatch.append(
                f"transaction {tid}: captured/refunded {captured}/{refunded},"
                f" its payments {p_captured}/{p_refunded}"
            )
        if charged > 1 or p_captured > amount:
            found.double.append(f"transaction {tid}: {charged} payments took money")
    found.lost.extend(f"transaction {tid} is missing" for tid in ids if tid not in seen)


def _check_pending(
    conn: psycopg.Connection[Any], s: Schemas, journal: Journal, found: Findings, window: float
) -> None:
    rows = _rows(
        conn,
        f"SELECT id, status FROM {s.payments}.payments WHERE transaction_id = ANY(%s)"
        " AND status = 'PROCESSING'"
        " AND update_time < now() - make_interval(secs => %s)",
        sorted(journal.transactions),
        window,
    )
    found.pending.extend(f"payment {pid} still {status}" for pid, status in rows)


def _report_backlogs(conn: psycopg.Connection[Any], s: Schemas, found: Findings) -> None:
    found.outbox_undelivered = _rows(
        conn, f"SELECT count(*) FROM {s.payments}.outbox WHERE delivered_time IS NULL"
    )[0][0]
    tables = _rows(
        conn,
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_schema IN (%s, %s) AND table_name LIKE %s",
        s.payments,
        s.transactions,
        "%dead%",
    )
    for schema, table in tables:  # whatever the dead-letter work names them
        count = _rows(conn, f'SELECT count(*) FROM "{schema}"."{table}"')[0][0]
        found.dead_letters[f"{schema}.{table}"] = count
