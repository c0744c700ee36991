# ruff: noqa: E501  (the SQL of the flow reads best one statement per line)
"""The reference point for the database: pgbench running the SQL of one payment flow.

One pgbench "transaction" of this script is one whole flow (POST /v1/transactions, then
POST /v1/payments with a card and automatic capture, an idempotency key on both), sent
statement for statement as the services send it (pi/transactions/adapters/postgres/,
pi/payments/adapters/postgres/, pi/platform/db/idempotency.py; checked against a statement log of
the mesh), against the same tables (created by the services' own migrations), with the
same durable commits (`synchronous_commit` is forced on for the bench database):

1. CreateTransaction (transaction service), one commit: claim the idempotency key
   already holding the response (INSERT .. ON CONFLICT DO NOTHING RETURNING), insert
   the transaction.
2. RegisterTransactions (the transaction service's `FactsPublisher` pushes the new
   transaction's facts to the payment service), one commit: one INSERT .. SELECT FROM
   unnest(..) ON CONFLICT DO NOTHING RETURNING into `transaction_refs`.
3. CreatePayment (payment service): an autocommit read of the ref; then T1, one
   commit before the processor is called: claim the key holding "pending <payment id>",
   the conditional ref UPDATE that adds the hold (applies only if the ref is still what
   was read), insert the PROCESSING payment.
4. ... T2, one commit to settle the processor's answer: replace the key's "pending"
   response by the final one (conditional on it); one INSERT .. SELECT per movement
   (AUTHORIZATION, then CAPTURE) appending it to the outbox from the ref row, with
   seq = the row's movement_count + 1 (+ 2), only if the hold is still there, FOR UPDATE
   (it locks the ref row first: the UPDATE that follows cannot hand it the count it
   returns, both going out before either result is read); the conditional ref UPDATE
   (hold -> captured, two movements; same condition); the conditional payment UPDATE
   (WHERE status = 'PROCESSING' ..) to SUCCEEDED.
5. The outbox dispatcher's round (pi/payments/app/deliver_movements.py): the due-movements SELECT
   (autocommit); ApplyMovements in the transaction service, one commit: lock the
   transactions (SELECT .. = ANY(..) ORDER BY id FOR UPDATE), record the movements
   (INSERT .. SELECT FROM unnest(..) ON CONFLICT DO NOTHING RETURNING id), one UPDATE
   per step (authorization, capture; pipelined in one round trip, as psycopg's
   executemany sends them); mark both movements delivered (one UPDATE .. = ANY(..),
   autocommit, a commit of its own); the idle wait's SELECT of the next due time.

So 6 durable commits (5 BEGIN/COMMIT blocks + the autocommit mark) and 19 statements per
flow besides BEGIN/COMMIT (2 + 1 + 1 + 3 + 5 + 1 + 4 + 1 + 1 in the order above; 3 of them
autocommit reads, which flush nothing): pgbench's TPS here is the number of flows per
second PostgreSQL alone sustains on this box, and flows/s ÷ that TPS says how close the
Python services come to the database's own limit.
`-M prepared` matches psycopg, which prepares statements it sees repeatedly. Ids are
time-ordered like `pi.platform.kernel.ids`; responses and payloads are filler bytes of the
services' sizes.

What this models per flow, and where it departs from the services:

- Batches as one flow's batch. RegisterTransactions (step 2) and the dispatcher's
  round (step 5) are batched across flows: under load one call carries the facts of
  every transaction created meanwhile, one round the movements of every flow settled
  meanwhile. Here each is a batch of this flow alone (one-row arrays, two movements),
  which is what the services send when flows do not overlap (one connection: one round
  per flow). Under load the per-call and per-round parts (the RegisterTransactions
  INSERT and its commit, the due SELECT, the lock SELECT, the movements INSERT, the
  ApplyMovements commit, the mark and its commit, the next-due SELECT: 6 statements and
  3 of the 6 commits) are shared by many flows, so this script makes PostgreSQL do more
  per flow than the mesh does. Its TPS is a floor of what PostgreSQL sustains for the
  services' batching, and flows/s ÷ TPS reads higher (closer to the limit) than it is.
  Per flow whatever the batch: the two step UPDATEs and the rows the batched
  statements write.
- Round trips. The services pipeline the write units of CreateTransaction, T1 and T2
  (`pi.platform.db.batch.Batch`, `Database.transaction(batch)`): the BEGIN and every
  statement of the unit go in one round trip, the COMMIT in a second, so each of those
  units costs the services two round trips whatever its number of statements. This
  script sends them one by one (BEGIN, each statement, COMMIT: 4, 5 and 7 round trips
  for those units instead of 2 each). CreateTransaction's claim hands the id on with
  `\\gset`, which a pgbench pipeline cannot carry; T1 and T2 are sent the same way.
  So each pgbench client pays more round trips, and holds its locks across more of
  them, than the services do: the same SQL and the same commits reach the server, but
  at a given number of clients pgbench's latency per flow is higher and its TPS, if
  anything, lower than the services' pipelining would get. RegisterTransactions and
  ApplyMovements are not pipelined units in the services (BEGIN, each statement and
  COMMIT one round trip each, as here), except ApplyMovements' step UPDATEs, which
  psycopg's executemany pipelines and this script does too.
- The happy path of CreatePayment: the facts arrived before the payment. When they did
  not (the push races the client's next call), the payment service looks the
  transaction up instead (LookupTransaction: one more read in the transaction service)
  and T1 inserts the ref itself; that path is not modelled.
- The mesh is still running while pgbench runs, so the script's outbox rows are written
  with `next_attempt_time = 'infinity'`: the payment service's dispatcher never picks
  them up (their payloads are filler bytes), and the script applies and marks them
  itself. For the same reason the script's due SELECT finds none of them (the real one
  returns the flow's two rows); it still runs the same query over the same index.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.database import Postgres
from bench.tools import run_measured
from pi.platform.db.embedded import binary

# A time-ordered id body like pi.platform.kernel.ids (12 hex chars of milliseconds + 14 random).
_ID = (
    "lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')"
    " || substr(md5(random()::text), 1, 14)"
)
_HASH = "'" + "ab" * 32 + "'"  # a sha256 hex digest (the request fingerprint)
_CARD_FINGERPRINT = "'" + "cd" * 16 + "'"  # the card fingerprint (32 hex chars)
# Sizes as the services store them: a JSON Transaction (~355 bytes), "P" + the payment
# id while pending, "R" + a JSON Payment (~604 bytes) when final, a Movement (~147 bytes).
_TXN_RESPONSE = "convert_to(repeat('t', 355), 'UTF8')"
_PAY_ID = "'pay_' || substr(:txn::text, 5)"
_PAY_PENDING = f"convert_to('P' || {_PAY_ID}, 'UTF8')"
_PAY_RESPONSE = "convert_to('R' || repeat('p', 603), 'UTF8')"
_MOVEMENT = "convert_to(repeat('m', 147), 'UTF8')"
_MERCHANT = "'mer_pgbench' || :m"
_KEY = "'pgb-' || :client_id || '-' || :k"
_MOV_A = "'mov_' || substr(:txn::text, 5) || 'a'"
_MOV_C = "'mov_' || substr(:txn::text, 5) || 'c'"
_TXN_COLUMNS = (
    "id, merchant_id, amount, currency, description, metadata, status, authorized_amount,"
    " captured_amount, refunded_amount, cancelled, last_payment_failed, create_time, update_time"
)
_REF_COLUMNS = (
    "transaction_id, merchant_id, amount, currency, closed, held_amount, captured_amount,"
    " refunded_amount, movement_count, create_time, update_time"
)

# The flow's SQL per unit, for the flow of suffix `{s}` (its variables: :txn{s}, :k{s}).
# `grouped_script(n)` puts n flows in each BEGIN .. COMMIT, as the services' group commit
# does under load; n = 1 is the flow alone, unit by unit.
_SETUP = """
\\set k{s} random(1, 9223372036854775806)
"""

# 1. CreateTransaction (TransactionService.create_transaction): the key is claimed already
#    holding the response (the services pipeline BEGIN + both, then COMMIT). (`txn` rides
#    on the claim's RETURNING: the service makes the id up front; pgbench needs a statement
#    to get a time-ordered one.)
_CREATE_TRANSACTION = f"""
INSERT INTO transactions.idempotency_keys (scope, operation, key, request_hash, response, create_time)
  VALUES ({_MERCHANT}, 'CreateTransaction', {_KEY}, {_HASH}, {_TXN_RESPONSE}, now())
  ON CONFLICT DO NOTHING RETURNING key AS key{{s}}, 'txn_' || {_ID} AS txn{{s}} \\gset
