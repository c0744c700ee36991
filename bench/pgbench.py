"""The reference point for the database: pgbench running the SQL of payment flows
(`bench/flow_sql.py`).

One pgbench "transaction" of the one-flow script is one whole flow (POST /v1/transactions, then
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
3. CreatePayment (payment service): T1, one commit before the processor is called:
   claim the key holding "pending <payment id>", the conditional ref UPDATE that adds
   the hold (applies only if the ref is still as registered: the payment service takes
   the ref RegisterTransactions just inserted from memory, `RecentRefs`, and does not
   read it), insert the PROCESSING payment.
4. ... T2, one commit to settle the processor's answer: replace the key's "pending"
   response by the final one (conditional on it); one INSERT .. SELECT appending both
   movements (AUTHORIZATION, then CAPTURE) to the outbox from the ref row, with
   seq = the row's movement_count + their number, only if the hold is still there, FOR
   UPDATE (it locks the ref row first: the UPDATE that follows cannot hand it the count
   it returns, both going out before either result is read); the conditional ref UPDATE
   (hold -> captured, two movements; same condition); the conditional payment UPDATE
   (WHERE status = 'PROCESSING' ..) to SUCCEEDED.
5. The outbox dispatcher's round (pi/payments/app/deliver_movements.py): the due-movements SELECT
   (autocommit); ApplyMovements in the transaction service, one commit: lock the
   transactions (SELECT .. = ANY(..) ORDER BY id FOR UPDATE), record the movements
   (INSERT .. SELECT FROM unnest(..) ON CONFLICT DO NOTHING RETURNING id), one UPDATE
   per round of steps (authorization, then capture; pipelined in one round trip); mark
   both movements delivered (one UPDATE .. = ANY(..),
   autocommit, a commit of its own); the idle wait's SELECT of the next due time.

So 6 durable commits (5 BEGIN/COMMIT blocks + the autocommit mark) and 17 statements per
flow besides BEGIN/COMMIT (2 + 1 + 3 + 4 + 1 + 4 + 1 + 1 in the order above; 2 of them
autocommit reads, which flush nothing): pgbench's TPS here is the number of flows per
second PostgreSQL alone sustains on this box, and flows/s ÷ that TPS says how close the
Python services come to the database's own limit.

The grouped script (`BENCH_PGBENCH_GROUP` flows, 4) is what the services' group commit
sends when that many flows commit each unit together: the same 6 commits and each
unit's statements once for all of them, set-based (`unnest` arrays, as
`pi/platform/db/merging.py` and the outbox append merge them), plus one SELECT making
the flows' transaction ids: 18 statements for 4 flows.
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
  `\\gset` (the grouped script: the ids' SELECT), which a pgbench pipeline cannot
  carry; T1 and T2 are sent the same way.
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
from bench.flow_sql import COMMITS_PER_SCRIPT, script
from bench.tools import run_measured
from pi.platform.db.embedded import binary

# Per script, whatever the flows in it: divided by them per flow.
COMMITS_PER_FLOW = COMMITS_PER_SCRIPT


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
    path.write_text(_join_continuations(script(flows)))
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
