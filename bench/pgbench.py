# ruff: noqa: E501  (the SQL of the flow reads best one statement per line)
"""The reference point for the database: pgbench running the SQL of one payment flow.

One pgbench "transaction" of this script is one whole flow, as the services write it
(pi/transactions/store.py, pi/payments/store.py, pi/platform/idempotency.py), against
the same tables (created by the services' own migrations), with the same durable
commits (`synchronous_commit` is forced on for the bench database):

1. CreateTransaction (transaction service), one commit: claim the idempotency key,
   insert the transaction, store the response under the key.
2. CreatePayment (payment service), first sight of the transaction: read the ref, the
   transaction service's LookupTransaction read, insert the ref (one commit), read it.
3. ... one commit before the processor is called: claim the key, lock the ref, insert
   the PROCESSING payment, add the hold to the ref, store a "pending" marker.
4. ... one commit to settle the processor's answer: lock key, ref and payment; payment
   SUCCEEDED; hold -> captured; the AUTHORIZATION and CAPTURE movements into the outbox;
   store the final response.
5. ApplyMovement x2 (transaction service), one commit each: lock the transaction, record
   the movement, add its deltas and the derived status.
6. The outbox dispatcher marks both movements delivered: one commit (the dispatcher
   batches this per round, so here PostgreSQL does a little more work than for real).

The mesh is still running while pgbench runs, so the script's outbox rows are written
with `next_attempt_time = 'infinity'`: the payment service's dispatcher never picks them
up (their payloads are filler bytes), and the script marks them delivered itself.

So 7 commits and ~30 statements per flow: pgbench's TPS here is the number of flows per
second PostgreSQL alone sustains on this box, and flows/s ÷ that TPS says how close the
Python services come to the database's own limit. `-M prepared` matches psycopg, which
prepares statements it sees repeatedly. Ids are time-ordered like `pi.platform.ids`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.database import Postgres
from bench.tools import run_measured

# A time-ordered id body like pi.platform.ids (12 hex chars of milliseconds + 14 random).
_ID = (
    "lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')"
    " || substr(md5(random()::text), 1, 14)"
)
_HASH = "'" + "ab" * 32 + "'"  # a sha256 hex digest
_TXN_RESPONSE = "convert_to(repeat('t', 160), 'UTF8')"  # ~ a serialized Transaction
_PAY_RESPONSE = "convert_to(repeat('p', 220), 'UTF8')"  # ~ a serialized Payment
_MOVEMENT = "convert_to(repeat('m', 110), 'UTF8')"  # ~ a serialized Movement

FLOW_SQL = f"""
\\set amount 1999
\\set m random(1, 16)
\\set k random(1, 9223372036854775806)
-- 1. CreateTransaction (TransactionService.create_transaction)
BEGIN;
INSERT INTO transactions.idempotency_keys (scope, operation, key, request_hash, response, create_time)
  VALUES ('mer_pgbench' || :m, 'CreateTransaction', 'pgb-' || :client_id || '-' || :k, {_HASH}, NULL, now())
  ON CONFLICT DO NOTHING RETURNING key;
INSERT INTO transactions.transactions (id, merchant_id, amount, currency, description, metadata,
    status, authorized_amount, captured_amount, refunded_amount, cancelled, last_payment_failed,
    create_time, update_time)
  VALUES ('txn_' || {_ID}, 'mer_pgbench' || :m, :amount, 'USD', 'bench order', '{{}}'::jsonb,
    'PENDING', 0, 0, 0, false, false, now(), now())
  RETURNING id AS txn \\gset
UPDATE transactions.idempotency_keys SET response = {_TXN_RESPONSE}
  WHERE scope = 'mer_pgbench' || :m AND operation = 'CreateTransaction' AND key = 'pgb-' || :client_id || '-' || :k;
COMMIT;
-- 2. CreatePayment (PaymentService.create_payment): first sight of the transaction
SELECT * FROM payments.transaction_refs WHERE transaction_id = :txn;
SELECT * FROM transactions.transactions WHERE id = :txn AND merchant_id = 'mer_pgbench' || :m;
BEGIN;
INSERT INTO payments.transaction_refs (transaction_id, merchant_id, amount, currency, closed,
    held_amount, captured_amount, refunded_amount, movement_count, create_time, update_time)
  VALUES (:txn, 'mer_pgbench' || :m, :amount, 'USD', false, 0, 0, 0, 0, now(), now())
  ON CONFLICT (transaction_id) DO NOTHING;