INSERT INTO transactions.transactions ({_TXN_COLUMNS})
  VALUES (:txn{{s}}, {_MERCHANT}, :amount, 'USD', 'bench order', '{{}}'::jsonb,
    'PENDING', 0, 0, 0, false, false, now(), now());
"""

# 3. CreatePayment (PaymentService.create_payment): the ref as committed (autocommit)
_READ_REF = f"""
SELECT {_REF_COLUMNS} FROM payments.transaction_refs WHERE transaction_id = :txn{{s}};
"""

# ... T1: the PROCESSING payment and its hold, committed before the processor is called
#    (the services pipeline BEGIN + all three, then COMMIT)
_T1 = f"""
INSERT INTO payments.idempotency_keys (scope, operation, key, request_hash, response, create_time)
  VALUES ({_MERCHANT}, 'CreatePayment', {_KEY}, {_HASH}, {_PAY_PENDING}, now())
  ON CONFLICT DO NOTHING RETURNING key;
UPDATE payments.transaction_refs SET closed = false, held_amount = held_amount + :amount,
    captured_amount = captured_amount + 0, refunded_amount = refunded_amount + 0,
    movement_count = movement_count + 0, update_time = now()
  WHERE transaction_id = :txn{{s}} AND held_amount = 0 AND captured_amount = 0 AND closed = false
  RETURNING movement_count;
INSERT INTO payments.payments (id, merchant_id, transaction_id, amount, currency, method,
    capture_mode, status, failure_reason, captured_amount, refunded_amount, card_brand,
    card_last4, card_fingerprint, card_exp_month, card_exp_year, bank_account_holder_name,
    bank_account_last4, wallet_type, processor_reference, create_time, update_time)
  VALUES ({_PAY_ID}, {_MERCHANT}, :txn{{s}}, :amount, 'USD', 'CARD',
    'AUTOMATIC', 'PROCESSING', NULL, 0, 0, 'VISA', '4242', {_CARD_FINGERPRINT}, 12, 2035, NULL, NULL,
    NULL, NULL, now(), now());
"""

# 4. ... T2: settle the processor's answer (conditional writes, no SELECT .. FOR UPDATE
#    first; the services send BEGIN and these five in one round trip, the COMMIT in a
#    second: the movements take the ref's lock, then the ref UPDATE sees the same row)
_T2 = f"""
UPDATE payments.idempotency_keys SET response = {_PAY_RESPONSE}
  WHERE scope = {_MERCHANT} AND operation = 'CreatePayment' AND key = {_KEY}
    AND response = {_PAY_PENDING};
INSERT INTO payments.outbox (id, transaction_id, seq, kind, payload, create_time, attempts, next_attempt_time)
  SELECT {_MOV_A}, transaction_refs.transaction_id, transaction_refs.movement_count + 1,
    'AUTHORIZATION', {_MOVEMENT}, now(), 0, 'infinity'::timestamptz
  FROM payments.transaction_refs
  WHERE transaction_refs.transaction_id = :txn{{s}} AND transaction_refs.held_amount + :release >= 0
  FOR UPDATE;
INSERT INTO payments.outbox (id, transaction_id, seq, kind, payload, create_time, attempts, next_attempt_time)
  SELECT {_MOV_C}, transaction_refs.transaction_id, transaction_refs.movement_count + 2,
    'CAPTURE', {_MOVEMENT}, now(), 0, 'infinity'::timestamptz
  FROM payments.transaction_refs
  WHERE transaction_refs.transaction_id = :txn{{s}} AND transaction_refs.held_amount + :release >= 0
  FOR UPDATE;