COMMIT;
SELECT * FROM payments.transaction_refs WHERE transaction_id = :txn;
-- 3. ... the PROCESSING payment and the hold, committed before the processor is called
BEGIN;
INSERT INTO payments.idempotency_keys (scope, operation, key, request_hash, response, create_time)
  VALUES ('mer_pgbench' || :m, 'CreatePayment', 'pgb-' || :client_id || '-' || :k, {_HASH}, NULL, now())
  ON CONFLICT DO NOTHING RETURNING key;
SELECT * FROM payments.transaction_refs WHERE transaction_id = :txn FOR UPDATE;
INSERT INTO payments.payments (id, merchant_id, transaction_id, amount, currency, method,
    capture_mode, status, failure_reason, captured_amount, refunded_amount, card_brand,
    card_last4, card_fingerprint, card_exp_month, card_exp_year, bank_account_holder_name,
    bank_account_last4, wallet_type, processor_reference, create_time, update_time)
  VALUES ('pay_' || substr(:txn::text, 5), 'mer_pgbench' || :m, :txn, :amount, 'USD', 'CARD',
    'AUTOMATIC', 'PROCESSING', NULL, 0, 0, 'VISA', '4242', {_HASH}, 12, 2035, NULL, NULL,
    NULL, NULL, now(), now());
UPDATE payments.transaction_refs SET held_amount = held_amount + :amount,
    captured_amount = captured_amount + 0, refunded_amount = refunded_amount + 0,
    closed = false, movement_count = movement_count + 0, update_time = now()
  WHERE transaction_id = :txn RETURNING movement_count;
UPDATE payments.idempotency_keys SET response = convert_to('pending pay_' || substr(:txn::text, 5), 'UTF8')
  WHERE scope = 'mer_pgbench' || :m AND operation = 'CreatePayment' AND key = 'pgb-' || :client_id || '-' || :k;
COMMIT;
-- 4. ... settle the processor's answer: SUCCEEDED, hold -> captured, two movements
BEGIN;
SELECT response FROM payments.idempotency_keys
  WHERE scope = 'mer_pgbench' || :m AND operation = 'CreatePayment' AND key = 'pgb-' || :client_id || '-' || :k FOR UPDATE;
SELECT * FROM payments.transaction_refs WHERE transaction_id = :txn FOR UPDATE;
SELECT * FROM payments.payments WHERE id = 'pay_' || substr(:txn::text, 5) FOR UPDATE;
UPDATE payments.payments SET status = 'SUCCEEDED', failure_reason = NULL, captured_amount = :amount,
    refunded_amount = 0, processor_reference = 'sbx_' || substr(:txn::text, 5), update_time = now()
  WHERE id = 'pay_' || substr(:txn::text, 5) AND status = 'PROCESSING' AND refunded_amount = 0;
UPDATE payments.transaction_refs SET held_amount = held_amount - :amount,
    captured_amount = captured_amount + :amount, refunded_amount = refunded_amount + 0,
    closed = false, movement_count = movement_count + 2, update_time = now()
  WHERE transaction_id = :txn RETURNING movement_count AS mc \\gset
INSERT INTO payments.outbox (id, transaction_id, seq, kind, payload, create_time, delivered_time,
    attempts, next_attempt_time, last_error)
  VALUES ('mov_' || substr(:txn::text, 5) || 'a', :txn, :mc - 1, 'AUTHORIZATION', {_MOVEMENT}, now(), NULL, 0, 'infinity', NULL);
INSERT INTO payments.outbox (id, transaction_id, seq, kind, payload, create_time, delivered_time,
    attempts, next_attempt_time, last_error)
  VALUES ('mov_' || substr(:txn::text, 5) || 'c', :txn, :mc, 'CAPTURE', {_MOVEMENT}, now(), NULL, 0, 'infinity', NULL);
UPDATE payments.idempotency_keys SET response = {_PAY_RESPONSE}
  WHERE scope = 'mer_pgbench' || :m AND operation = 'CreatePayment' AND key = 'pgb-' || :client_id || '-' || :k;
COMMIT;
-- 5. ApplyMovement (TransactionService.apply_movement): AUTHORIZATION
BEGIN;
SELECT * FROM transactions.transactions WHERE id = :txn AND merchant_id = 'mer_pgbench' || :m FOR UPDATE;
INSERT INTO transactions.applied_movements (id, transaction_id, payment_id, kind, authorized_delta,
    captured_delta, refunded_delta, occur_time, apply_time)
  VALUES ('mov_' || substr(:txn::text, 5) || 'a', :txn, 'pay_' || substr(:txn::text, 5), 'AUTHORIZATION', :amount, 0, 0, now(), now())
  ON CONFLICT (id) DO NOTHING RETURNING id;