UPDATE payments.transaction_refs SET closed = false, held_amount = held_amount + :release,
    captured_amount = captured_amount + :amount, refunded_amount = refunded_amount + 0,
    movement_count = movement_count + 2, update_time = now()
  WHERE transaction_id = :txn{{s}} AND held_amount + :release >= 0
  RETURNING movement_count;
UPDATE payments.payments SET status = 'SUCCEEDED', failure_reason = NULL, captured_amount = :amount,
    refunded_amount = 0, processor_reference = 'sbx_' || substr(:txn{{s}}::text, 5), update_time = now()
  WHERE id = {_PAY_ID} AND status = 'PROCESSING' AND refunded_amount = 0
    AND processor_reference IS NOT DISTINCT FROM NULL;
"""

# ... ApplyMovements' step UPDATEs (one per movement; psycopg's executemany pipelines them)
_APPLY_STEPS = f"""
UPDATE transactions.transactions SET status = 'AUTHORIZED', authorized_amount = authorized_amount + :amount,
    captured_amount = captured_amount + 0, refunded_amount = refunded_amount + 0,
    cancelled = false, last_payment_failed = false, update_time = now()
  WHERE id = :txn{{s}} AND merchant_id = {_MERCHANT};
UPDATE transactions.transactions SET status = 'COMPLETED', authorized_amount = authorized_amount + 0,
    captured_amount = captured_amount + :amount, refunded_amount = refunded_amount + 0,
    cancelled = false, last_payment_failed = false, update_time = now()
  WHERE id = :txn{{s}} AND merchant_id = {_MERCHANT};
"""


def _array(item: str, suffixes: list[str], cast: str) -> str:
    return "ARRAY[" + ", ".join(item.replace("{s}", s) for s in suffixes) + f"]::{cast}[]"


def grouped_script(flows: int) -> str:
    """The SQL of `flows` payment flows, each unit of theirs in one transaction: what the
    services send when that many flows commit each unit together (group commit), and
    the batched calls (RegisterTransactions, the dispatcher's round) carry them all."""
    if flows < 1:
        raise ValueError("a script holds at least one flow")
    sfx = [str(n) for n in range(1, flows + 1)]

    def each(block: str) -> str:
        # The ids made from a flow's transaction id (payment, movements) are its too.
        block = block.replace(":txn::text", ":txn{s}::text")
        return "".join(block.replace("{s}", s) for s in sfx)

    txns = _array(":txn{s}", sfx, "varchar")
    movements = ", ".join(m.replace(":txn", f":txn{s}") for s in sfx for m in (_MOV_A, _MOV_C))
    pay_ids = ", ".join(_PAY_ID.replace(":txn", f":txn{s}") for s in sfx for _ in (1, 2))
    pairs = ", ".join(f":txn{s}, :txn{s}" for s in sfx)
    per_flow = lambda item: ", ".join([item] * flows)  # noqa: E731 (one line of SQL)
    twice = lambda a, b: ", ".join(f"{a}, {b}" for _ in sfx)  # noqa: E731
    key = _KEY.replace(":k", ":k{s}")
    return f"""
\\set amount 1999
\\set release -1 * :amount
\\set m random(1, 16)
{each(_SETUP)}
-- 1. CreateTransaction
BEGIN;
{each(_CREATE_TRANSACTION.replace(_KEY, key))}
COMMIT;
-- 2. RegisterTransactions (the transaction service's FactsPublisher; one call carries
--    the facts of every transaction created meanwhile)
BEGIN;
INSERT INTO payments.transaction_refs ({_REF_COLUMNS})
  SELECT r.transaction_id, r.merchant_id, r.amount, r.currency, false, 0, 0, 0, 0, now(), now()
  FROM unnest({txns}, ARRAY[{per_flow(_MERCHANT)}]::varchar[], ARRAY[{per_flow(":amount")}]::bigint[], ARRAY[{per_flow("'USD'")}]::varchar[])
    AS r(transaction_id, merchant_id, amount, currency)
  ON CONFLICT DO NOTHING RETURNING transaction_id;
COMMIT;
-- 3. CreatePayment: the refs as committed (autocommit)
{each(_READ_REF)}
-- ... T1
BEGIN;
{each(_T1.replace(_KEY, key))}
COMMIT;
-- 4. ... T2
BEGIN;
{each(_T2.replace(_KEY, key))}
COMMIT;
-- 5. The outbox dispatcher's round: the due movements (autocommit) ...
SELECT outbox.id, outbox.transaction_id, outbox.seq, outbox.payload, outbox.attempts
  FROM payments.outbox
  WHERE outbox.delivered_time IS NULL AND outbox.next_attempt_time <= now()
    AND NOT (EXISTS (SELECT * FROM payments.outbox AS earlier
      WHERE earlier.transaction_id = outbox.transaction_id AND earlier.seq < outbox.seq
        AND earlier.delivered_time IS NULL AND earlier.next_attempt_time > outbox.next_attempt_time))
  ORDER BY outbox.next_attempt_time, outbox.transaction_id, outbox.seq LIMIT 500;
-- ... ApplyMovements (TransactionService.apply_movements): lock, record, one UPDATE per step
BEGIN;
SELECT {_TXN_COLUMNS} FROM transactions.transactions
  WHERE id = ANY({txns}) ORDER BY id FOR UPDATE;
INSERT INTO transactions.applied_movements (id, transaction_id, payment_id, kind, authorized_delta,
    captured_delta, refunded_delta, occur_time, apply_time)
  SELECT m.id, m.transaction_id, m.payment_id, m.kind, m.authorized_delta, m.captured_delta,
    m.refunded_delta, m.occur_time, now() AS apply_time
  FROM unnest(ARRAY[{movements}]::varchar[], ARRAY[{pairs}]::varchar[],
    ARRAY[{pay_ids}]::varchar[], ARRAY[{twice("'AUTHORIZATION'", "'CAPTURE'")}]::varchar[],
    ARRAY[{twice(":amount", "0")}]::bigint[], ARRAY[{twice("0", ":amount")}]::bigint[],
    ARRAY[{twice("0", "0")}]::bigint[], ARRAY[{twice("now()", "now()")}]::timestamptz[])
    AS m(id, transaction_id, payment_id, kind, authorized_delta, captured_delta, refunded_delta, occur_time)
  ON CONFLICT (id) DO NOTHING RETURNING id;
\\startpipeline
{each(_APPLY_STEPS)}
\\endpipeline
COMMIT;
-- ... mark them delivered (one statement, autocommit), then the idle wait's next due time
UPDATE payments.outbox SET delivered_time = now()
  WHERE id = ANY(ARRAY[{movements}]::varchar[]) AND delivered_time IS NULL;
SELECT min(next_attempt_time) AS due FROM payments.outbox WHERE delivered_time IS NULL;
"""


FLOW_SQL = grouped_script(1)

# BEGIN/COMMIT blocks (CreateTransaction, RegisterTransactions, T1, T2, ApplyMovements)
# + the dispatcher's autocommit mark; the three autocommit reads write nothing. Per
# script, whatever the flows in it: divided by them per flow.
COMMITS_PER_FLOW = 6


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


def write_script(path: Path, flows: int = 1) -> Path:
    path.write_text(_join_continuations(grouped_script(flows)))
    return path


def run(
    pg: Postgres,
    *,
    clients: int,
    threads: int,
    duration: float,
    workdir: Path,
    flows_per_commit: int = 1,
) -> dict[str, Any]:
    """pgbench on the flow's SQL, `flows_per_commit` flows in each of its transactions;
    `tps` is flows per second (pgbench's TPS times that)."""
    script = write_script(workdir / f"pgbench_flow_{flows_per_commit}.sql", flows_per_commit)
    seconds = max(1, round(duration))
    args = [
        str(binary("pgbench")),
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
        pg.url(),  # libpq takes a URL where the database name goes
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
    scripts = _integer(r"number of transactions actually processed: (\d+)", text)
    return {
        "clients": clients,
        "duration_s": seconds,
        "flows_per_commit": flows_per_commit,
        "flows": None if scripts is None else scripts * flows_per_commit,
        "failed": _integer(r"number of failed transactions: (\d+)", text) or 0,
        "tps": None if tps is None else round(tps * flows_per_commit, 1),
        "commits_per_flow": round(COMMITS_PER_FLOW / flows_per_commit, 2),
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