UPDATE transactions.transactions SET authorized_amount = authorized_amount + :amount,
    captured_amount = captured_amount + 0, refunded_amount = refunded_amount + 0,
    status = 'AUTHORIZED', cancelled = false, last_payment_failed = false, update_time = now()
  WHERE id = :txn AND merchant_id = 'mer_pgbench' || :m RETURNING *;
COMMIT;
-- 5. ApplyMovement: CAPTURE
BEGIN;
SELECT * FROM transactions.transactions WHERE id = :txn AND merchant_id = 'mer_pgbench' || :m FOR UPDATE;
INSERT INTO transactions.applied_movements (id, transaction_id, payment_id, kind, authorized_delta,
    captured_delta, refunded_delta, occur_time, apply_time)
  VALUES ('mov_' || substr(:txn::text, 5) || 'c', :txn, 'pay_' || substr(:txn::text, 5), 'CAPTURE', 0, :amount, 0, now(), now())
  ON CONFLICT (id) DO NOTHING RETURNING id;
UPDATE transactions.transactions SET authorized_amount = authorized_amount + 0,
    captured_amount = captured_amount + :amount, refunded_amount = refunded_amount + 0,
    status = 'COMPLETED', cancelled = false, last_payment_failed = false, update_time = now()
  WHERE id = :txn AND merchant_id = 'mer_pgbench' || :m RETURNING *;
COMMIT;
-- 6. The dispatcher marks the movements delivered (it batches a round; here per flow).
UPDATE payments.outbox SET delivered_time = now()
  WHERE id IN ('mov_' || substr(:txn::text, 5) || 'a', 'mov_' || substr(:txn::text, 5) || 'c') AND delivered_time IS NULL;
"""

COMMITS_PER_FLOW = 7


def _join_continuations(sql: str) -> str:
    """pgbench ends an SQL command at a `;` followed by newline; keep ours on one line each."""
    out: list[str] = []
    current: list[str] = []
    for line in sql.strip().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        if stripped.startswith("\\"):
            if current:
                out.append(" ".join(current))
                current = []
            out.append(stripped)
            continue
        current.append(stripped)
        if stripped.endswith(";") or stripped.endswith("\\gset"):
            text = " ".join(current)
            if text.endswith("\\gset"):
                # `\gset` must follow the query on its own, without the semicolon.
                text = text[: -len("\\gset")].rstrip().rstrip(";") + "\n\\gset"
            out.append(text)
            current = []
    if current:
        out.append(" ".join(current))
    return "\n".join(out) + "\n"


def write_script(path: Path) -> Path:
    path.write_text(_join_continuations(FLOW_SQL))
    return path


def run(
    pg: Postgres, *, clients: int, threads: int, duration: float, workdir: Path
) -> dict[str, Any]:
    script = write_script(workdir / "pgbench_flow.sql")
    seconds = max(1, round(duration))
    args = [
        "pgbench",
        "-h",
        pg.host,
        "-p",
        str(pg.port),
        "-U",
        pg.user,
        "-n",  # no vacuum of pgbench's own tables (there are none)
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        str(max(1, min(threads, clients))),
        "-T",
        str(seconds),
        "-f",
        str(script),
        pg.database,
    ]
    done = run_measured(
        args, timeout=seconds + 60, env={"PGCONNECT_TIMEOUT": "10", "PATH": _path()}
    )
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed ({done.returncode}):\n{text[-3000:]}")
    tps = _number(r"tps = ([\d.]+) \(without initial connection time\)", text)
    if tps is None:
        tps = _number(r"tps = ([\d.]+)", text)
    return {
        "clients": clients,
        "duration_s": seconds,
        "flows": _integer(r"number of transactions actually processed: (\d+)", text),
        "failed": _integer(r"number of failed transactions: (\d+)", text) or 0,
        "tps": tps,
        "commits_per_flow": COMMITS_PER_FLOW,
        "latency_avg_ms": _number(r"latency average = ([\d.]+) ms", text),
        "loadgen": {
            "tool": "pgbench",
            "cpu_seconds": round(done.cpu_seconds, 2),
            "peak_rss_mib": round(done.max_rss_mib, 1),
        },
    }


def _path() -> str:
    import os

    return os.environ.get("PATH", "/usr/bin:/bin")


def _number(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


def _integer(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None
